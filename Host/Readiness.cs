using ChatBroker.Broker.Configuration;
using ChatBroker.Cluster.Coordination;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// Whether the node should receive traffic: once every service started and, in cluster mode, the node has
/// read the cluster map; false again when stopping. A map gone stale because etcd is unreachable does not
/// make the node unready: the node keeps serving with the map it has (docs/cluster.md), and an etcd outage
/// must not take every node out of its load balancer at once. Staleness is in <c>/cluster</c> and metrics.
/// </summary>
public sealed class Readiness(ClusterView? cluster = null)
{
    private const int Starting = 0, Started = 1, Stopping = 2;

    private volatile int _phase;

    public bool IsReady => NotReadyReason is null;

    /// <summary>Why the node is not ready, or null when it is.</summary>
    public string? NotReadyReason => _phase switch
    {
        Starting => "starting",
        Stopping => "shutting down",
        _ when cluster is { HasMap: false } => "no cluster map yet",
        _ => null,
    };

    internal void MarkStarted() => _phase = Started;

    internal void MarkStopping() => _phase = Stopping;
}

internal sealed class ReadinessTracker(Readiness readiness, IHostApplicationLifetime lifetime, BrokerOptions options, ILogger<ReadinessTracker> logger)
    : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(() =>
        {
            readiness.MarkStarted();
            Log.Ready(logger);
        });
        lifetime.ApplicationStopping.Register(() =>
        {
            readiness.MarkStopping();
            Log.ShuttingDown(logger, options.Shutdown.GracePeriod);
        });
        lifetime.ApplicationStopped.Register(() => Log.Stopped(logger));
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
