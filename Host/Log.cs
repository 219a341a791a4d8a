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

    [LoggerMessage(1002, LogLevel.Information, "Admin endpoint on http://{Endpoint} (/healthz, /readyz, /metrics)")]
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
}
