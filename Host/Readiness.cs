using ChatBroker.Broker.Configuration;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>Whether the node should receive traffic: true once every service started, false again when stopping.</summary>
public sealed class Readiness
{
    private volatile bool _ready;

    public bool IsReady => _ready;

    internal void Set(bool ready) => _ready = ready;
}

internal sealed class ReadinessTracker(Readiness readiness, IHostApplicationLifetime lifetime, BrokerOptions options, ILogger<ReadinessTracker> logger)
    : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(() =>
        {
            readiness.Set(true);
            Log.Ready(logger);
        });
        lifetime.ApplicationStopping.Register(() =>
        {
            readiness.Set(false);
            Log.ShuttingDown(logger, options.Shutdown.GracePeriod);
        });
        lifetime.ApplicationStopped.Register(() => Log.Stopped(logger));
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
