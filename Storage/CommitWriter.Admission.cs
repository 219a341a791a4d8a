using System.Threading.Channels;

namespace ChatBroker.Storage;

// The way in, on the caller's thread: an op is written by its caller (CommitWriter.CallerWrite.cs) or
// handed to a caller writing now, or it goes into the bounded queue that the builder thread drains.
internal sealed partial class CommitWriter
{
    /// <summary>Enqueues an op; waits for room when the queue is full (backpressure). With
    /// <paramref name="completions"/> entered on this thread, a caller that writes its own op also writes
    /// the ops others hand it meanwhile and completes them in that scope (CommitWriter.CallerWrite.cs).</summary>
    public async Task<T> EnqueueAsync<T>(WriteOp<T> op, AppendCompletionScope? completions, CancellationToken cancellationToken)
    {
        if (_callerRuns && _tap is null && TryWriteHere(op, completions))
        {
            return await op.Task.ConfigureAwait(false); // usually completed already: no hop
        }

        try
        {
            if (!_queue.Writer.TryWrite(op))
            {
                await _queue.Writer.WriteAsync(op, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (ChannelClosedException)
        {
            throw _broken is { } broken
                ? new StorageException(StorageFailure.Closed, broken.Message, broken)
                : new StorageException(StorageFailure.Closed, "The message store is closed.");
        }

        return await op.Task.ConfigureAwait(false);
    }
}
