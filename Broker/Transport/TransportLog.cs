using System.Net;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Transport;

/// <summary>Log messages of the TLS and WebSocket transports (event ids 25xx).</summary>
internal static partial class TransportLog
{
    [LoggerMessage(2500, LogLevel.Information, "Native protocol over TLS listening on {Endpoint} (ALPN {Alpn})")]
    public static partial void TlsListening(ILogger logger, IPEndPoint endpoint, string alpn);

    [LoggerMessage(2501, LogLevel.Information, "TLS certificate loaded: {Subject}, thumbprint {Thumbprint}, valid until {NotAfter:u} ({Trigger})")]
    public static partial void CertificateLoaded(ILogger logger, string subject, string thumbprint, DateTime notAfter, string trigger);

    [LoggerMessage(2502, LogLevel.Warning, "TLS certificate reload ({Trigger}) failed; keeping the previous certificate: {Reason}")]
    public static partial void CertificateReloadFailed(ILogger logger, string trigger, string reason);

    [LoggerMessage(2506, LogLevel.Information, "TLS certificate reload ({Trigger}): unchanged, thumbprint {Thumbprint}")]
    public static partial void CertificateUnchanged(ILogger logger, string trigger, string thumbprint);

    [LoggerMessage(2508, LogLevel.Warning, "TLS certificate files in {Directory} are not watched ({Reason}); the certificate reloads on SIGHUP only")]
    public static partial void CertificateWatchUnavailable(ILogger logger, string directory, string reason);

    [LoggerMessage(2503, LogLevel.Debug, "TLS handshake of connection {ConnectionId} from {Remote} failed: {Result} {Reason}")]
    public static partial void HandshakeFailed(ILogger logger, long connectionId, EndPoint? remote, string result, string reason);

    [LoggerMessage(2504, LogLevel.Information, "WebSocket listening on {Scheme}://{Endpoint}{Path}")]
    public static partial void WebSocketListening(ILogger logger, string scheme, IPEndPoint endpoint, string path);

    [LoggerMessage(2505, LogLevel.Debug, "WebSocket request from {Remote} refused: {Result}")]
    public static partial void WebSocketRefused(ILogger logger, EndPoint? remote, string result);

    [LoggerMessage(2507, LogLevel.Information, "Web chat on {Scheme}://{EndPoint}/")]
    public static partial void WebChatServing(ILogger logger, string scheme, IPEndPoint endpoint);
}
