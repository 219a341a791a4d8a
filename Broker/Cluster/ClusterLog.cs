using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>The cluster layer's log messages (5xxx). Bodies are never logged.</summary>
internal static partial class ClusterLog
{
    [LoggerMessage(5000, LogLevel.Information, "Cluster map of epoch {Epoch}: {Active} active members, {Links} links")]
    public static partial void MapApplied(ILogger logger, long epoch, int active, int links);

    [LoggerMessage(5001, LogLevel.Warning, "Forwarding inbox entries to node {Node} failed; retrying when woken")]
    public static partial void ForwardFailed(ILogger logger, string node, Exception exception);

    [LoggerMessage(5002, LogLevel.Information, "Node {Node} refused forwarded inbox entries (epoch {Epoch}, owner {Owner}); waiting for a newer map")]
    public static partial void ForwardRefused(ILogger logger, string node, ulong epoch, string owner);

    [LoggerMessage(5004, LogLevel.Error, "Node {Node} rejected a forwarded inbox entry (reason {Reason}); it is skipped")]
    public static partial void ForwardRejected(ILogger logger, string node, uint reason);

    [LoggerMessage(5005, LogLevel.Warning, "A mesh batch from node {Node} took {TotalMs} ms ({Operations}): {MapWaitMs} ms waiting for its map, {PrepareMs} ms checking and starting each operation, then {WorkMs} ms until their writes were done; the node pair's stream waited meanwhile")]
    public static partial void SlowInboundBatch(ILogger logger, string node, long totalMs, string operations, long mapWaitMs, long prepareMs, long workMs);

    [LoggerMessage(5006, LogLevel.Warning, "A forwarded SEND to node {Node} got no answer within {TimeoutMs} ms (the device is told to retry); the routed {State}")]
    public static partial void ForwardTimedOut(ILogger logger, string node, long timeoutMs, string state);

    [LoggerMessage(5003, LogLevel.Error, "Applying the cluster map failed")]
    public static partial void MapFailed(ILogger logger, Exception exception);
}
