using System.Diagnostics;

namespace ChatBroker.Storage;

// The caller's thread writes (Durability.Async only): a caller that finds the writer idle takes the builder
// role and writes its own op as a batch of one; callers arriving meanwhile hand it their ops (CallerHandOver)
// when it passed an AppendCompletionScope entered on its thread, and it completes those in that scope,
// outside every lock.
internal sealed partial class CommitWriter
{
    /// <summary>
    /// At low load the builder thread would wake for one op, write it, and hand its completion to the
    /// thread pool: two thread wake-ups per message, which on a busy two-core machine cost more than the
    /// write. Instead, when the queue is empty, no batch is in flight and the writer has been idle for
    /// <see cref="StorageOptions.CallerWritesAfterIdle"/> (so a steady stream still gets batches), the
    /// caller takes the builder role, writes its op as a batch of one on its own thread and completes
    /// it there. Order is kept:
    /// an op queued earlier is either still queued (then this caller queues too), or being built by the
    /// holder of the builder lock (then the lock is taken), or already written or in flight (then the
    /// writer is not idle). Only with <see cref="Durability.Async"/>: a sync write would block the
    /// caller's thread-pool thread on the fsync.
    /// </summary>
    private bool TryWriteHere(WriteOp op, AppendCompletionScope? completions)
    {
        if (_queue.Reader.Count != 0
            || Stopwatch.GetTimestamp() - Volatile.Read(ref _idleSince) < _callerRunsMinIdleTicks)
        {
            return false;
        }

        if (!_builderLock.TryEnter())
        {
            // Another caller is writing its own op: hand it this op instead of waking the builder thread.
            return _handOver.TryHand(op);
        }

        AppendCompletionScope? takesOps = null;
        try
        {
            if (_disposing || _broken is not null || _queue.Reader.Count != 0)
            {
                return false; // closing, or the builder stopped on a bug: the queue path answers
            }

            lock (_handoff)
            {
                if (_busy || _failure is not null)
                {
                    return false;
                }
            }

            if (completions is { IsHeldHere: true })
            {
                // This thread can complete other callers' ops once it holds no locks: take theirs too.
                _handOver.Open();
                takesOps = completions;
            }

            Add(op);
            HandOff(completeHere: true);
            StorageMetrics.CallerWritten.Add(1);
            return true;
        }
        finally
        {
            if (takesOps is not null)
            {
                WriteHandedOps(takesOps);
            }

            _builderLock.Exit();
        }
    }

    /// <summary>Writes the ops handed over while this caller held the builder lock, as batches, until
    /// none is left; their completions wait in <paramref name="completions"/> until this thread holds no lock.
    /// After a few rounds it stops taking more, so a caller does not become the writer for everybody.</summary>
    private void WriteHandedOps(AppendCompletionScope completions)
    {
        const int MaxRounds = 4;
        try
        {
            for (var round = 1; ; round++)
            {
                var taken = _handOver.Take(last: round == MaxRounds);
                if (taken.Count == 0)
                {
                    return;
                }

                _deferCompletionsTo = completions;
                StorageMetrics.HandedOver.Add(taken.Count);
                foreach (var handed in taken)
                {
                    Add(handed);
                }

                taken.Clear();
                HandOff(completeHere: true);
                _deferCompletionsTo = null;
            }
        }
        catch (Exception ex)
        {
            // A bug: fail what was taken rather than leave its callers waiting, and take no more.
            _deferCompletionsTo = null;
            var unwritten = _handOver.CloseAndTakeAll();
            WriteCompletion.OnPool(unwritten, ex);
            unwritten.Clear();
            throw;
        }
    }
}
