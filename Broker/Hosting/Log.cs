using System.Net;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Hosting;

/// <summary>
/// The broker library's source-generated log messages with fixed event ids (2xxx transport and sessions,
/// 4xxx push; 1xxx are the Host process's). Bodies are never logged.
/// </summary>
internal static partial class Log
{
    [LoggerMessage(2000, LogLevel.Information, "Native protocol listening on {Endpoint}")]
    public static partial void TcpListening(ILogger logger, IPEndPoint endpoint);

    [LoggerMessage(2001, LogLevel.Warning, "Connection refused: tcp.max_connections ({Limit}) reached")]
    public static partial void ConnectionLimitReached(ILogger logger, int limit);

    [LoggerMessage(2002, LogLevel.Error, "Accept loop failed")]
    public static partial void AcceptFailed(ILogger logger, Exception exception);

    [LoggerMessage(2003, LogLevel.Debug, "Connection {ConnectionId} from {Remote} closed: {Reason}")]
    public static partial void ConnectionClosed(ILogger logger, long connectionId, EndPoint? remote, string reason);

    [LoggerMessage(2004, LogLevel.Error, "Connection {ConnectionId} failed unexpectedly")]
    public static partial void ConnectionFailed(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(2005, LogLevel.Warning, "Delivery to {User}/{Device} stopped: the store could not be read")]
    public static partial void DeliveryFailed(ILogger logger, string user, string device, Exception exception);

    [LoggerMessage(2006, LogLevel.Information, "Keepalive: closed {Count} silent sessions")]
    public static partial void KeepaliveClosed(ILogger logger, int count);

    [LoggerMessage(4000, LogLevel.Information, "Push job {JobId}: user {User} has a new message in conversation {ConversationId} (seq {Seq})")]
    public static partial void PushLogged(ILogger logger, ulong jobId, string user, ulong conversationId, ulong seq);

    [LoggerMessage(4001, LogLevel.Warning, "Push job {JobId} for {User} failed (attempt {Attempt}); retrying in {Delay}: {Reason}")]
    public static partial void PushFailed(ILogger logger, ulong jobId, string user, int attempt, TimeSpan delay, string reason);

    [LoggerMessage(4002, LogLevel.Error, "Push dispatcher failed; retrying")]
    public static partial void PushDispatcherFailed(ILogger logger, Exception exception);
}
