using System.Net;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Client;

/// <summary>Settings of a <see cref="ChatClient"/>. Read once, when the client is constructed.</summary>
public sealed class ChatClientOptions
{
    /// <summary>Broker host name or address; ignored when <see cref="EndPoint"/> is set.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>Broker TCP port (default 7883).</summary>
    public int Port { get; set; } = 7883;

    /// <summary>The broker's address; takes precedence over <see cref="Host"/>/<see cref="Port"/>.</summary>
    public EndPoint? EndPoint { get; set; }

    /// <summary>Further broker nodes (a cluster) to connect to when the current one cannot be reached; tried in order after
    /// the configured address, each after one failed attempt.</summary>
    public IReadOnlyList<EndPoint> FallbackEndPoints { get; set; } = [];

    /// <summary>Also use the cluster's node list that CONNACK carries (cluster_nodes) as fallbacks (default true).</summary>
    public bool UseClusterNodes { get; set; } = true;

    public string UserId { get; set; } = "";

    public string DeviceId { get; set; } = "";

    /// <summary>
    /// Returns the token for CONNECT. Called before every connection attempt, so an app can refresh an
    /// expired token (the client retries TOKEN_EXPIRED with a fresh call).
    /// </summary>
    public Func<CancellationToken, ValueTask<string>>? TokenProvider { get; set; }

    /// <summary>
    /// The keepalive the client asks for (whole seconds; <see cref="TimeSpan.Zero"/> = server default). The
    /// value in force is the one in CONNACK. The client PINGs after half of it without sending anything: the
    /// broker drops a device silent for 1.5 × keepalive, so half leaves a full keepalive of slack for a slow
    /// radio, and a busy sender never PINGs at all.
    /// </summary>
    public TimeSpan Keepalive { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Capability bits sent in CONNECT (default: receipts).</summary>
    public Capability Capabilities { get; set; } = Capability.Receipts;

    /// <summary>Largest frame body the client accepts (CONNECT.max_frame_size).</summary>
    public int MaxFrameSize { get; set; } = ProtocolConstants.DefaultMaxFrameSize;

    /// <summary>Delay between connection attempts.</summary>
    public ReconnectPolicy Reconnect { get; set; } = new();

    /// <summary>Whether the client reconnects by itself after a connection is lost (default true).</summary>
    public bool AutoReconnect { get; set; } = true;

    /// <summary>
    /// ACK automatically: after each socket read that surfaced DELIVERs, one ACK with the latest inbox_seq
    /// (coalesced: at most one ACK queued at a time, carrying the newest cursor when it is written). A
    /// message counts as received once it is in <see cref="ChatClient.Messages"/>; an app that must store
    /// messages durably before the server forgets them turns this off and calls
    /// <see cref="ChatClient.AckAsync"/> after storing.
    /// </summary>
    public bool AutoAck { get; set; } = true;

    /// <summary>The inbox cursor to resume from on the first connection (an app persists <see cref="ChatClient.Cursor"/>).</summary>
    public ulong ResumeInboxSeq { get; set; }

    /// <summary>
    /// Most sends on the wire awaiting SENT at once. Further sends wait, in call order and off the wire, until a
    /// SENT frees a slot (their tasks simply complete later). The broker bounds in-flight SENDs per connection too
    /// (session.max_inflight_sends, default 1024) by pausing its reads.
    /// </summary>
    public int MaxPendingSends { get; set; } = 4096;

    /// <summary>
    /// Capacity of <see cref="ChatClient.Messages"/>. When the app stops reading, the client stops reading the
    /// socket; the broker then disconnects the device as a slow consumer and it catches up on reconnect.
    /// </summary>
    public int MessageBufferSize { get; set; } = 1024;

    /// <summary>Capacity of <see cref="ChatClient.Receipts"/>; the oldest receipt is dropped when full (receipts are cumulative).</summary>
    public int ReceiptBufferSize { get; set; } = 1024;

    /// <summary>Connect with TLS (the broker's tls.listen port); null: cleartext TCP.</summary>
    public ChatClientTlsOptions? Tls { get; set; }

    /// <summary>How long TCP connect, the TLS handshake and CONNECT/CONNACK may take.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Free text for the broker's logs (CONNECT.client_info).</summary>
    public string ClientInfo { get; set; } = "chatbroker-dotnet/0.1";

    /// <summary>Clock and timers (keepalive, backoff); replace in tests.</summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    internal void Validate()
    {
        if (string.IsNullOrEmpty(UserId) || string.IsNullOrEmpty(DeviceId))
        {
            throw new ArgumentException("UserId and DeviceId are required.");
        }

        if (TokenProvider is null)
        {
            throw new ArgumentException("TokenProvider is required.");
        }

        if (MaxPendingSends < 1 || MessageBufferSize < 1 || ReceiptBufferSize < 1)
        {
            throw new ArgumentException("MaxPendingSends, MessageBufferSize and ReceiptBufferSize must be positive.");
        }

        if (MaxFrameSize is < 1024 or > ProtocolConstants.MaxRemainingLength)
        {
            throw new ArgumentException("MaxFrameSize must be between 1 KiB and 268,435,455.");
        }
    }
}
