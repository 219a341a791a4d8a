using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

// The builder role: the builder thread ("ChatBroker.Storage batch builder") drains the queue into the
// current batch under _builderLock and hands it to the committer, or writes it itself when nothing else
// is queued. A caller writing its own op (CommitWriter.CallerWrite.cs) runs the same code under the same lock.
internal sealed partial class CommitWriter
{
    private void Build()
    {
        try
        {
            BuildBatches();
        }
        catch (Exception ex)
        {
            // A bug, not an I/O error (those fail their batch and the writer carries on). Callers must
            // not hang: fail what is queued and refuse new writes.
            _broken = new StorageException(StorageFailure.Closed, "The message store's commit writer stopped: " + ex.Message, ex);
            _queue.Writer.TryComplete();
            WriteCompletion.OnPool(_current.Ops, _broken);
            while (_queue.Reader.TryRead(out var op))
            {
                WriteCompletion.OnPool(op, _broken);
            }
        }
    }

    private void BuildBatches()
    {
        var reader = _queue.Reader;
        while (true)
        {
            if (reader.Count == 0)
            {
                if (!reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
                {
                    break;
                }

                continue;
            }

            lock (_builderLock)
            {
                if (!reader.TryRead(out var first))
                {
                    continue;
                }

                // A batch that failed while we were idle is rolled back before anything is built on it.
                bool failedWhileIdle;
                lock (_handoff)
                {
                    failedWhileIdle = !_busy && _failure is not null;
                }

                if (failedWhileIdle)
                {
                    WaitIdle();
                }

                Add(first);
                while (_current.Ops.Count < _options.MaxBatchCount && _current.Bytes < _options.MaxBatchBytes && reader.TryRead(out var next))
                {
                    Add(next);
                }

                HandOff();
            }
        }

        lock (_builderLock)
        {
            HandOff();
            WaitIdle();
        }
    }

    private void Add(WriteOp op)
    {
        // An op that reads state (a prekey take, a cursor advance, a member change) must see every
        // earlier write: drain the pipeline first, and commit the current batch too if an earlier op
        // in it has the same key. These ops are rare; appends never wait here.
        var conflict = op.ConflictKey;
        var conflicts = op.ConflictKeys;
        if (conflict is not null || conflicts is not null)
        {
            if ((conflict is not null && _current.Touched.Contains(conflict)) || (conflicts is not null && TouchedAny(conflicts)))
            {
                HandOff();
            }

            WaitIdle();
            if (conflict is not null)
            {
                _current.Touched.Add(conflict);
            }

            if (conflicts is not null)
            {
                _current.Touched.UnionWith(conflicts);
            }
        }

        var countBefore = _current.Batch.Count;
        try
        {
            op.Apply(this);
        }
        catch (Exception ex)
        {
            if (_current.Batch.Count == countBefore)
            {
                // Rejected before writing anything (bad argument, missing record): fail just this op. A bad
                // argument is the caller's error and stays one; anything else is the store's.
                WriteCompletion.OnPool(op, ex is ArgumentException or StorageException ? ex : StorageException.From("", ex, StorageFailure.Internal));
                return;
            }

            // Half-written: the batch cannot be trusted, so nothing in it is committed.
            _current.Ops.Add(op);
            WaitIdle();
            FailCurrent(StorageException.From("A write failed while the batch was built: ", ex, StorageFailure.Internal));
            return;
        }

        _current.Ops.Add(op);
        _current.Bytes += op.EstimatedBytes;
    }

    private bool TouchedAny(IReadOnlyList<string> keys)
    {
        foreach (var key in keys)
        {
            if (_current.Touched.Contains(key))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Gives the current batch to the committer (after the previous one is done) and starts a new one.</summary>
    private void HandOff(bool completeHere = false)
    {
        if (_current.Ops.Count == 0)
        {
            return;
        }

        if (_lastPushJobId != _current.PushJobIdBefore)
        {
            // Completed jobs are deleted, so ids are recovered from this high-water mark.
            Span<byte> hw = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(hw, _lastPushJobId);
            _current.Batch.Put(Cf.Default, Records.PushJobHighWaterKey, hw);
        }

        if (!WaitIdle())
        {
            // The batch under this one failed; this one was built on its counters and fails too.
            return;
        }

        // Nothing else is waiting: write the batch here rather than wake the committer. Waking a thread
        // costs tens of microseconds on a busy machine, and there is nothing to build meanwhile; under
        // load the queue is rarely empty and the committer writes while the next batch is built.
        var writeHere = _options.WriteInlineWhenIdle && (completeHere || _queue.Reader.Count == 0);
        lock (_handoff)
        {
            (_inFlight, _current) = (_current, _inFlight);
            _busy = true;
            if (!writeHere)
            {
                _handedOver = true;
                Monitor.PulseAll(_handoff);
            }
        }

        _current.Reset();
        _current.Begin(_lastConversationId, _lastPushJobId);
        if (writeHere)
        {
            // With no batch waiting for the syncer either, there is nothing to overlap the fsync with:
            // fsync inside the write and skip the hop to the syncer. (Only this thread adds unsynced
            // batches, so none can appear meanwhile.)
            CommitSlot(_inFlight, syncHere: _syncer is { IsIdle: true }, completeHere);
        }
    }

    /// <summary>Waits until no batch is in flight. If it failed, fails the current batch too, rolls the
    /// counters back to before the failed batch and returns false.</summary>
    private bool WaitIdle()
    {
        Exception? failure;
        lock (_handoff)
        {
            while (_busy)
            {
                _idleWaiters++;
                Monitor.Wait(_handoff);
                _idleWaiters--;
            }

            failure = _failure;
            _failure = null;
        }

        if (failure is null)
        {
            return true;
        }

        // Undo newest first: the current batch was built on the failed one's counters.
        _current.Rollback(this);
        _inFlight.Rollback(this);
        WriteCompletion.OnPool(_current.Ops, StorageException.From("An earlier write batch failed, so this one was not committed: ", failure, StorageFailure.Io));

        _inFlight.Reset();
        _current.Reset();
        _current.Begin(_lastConversationId, _lastPushJobId);
        return false;
    }

    private void FailCurrent(Exception failure)
    {
        _current.Rollback(this);
        WriteCompletion.OnPool(_current.Ops, failure);

        _current.Reset();
        _current.Begin(_lastConversationId, _lastPushJobId);
    }
}
