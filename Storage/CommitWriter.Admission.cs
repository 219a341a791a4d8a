using System.Threading.Channels;

namespace ChatBroker.Storage;

// The way in, on the caller's thread: an op is written by its caller (CommitWriter.CallerWrite.cs) or
// handed to a caller writing now, or it goes into the bounded queue that the builder thread drains.
internal sealed partial class CommitWriter
{
    /// <summary>Enqueues an op; waits for room when the queue is full (backpressure). With
    /// <paramref name="completions"/> entered on this thread, a caller that writes its own op also writes
    /// the ops others hand it meanwhile and completes them in that scope (CommitWriter.CallerWrite.cs).</summary>
    public Task<T> EnqueueAsync<T>(WriteOp<T> op, AppendCompletionScope? completions, CancellationToken cancellationToken)
    {
        // The op's own task is returned: no state machine per append (it was 6 % of the bytes allocated per
        // message). Only a full (or closed) queue takes the slow path.
        try
        {
            if ((_callerRuns && _tap is null && TryWriteHere(op, completions)) || _queue.Writer.TryWrite(op))
            {
                return op.Task; // a caller that wrote its own op usually finds it completed already: no hop
            }
        }
        catch (Exception e)
        {
            return Task.FromException<T>(e); // as from the async method this was: a failed task, never a throw
        }

        return EnqueueWhenRoomAsync(op, cancellationToken);
    }

    private async Task<T> EnqueueWhenRoomAsync<T>(WriteOp<T> op, CancellationToken cancellationToken)
    {
        try
        {
            await _queue.Writer.WriteAsync(op, cancellationToken).ConfigureAwait(false);
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
