using System.Net;

namespace ChatBroker.Broker.Configuration;

/// <summary>
/// The <c>tls.*</c> settings: the native protocol over TLS on its own port (off while <see cref="Listen"/> is
/// null). The certificate is also the one a <c>wss://</c> WebSocket listener serves (<c>ws.tls</c>).
/// </summary>
public sealed class TlsOptions
{
    /// <summary>Null: no TLS listener.</summary>
    public IPEndPoint? Listen { get; set; }
    /// <summary>PEM certificate (the leaf first, then any intermediates to send along).</summary>
    public string CertificateFile { get; set; } = "";
    /// <summary>PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1, unencrypted).</summary>
    public string KeyFile { get; set; } = "";
    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>True when a certificate is configured (needed by tls.listen and by ws.tls).</summary>
    public bool HasCertificate => CertificateFile.Length > 0 && KeyFile.Length > 0;
}

/// <summary>The <c>ws.*</c> settings: the native protocol in binary WebSocket messages on <c>/chat</c> (off while <see cref="Listen"/> is null).</summary>
public sealed class WsOptions
{
    /// <summary>The path the WebSocket is served on.</summary>
    public const string Path = "/chat";

    /// <summary>The path MQTT over WebSocket is served on (subprotocol "mqtt"), when the MQTT listener is on.</summary>
    public const string MqttPath = "/mqtt";

    /// <summary>Null: no WebSocket listener.</summary>
    public IPEndPoint? Listen { get; set; }
    /// <summary>Serve wss:// with the tls.* certificate.</summary>
    public bool Tls { get; set; }
    /// <summary>Comma-separated origins (scheme://host[:port]) a browser may connect from; empty allows any.</summary>
    public string AllowedOrigins { get; set; } = "";

    /// <summary><see cref="AllowedOrigins"/> split and trimmed.</summary>
    public string[] AllowedOriginList() =>
        AllowedOrigins.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
