using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>Log messages of replication (5320–5329).</summary>
internal static partial class ReplicationLog
{
    [LoggerMessage(5320, LogLevel.Debug, "Replica {Node} did not take a replicated batch ({Reason}); it waits for a newer map")]
    public static partial void ShipRefused(ILogger logger, string node, string reason);

    [LoggerMessage(5321, LogLevel.Information, "Catch-up of replica {Node}: {Status}: {Message}")]
    public static partial void CatchUp(ILogger logger, string node, string status, string message);

    [LoggerMessage(5322, LogLevel.Warning, "Catch-up of replica {Node} stopped; it starts again later")]
    public static partial void CatchUpFailed(ILogger logger, string node, Exception exception);

    [LoggerMessage(5323, LogLevel.Warning, "Replica {Node} fell behind (no ack within the replication timeout, or too many batches unacked): removal from the in-sync replicas of {Primary}: {Status}: {Message}")]
    public static partial void Removal(ILogger logger, string node, string primary, string status, string message);

    [LoggerMessage(5324, LogLevel.Information, "Replica sets: {Status}: {Message}")]
    public static partial void SetsWritten(ILogger logger, string status, string message);

    [LoggerMessage(5325, LogLevel.Error, "Replication watchdog failed; looking again")]
    public static partial void WatchdogFailed(ILogger logger, Exception exception);
}
