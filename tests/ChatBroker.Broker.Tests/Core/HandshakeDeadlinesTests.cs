using ChatBroker.Broker.Sessions;

namespace ChatBroker.Broker.Tests.Core;

public class HandshakeDeadlinesTests
{
    [Fact]
    public void Connections_accepted_in_the_same_slice_share_one_deadline()
    {
        var deadlines = new HandshakeDeadlines(TimeSpan.FromMinutes(10)); // slices of 1 s

        // Back-to-back calls straddle a 1 s slice boundary only by rare chance, and never three times running.
        var shared = false;
        for (var attempt = 0; attempt < 3 && !shared; attempt++)
        {
            shared = deadlines.Next() == deadlines.Next();
        }

        Assert.True(shared);
        Assert.False(deadlines.Next().IsCancellationRequested);
    }

    [Fact]
    public async Task A_deadline_fires_no_earlier_than_the_timeout()
    {
        var deadlines = new HandshakeDeadlines(TimeSpan.FromMilliseconds(200));
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = System.Diagnostics.Stopwatch.StartNew();

        using var registration = deadlines.Next().Register(() => fired.TrySetResult());
        await fired.Task.WaitAsync(TimeSpan.FromSeconds(10));

        Assert.True(started.Elapsed >= TimeSpan.FromMilliseconds(190), $"fired after {started.Elapsed}");
    }

    [Fact]
    public void Shutdown_ends_every_pending_handshake_and_any_later_one()
    {
        var deadlines = new HandshakeDeadlines(TimeSpan.FromMinutes(10));
        var pending = deadlines.Next();

        deadlines.CancelAll();

        Assert.True(pending.IsCancellationRequested);
        Assert.True(deadlines.Next().IsCancellationRequested);
    }
}
