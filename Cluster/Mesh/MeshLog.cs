using Microsoft.Extensions.Logging;

namespace ChatBroker.Cluster.Mesh;

internal static partial class MeshLog
{
    [LoggerMessage(EventId = 5007, Level = LogLevel.Information, Message = "Mesh stream to {Remote} (stream {Stream}) broke; reconnecting in {DelayMs} ms with {Unacked} unacked messages to resend")]
    public static partial void StreamBroken(ILogger logger, string remote, uint stream, int delayMs, int unacked, Exception? exception);

    [LoggerMessage(EventId = 5008, Level = LogLevel.Warning, Message = "Mesh stream to {Remote} (stream {Stream}): the receiver acked id {Acked}, past the last sent id {Last}; resetting the stream")]
    public static partial void AckPastSent(ILogger logger, string remote, uint stream, ulong acked, ulong last);
}
