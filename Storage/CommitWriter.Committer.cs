using System.Diagnostics;

namespace ChatBroker.Storage;

// The committer thread ("ChatBroker.Storage committer") writes the batch the builder handed it while the
// builder builds the next one. CommitSlot also runs inline in the builder role (the builder thread, or a
// caller writing its own op) when nothing else is queued.
internal sealed partial class CommitWriter
{
    private void CommitLoop()
    {
        while (true)
        {
            Slot slot;
            lock (_handoff)
            {
                while (!_handedOver && !_stopping)
                {
                    Monitor.Wait(_handoff);
                }

                if (!_handedOver)
                {
                    return;
                }

                _handedOver = false;
                slot = _inFlight;
            }

            CommitSlot(slot, syncHere: false);
        }
    }

    /// <summary>Writes the in-flight slot, hands it to the syncer or completes its ops, and marks the
    /// writer idle. Runs on the committer thread, or inline in the builder role (see <see cref="HandOff"/>).</summary>
    private void CommitSlot(Slot slot, bool syncHere, bool completeHere = false)
    {
        Exception? failure = null;
        WalSyncer.UnsyncedBatch? unsynced = null;
        // With a replication tap the batch is fsynced in its own write (no overlap with the syncer): its ops are
        // handed to the tap from here, once durable, in commit order (CommitWriter.Replication.cs).
        var tap = _tap;
        syncHere |= tap is not null && _syncer is not null;
        if (_syncer is not null && slot.Ops.Count > 0)
        {
            // Registered before the write makes the batch visible, so readers can hide it. Ops that
            // wrote nothing (a duplicate, an unchanged cursor) wait for the fsync too: their answers
            // may rest on an earlier batch that is not durable yet. A batch fsynced in its own write
            // is visible only once durable, and completes right here.
            unsynced = syncHere ? null : _syncer.Register(slot.Ops.ToArray(), slot.SeqUndo, slot.InboxUndo, slot.Batch.Count > 0, out failure);
            failure ??= syncHere ? _syncer.EarlierFailure() : null;
        }

        // With a tap, the batch's seqs stay hidden from readers until its replicas have it (CommitWriter.Replication.cs).
        var unreplicated = tap is not null && failure is null && slot.Batch.Count > 0 ? RegisterUnreplicated(slot) : null;
        if (failure is null && slot.Batch.Count > 0)
        {
            var started = Stopwatch.GetTimestamp();
            try
            {
                _engine.Commit(slot.Batch.Inner, syncHere || (_syncer is null && _options.Durability == Durability.Sync));
                StorageMetrics.Commits.Add(1);
                StorageMetrics.CommitLatency.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                StorageMetrics.BatchSize.Record(slot.Ops.Count);
            }
            catch (Exception ex)
            {
                StorageMetrics.CommitFailures.Add(1);
                failure = StorageException.From("Commit of a write batch failed: ", ex, StorageFailure.Io);
            }
        }

        if (unsynced is not null)
        {
            _syncer!.Written(unsynced, failure);
        }

        if (failure is not null)
        {
            Replicated(unreplicated);
        }

        if (unsynced is null || failure is not null)
        {
            if (tap is not null && failure is null)
            {
                HandToTap(tap, slot, unreplicated);
            }
            else if (completeHere)
            {
                // A caller writing its own op (TryWriteHere): nobody awaits it yet, so completing it
                // runs no continuation here. Ops other callers handed it are awaited: they complete
                // later on this thread, outside every lock, in the writing caller's AppendCompletionScope.
                foreach (var op in slot.Ops)
                {
                    if (_deferCompletionsTo is { } scope)
                    {
                        scope.Defer(op, failure);
                    }
                    else
                    {
                        WriteCompletion.Now(op, failure);
                    }
                }
            }
            else
            {
                WriteCompletion.OnPool(slot.Ops, failure, _options.CompletionScope);
            }
        }

        lock (_handoff)
        {
            // The slot keeps its undo log and pending idempotency keys until the builder reuses it:
            // on success the keys are in the engine by now, on failure the builder rolls back with it.
            slot.Ops.Clear();
            slot.Batch.Clear();
            _failure = failure;
            _busy = false;
            Volatile.Write(ref _idleSince, Stopwatch.GetTimestamp());
            if (_idleWaiters > 0)
            {
                // Only when someone waits for idleness: a pulse would also wake the committer, which
                // waits on the same monitor for a hand-over, once per batch for nothing.
                Monitor.PulseAll(_handoff);
            }
        }
    }
}
