using System.Net;

namespace ChatBroker.Broker.Configuration;

/// <summary>
/// The <c>mqtt.*</c> settings: a standard MQTT 3.1.1/5.0 listener whose chat topics are chat messages (docs/mqtt.md).
/// Off while both <see cref="Listen"/> and <see cref="TlsListen"/> are null.
/// </summary>
public sealed class MqttOptions
{
    /// <summary>Null: no plain MQTT listener.</summary>
    public IPEndPoint? Listen { get; set; }
    /// <summary>Null: no MQTT-over-TLS listener (needs tls.certificate_file and tls.key_file).</summary>
    public IPEndPoint? TlsListen { get; set; }
    /// <summary>Clients without a password (token) may connect, to the general topic space only.</summary>
    public bool AllowAnonymous { get; set; }
    /// <summary>Largest MQTT packet a client may send (and the largest the broker sends).</summary>
    public int MaxPacketBytes { get; set; } = 256 * 1024;
    /// <summary>QoS 1/2 PUBLISH packets sent to one client and not yet acknowledged.</summary>
    public int MaxInflight { get; set; } = 64;
    /// <summary>Messages queued for one session (offline, or with its in-flight window full).</summary>
    public int MaxQueuedMessages { get; set; } = 1000;
    /// <summary>Bytes of messages queued for all sessions together (payload, topic and 64 bytes each).</summary>
    public long MaxQueuedBytes { get; set; } = 256L * 1024 * 1024;
    /// <summary>Retained messages kept by the broker.</summary>
    public int MaxRetainedMessages { get; set; } = 10_000;
    /// <summary>Topic filters one session may hold.</summary>
    public int MaxSubscriptions { get; set; } = 100;

    /// <summary>MQTT sessions the broker keeps at once (connected or kept for their expiry); a CONNECT that would add one more is refused.</summary>
    public int MaxSessions { get; set; } = 100_000;
    /// <summary>Longest an offline persistent session is kept (3.1.1 clean session false; 5.0 session expiry is capped by it).</summary>
    public TimeSpan MaxSessionExpiry { get; set; } = TimeSpan.FromDays(1);
}
