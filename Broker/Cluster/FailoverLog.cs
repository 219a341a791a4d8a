using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>Log messages of failover and fencing (5300–5309).</summary>
internal static partial class FailoverLog
{
    [LoggerMessage(5300, LogLevel.Warning, "Failover of node {Node}, whose lease is gone: {Status}: {Message}")]
    public static partial void Proposed(ILogger logger, string node, string status, string message);

    [LoggerMessage(5301, LogLevel.Warning, "Removal of failed node {Node} after the failed-node timeout: {Status}: {Message}")]
    public static partial void Removed(ILogger logger, string node, string status, string message);

    [LoggerMessage(5302, LogLevel.Error, "Failover proposal failed; looking again")]
    public static partial void ProposalFailed(ILogger logger, Exception exception);

    [LoggerMessage(5303, LogLevel.Error, "Re-forwarding the tail of ranges taken over from a failed node stopped")]
    public static partial void ReforwardFailed(ILogger logger, Exception exception);
}
