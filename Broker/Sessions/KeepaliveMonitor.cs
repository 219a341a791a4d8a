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
            var closed = CloseExpired(Environment.TickCount64);
            if (closed > 0)
            {
                Log.KeepaliveClosed(logger, closed);
            }
        }
    }

    /// <summary>
    /// One sweep: closes every session that received nothing for 1.5 × its keepalive as of
    /// <paramref name="nowMs"/> (<see cref="Environment.TickCount64"/>'s clock, which sessions stamp receives
    /// with). Returns how many it closed. Tests call it with a later time instead of waiting.
    /// </summary>
    internal int CloseExpired(long nowMs)
    {
        var closed = 0;
        foreach (var link in registry.Sessions())
        {
            if (link is DeviceSession session && session.IsKeepaliveExpired(nowMs))
            {
                session.Close(ReasonCode.KeepaliveTimeout, "nothing received within 1.5 x keepalive");
                closed++;
            }
        }

        return closed;
    }
}
