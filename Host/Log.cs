using System.Net;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// The process's source-generated log messages (1xxx). The broker library's own (2xxx transport, 4xxx push)
/// are in ChatBroker.Broker.Hosting.Log; bodies are never logged.
/// </summary>
internal static partial class Log
{
    [LoggerMessage(1000, LogLevel.Information, "ChatBroker {Version} node {Node} starting; configuration: {ConfigSource}; data in {DataDir}")]
    public static partial void Starting(ILogger logger, string version, string node, string configSource, string dataDir);

    [LoggerMessage(1001, LogLevel.Information, "Generated a new token secret in {Path} (mode 0600); keep it with the data directory")]
    public static partial void SecretGenerated(ILogger logger, string path);

    [LoggerMessage(1002, LogLevel.Information, "Admin endpoint on http://{Endpoint} (/healthz, /readyz, /metrics, /cluster)")]
    public static partial void AdminListening(ILogger logger, IPEndPoint endpoint);

    [LoggerMessage(1003, LogLevel.Information, "Ready")]
    public static partial void Ready(ILogger logger);

    [LoggerMessage(1004, LogLevel.Information, "Shutting down: draining connections (grace period {GracePeriod})")]
    public static partial void ShuttingDown(ILogger logger, TimeSpan gracePeriod);

    [LoggerMessage(1005, LogLevel.Information, "Stopped")]
    public static partial void Stopped(ILogger logger);

    [LoggerMessage(1006, LogLevel.Information, "Message store open at {Path} (durability {Durability}, retention {Retention})")]
    public static partial void StoreOpened(ILogger logger, string path, string durability, string retention);

    [LoggerMessage(1007, LogLevel.Information, "systemd watchdog: WATCHDOG=1 every {Interval} while ready")]
    public static partial void WatchdogEnabled(ILogger logger, TimeSpan interval);

    [LoggerMessage(1010, LogLevel.Information, "Cluster mode: node {NodeId} registering in etcd {Endpoints} under {Prefix}")]
    public static partial void ClusterStarting(ILogger logger, string nodeId, string endpoints, string prefix);

    [LoggerMessage(1011, LogLevel.Information, "Cluster: {Outcome}")]
    public static partial void ClusterJoined(ILogger logger, string outcome);

    [LoggerMessage(1012, LogLevel.Warning, "Cluster: could not join the map on start: {Reason}; serving with the map it has, join with `chatbroker cluster join`")]
    public static partial void ClusterJoinFailed(ILogger logger, string reason);

    [LoggerMessage(1013, LogLevel.Information, "Cluster map epoch {Epoch}: {Members}")]
    public static partial void ClusterMap(ILogger logger, long epoch, string members);

    [LoggerMessage(1014, LogLevel.Warning, "Cluster: etcd unreachable ({Reason}); serving with the map of epoch {Epoch}, map changes are refused until it is back")]
    public static partial void ClusterEtcdLost(ILogger logger, long epoch, string reason);

    [LoggerMessage(1015, LogLevel.Information, "Cluster: etcd reachable again; map epoch {Epoch}")]
    public static partial void ClusterEtcdBack(ILogger logger, long epoch);

    [LoggerMessage(1016, LogLevel.Information, "Cluster: node {NodeId} revoked its lease and left the live members")]
    public static partial void ClusterLeftLive(ILogger logger, string nodeId);

    [LoggerMessage(1017, LogLevel.Information, "Cluster live nodes ({Count}): {Nodes}")]
    public static partial void ClusterLiveNodes(ILogger logger, int count, string nodes);

    [LoggerMessage(1020, LogLevel.Debug, "Admin endpoint warm-up: {Path} answered in {Milliseconds} ms")]
    public static partial void AdminWarmedUp(ILogger logger, string path, long milliseconds);

    [LoggerMessage(1021, LogLevel.Debug, "Admin endpoint warm-up failed (harmless: the first scrape compiles it instead): {Reason}")]
    public static partial void AdminWarmUpFailed(ILogger logger, string reason);

    [LoggerMessage(1019, LogLevel.Information, "Signals {Signals} were blocked or ignored by the process that started the broker; restored (the broker handles them: SIGHUP reloads the TLS certificate, SIGINT/SIGQUIT/SIGTERM stop it)")]
    public static partial void SignalsUnblocked(ILogger logger, string signals);
}
