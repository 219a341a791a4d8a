using ChatBroker.Broker.Hosting;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol.Messages;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// Closes sessions that sent nothing for 1.5 × their keepalive with DISCONNECT(KEEPALIVE_TIMEOUT). One sweep
/// over the registry each second rather than a timer per connection: a timer costs ~100 bytes per idle phone,
/// a sweep of a million sessions a few milliseconds.
/// </summary>
internal sealed class KeepaliveMonitor(SessionRegistry registry, ILogger<KeepaliveMonitor> logger, TimeProvider clock) : BackgroundService
{
    public static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(SweepInterval, clock);
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            var now = Environment.TickCount64;
            var closed = 0;
            foreach (var link in registry.Sessions())
            {
                if (link is DeviceSession session && session.IsKeepaliveExpired(now))
                {
                    session.Close(ReasonCode.KeepaliveTimeout, "nothing received within 1.5 x keepalive");
                    closed++;
                }
            }

            if (closed > 0)
            {
                Log.KeepaliveClosed(logger, closed);
            }
        }
    }
}
