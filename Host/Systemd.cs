using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// Running as a systemd service (deploy/chatbroker.service, Type=notify). Microsoft.Extensions.Hosting.Systemd's
/// <see cref="SystemdLifetime"/> sends READY=1 when the host has started and STOPPING=1 when it begins to stop,
/// and handles SIGTERM. The host starts only after the store is open (BrokerHost.Build opens it) and every
/// listener is bound (each listener binds in its hosted service's StartAsync), so READY=1 comes at the same
/// moment as "Ready" in the log and /readyz turning 200. The package has no watchdog: <see cref="SystemdWatchdog"/>.
/// </summary>
internal static class Systemd
{
    internal const string NotifySocketVariable = "NOTIFY_SOCKET";
    internal const string WatchdogUsecVariable = "WATCHDOG_USEC";
    internal const string WatchdogPidVariable = "WATCHDOG_PID";
    internal const string JournalStreamVariable = "JOURNAL_STREAM";

    /// <summary>
    /// The package activates only when its parent process is systemd (or it is PID 1 in a container). A
    /// service manager that wants notifications says so with NOTIFY_SOCKET, as sd_notify(3) reads it,
    /// whatever started the process (a wrapper that does not exec, a container runtime, a test), so the
    /// variable is enough here too.
    /// </summary>
    public static bool NotificationsWanted =>
        SystemdHelpers.IsSystemdService() || !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(NotifySocketVariable));

    /// <summary>
    /// Whether standard output goes to the journal: systemd sets JOURNAL_STREAM for a service whose output it
    /// connects there. Lines then carry their level as a syslog priority prefix and no timestamp (the journal
    /// keeps its own); see BrokerHost.ConfigureLogging.
    /// </summary>
    public static bool LogsToJournal =>
        SystemdHelpers.IsSystemdService() || !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(JournalStreamVariable));

    public static void AddServiceManagerIntegration(IServiceCollection services)
    {
        if (!NotificationsWanted)
        {
            return;
        }

        services.TryAddSingleton<ISystemdNotifier, SystemdNotifier>();
        services.AddSingleton<IHostLifetime, SystemdLifetime>();
        if (WatchdogInterval() is { } interval)
        {
            services.AddHostedService(sp => new SystemdWatchdog(
                sp.GetRequiredService<ISystemdNotifier>(), sp.GetRequiredService<Readiness>(), interval,
                sp.GetRequiredService<ILogger<SystemdWatchdog>>()));
        }
    }

    /// <summary>
    /// Half of WATCHDOG_USEC (systemd's advice in sd_watchdog_enabled(3)), when the unit sets WatchdogSec= and
    /// the variable is meant for this process (WATCHDOG_PID, when set, is our pid); null otherwise.
    /// </summary>
    internal static TimeSpan? WatchdogInterval() => WatchdogInterval(
        Environment.GetEnvironmentVariable(WatchdogUsecVariable), Environment.GetEnvironmentVariable(WatchdogPidVariable), Environment.ProcessId);

    internal static TimeSpan? WatchdogInterval(string? usecText, string? pidText, int processId)
    {
        if (!ulong.TryParse(usecText, NumberStyles.None, CultureInfo.InvariantCulture, out var usec) || usec == 0)
        {
            return null;
        }

        if (!string.IsNullOrEmpty(pidText)
            && (!int.TryParse(pidText, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid != processId))
        {
            return null;
        }

        // At least every millisecond and at most once a day, whatever the variable says.
        var half = Math.Clamp(usec / 2, 1_000UL, (ulong)TimeSpan.FromDays(1).TotalMicroseconds);
        return TimeSpan.FromMicroseconds(half);
    }
}

/// <summary>
/// Sends WATCHDOG=1 every half WatchdogSec while the node is ready (started, not stopping). The pings come from
/// a timer on the thread pool, so a process whose pool is starved or deadlocked stops pinging and systemd
/// restarts it (Restart=on-failure). Pings stop with STOPPING=1: systemd stops watching a unit that is
/// deactivating, and a drain is bounded by shutdown.grace_period and the unit's TimeoutStopSec instead.
/// </summary>
internal sealed class SystemdWatchdog(ISystemdNotifier notifier, Readiness readiness, TimeSpan interval, ILogger<SystemdWatchdog> logger)
    : BackgroundService
{
    private static readonly ServiceState Ping = new("WATCHDOG=1");

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Log.WatchdogEnabled(logger, interval);
        using var timer = new PeriodicTimer(interval);
        try
        {
            do
            {
                if (readiness.IsReady)
                {
                    notifier.Notify(Ping);
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }
}
