namespace ChatBroker.LoadTests;

/// <summary>
/// Credits for a closed-loop sender: it takes every free credit at once (so SENDs go out in batches, one
/// socket write each) and waits only when none is free; the receiver returns a credit per delivery.
/// </summary>
public sealed class SendWindow(int size)
{
    private readonly Lock _lock = new();
    private int _available = size;
    private TaskCompletionSource? _waiter;

    /// <summary>Takes up to <paramref name="max"/> credits, waiting until at least one is free.</summary>
    public async ValueTask<int> TakeAsync(int max, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_available > 0)
                {
                    var n = Math.Min(_available, max);
                    _available -= n;
                    return n;
                }

                wait = (_waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
            }

            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public void Return(int n)
    {
        TaskCompletionSource? waiter;
        lock (_lock)
        {
            _available += n;
            waiter = _waiter;
            _waiter = null;
        }

        waiter?.TrySetResult();
    }
}
