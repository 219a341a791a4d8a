namespace ChatBroker.Broker.Sessions;

/// <summary>
/// The deadline by which a new connection must have sent CONNECT (tcp.connect_timeout), shared by all the
/// connections accepted in the same slice of time: one timed <see cref="CancellationTokenSource"/> per slice
/// instead of a linked source, a cancellation registration and a timer per connection, which a burst of
/// logins paid for every connect (allocations and timer-queue work). A connection therefore gets between
/// the timeout and the timeout plus one slice (a tenth of it, at most a second).
/// </summary>
internal sealed class HandshakeDeadlines
{
    private readonly TimeSpan _timeout;
    private readonly long _sliceMs;
    private readonly Lock _lock = new();
    // Sources whose deadline has not passed, so that shutdown can end those handshakes at once (under _lock).
    private readonly List<CancellationTokenSource> _pending = [];
    private Slice? _current;
    private bool _stopped;

    public HandshakeDeadlines(TimeSpan timeout)
    {
        _timeout = timeout;
        _sliceMs = (long)Math.Clamp(timeout.TotalMilliseconds / 10, 1, 1000);
    }

    /// <summary>The deadline for a connection accepted now.</summary>
    public CancellationToken Next()
    {
        var slice = Environment.TickCount64 / _sliceMs;
        var current = Volatile.Read(ref _current);
        return current is not null && current.Number == slice ? current.Token : NextSlice(slice);
    }

    /// <summary>The broker is stopping: every handshake still running ends now.</summary>
    public void CancelAll()
    {
        CancellationTokenSource[] pending;
        lock (_lock)
        {
            _stopped = true;
            _current = null;
            pending = [.. _pending];
            _pending.Clear();
        }

        foreach (var source in pending)
        {
            source.Cancel();
        }
    }

    private CancellationToken NextSlice(long slice)
    {
        lock (_lock)
        {
            if (_current is { } current && current.Number == slice)
            {
                return current.Token;
            }

            if (_stopped)
            {
                return new CancellationToken(canceled: true);
            }

            _pending.RemoveAll(static s => s.IsCancellationRequested);
            // The whole slice shares the deadline of its last moment: nobody gets less than the timeout.
            var untilSliceEnd = TimeSpan.FromMilliseconds(((slice + 1) * _sliceMs) - Environment.TickCount64);
            var source = new CancellationTokenSource(_timeout + untilSliceEnd);
            _pending.Add(source);
            Volatile.Write(ref _current, new Slice(slice, source.Token));
            return source.Token;
        }
    }

    private sealed record Slice(long Number, CancellationToken Token);
}
