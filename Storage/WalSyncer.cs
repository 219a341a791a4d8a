using System.Diagnostics;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>
/// The syncer thread (<see cref="Durability.Sync"/> only): fsyncs the WAL while the committer writes the
/// next batch. The committer's rocksdb_write then no longer waits for the disk, one fsync covers every
/// batch written before it, and the callers of a batch complete (on the pool) only after an fsync that
/// began after their batch was written. Until then the batch is "unsynced": its messages and inbox entries
/// are already in the memtable, so the store's reads hide them (<see cref="VisibleSeq"/>,
/// <see cref="VisibleInboxSeq"/>). A failed fsync fails its batches and every later write until the store
/// is reopened (after a failed fsync nothing later can be trusted to be durable either).
/// <para>
/// Its one lock, <c>_syncLock</c>, guards the list of unsynced batches, shared by the committer (adds),
/// the syncer (removes) and readers (bounds). The committer takes it under no lock of the writer's but
/// the builder lock when it writes inline; nothing is taken while it is held.
/// </para>
/// </summary>
internal sealed class WalSyncer
{
    private const string EarlierFailureText = "An earlier fsync of the WAL failed, so the store accepts no writes until it is reopened: ";

    private readonly IKvEngine _engine;
    private readonly int _capacity;
    private readonly IWriteCompletionScope? _completionScope;
    private readonly Thread _thread;

    // Batches written to the engine whose fsync has not completed yet, oldest first.
    private readonly object _syncLock = new();
    private readonly List<UnsyncedBatch> _unsynced = [];
    private volatile int _unsyncedCount;
    private int _unsyncedOps; // requests in _unsynced; at most StorageOptions.QueueCapacity
    private StorageException? _syncFailure;
    private bool _stopping;

    public WalSyncer(IKvEngine engine, StorageOptions options)
    {
        _engine = engine;
        _capacity = options.QueueCapacity;
        _completionScope = options.CompletionScope;
        _thread = new Thread(SyncLoop) { IsBackground = true, Name = "ChatBroker.Storage WAL syncer" };
        _thread.Start();
    }

    /// <summary>True when no written batch waits for an fsync (read without the lock: only the committer
    /// adds batches, so on its thread "none" stays true until it adds one).</summary>
    public bool IsIdle => _unsyncedCount == 0;

    /// <summary>Stops the thread once every written batch is fsynced; call after the committer stopped.</summary>
    public void Stop()
    {
        lock (_syncLock)
        {
            _stopping = true;
            Monitor.PulseAll(_syncLock);
        }

        _thread.Join();
    }

    /// <summary>Non-null once an fsync failed: every later write fails with it.</summary>
    public StorageException? EarlierFailure()
    {
        lock (_syncLock)
        {
            return _syncFailure is null ? null : new StorageException(StorageFailure.Io, EarlierFailureText + _syncFailure.Message, _syncFailure);
        }
    }

    /// <summary>
    /// Lists a batch about to be written, so readers can hide it until it is durable. Bounded like the
    /// queue: if the disk stalls, the committer waits here and the queue's backpressure reaches the callers,
    /// instead of written-but-unsynced batches piling up. Null (with the failure) after an earlier failed fsync.
    /// </summary>
    public UnsyncedBatch? Register(WriteOp[] ops, Dictionary<ulong, ulong> seqUndo, Dictionary<string, ulong> inboxUndo, bool wroteRecords, out Exception? failure)
    {
        failure = EarlierFailure();
        if (failure is not null)
        {
            return null;
        }

        lock (_syncLock)
        {
            while (_unsyncedOps >= _capacity && _syncFailure is null)
            {
                Monitor.Wait(_syncLock);
            }

            if (_syncFailure is not null)
            {
                failure = new StorageException(StorageFailure.Io, EarlierFailureText + _syncFailure.Message, _syncFailure);
                return null;
            }

            var batch = new UnsyncedBatch(
                ops,
                seqUndo.Count == 0 ? null : new Dictionary<ulong, ulong>(seqUndo),
                inboxUndo.Count == 0 ? null : new Dictionary<string, ulong>(inboxUndo, StringComparer.Ordinal),
                wroteRecords);
            _unsynced.Add(batch);
            _unsyncedCount = _unsynced.Count;
            _unsyncedOps += batch.Ops.Length;
            return batch;
        }
    }

    /// <summary>The committer wrote the batch (<paramref name="failure"/> null): it may be fsynced now. Or
    /// the write failed: the batch is dropped from the list, and its ops fail with the committer's answer.</summary>
    public void Written(UnsyncedBatch batch, Exception? failure)
    {
        lock (_syncLock)
        {
            if (failure is null)
            {
                batch.Written = true;
                Monitor.PulseAll(_syncLock);
            }
            else
            {
                _unsynced.Remove(batch);
                _unsyncedCount = _unsynced.Count;
                _unsyncedOps -= batch.Ops.Length;
            }
        }
    }

    private void SyncLoop()
    {
        var taken = new List<UnsyncedBatch>();
        while (true)
        {
            StorageException? earlierFailure;
            lock (_syncLock)
            {
                while (!(_unsynced.Count > 0 && _unsynced[0].Written) && !_stopping)
                {
                    Monitor.Wait(_syncLock);
                }

                // Only the written prefix: an fsync covers what was written before it began.
                foreach (var batch in _unsynced)
                {
                    if (!batch.Written)
                    {
                        break;
                    }

                    taken.Add(batch);
                }

                if (taken.Count == 0)
                {
                    return; // stopping, and the committer has stopped: nothing can be left unwritten
                }

                earlierFailure = _syncFailure;
            }

            Exception? failure = earlierFailure;
            if (failure is null && taken.Exists(static b => b.WroteRecords))
            {
                var started = Stopwatch.GetTimestamp();
                try
                {
                    _engine.SyncWal();
                    StorageMetrics.WalSyncs.Add(1);
                    StorageMetrics.WalSyncLatency.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                }
                catch (Exception ex)
                {
                    StorageMetrics.CommitFailures.Add(taken.Count);
                    failure = StorageException.From("fsync of the WAL failed; the store accepts no writes until it is reopened: ", ex, StorageFailure.Io);
                }
            }

            lock (_syncLock)
            {
                _unsynced.RemoveRange(0, taken.Count);
                _unsyncedCount = _unsynced.Count;
                foreach (var batch in taken)
                {
                    _unsyncedOps -= batch.Ops.Length;
                }

                _syncFailure ??= failure as StorageException;
                Monitor.PulseAll(_syncLock); // a committer waiting for room in the bound
            }

            var count = 0;
            foreach (var batch in taken)
            {
                count += batch.Ops.Length;
            }

            var ops = new WriteOp[count];
            count = 0;
            foreach (var batch in taken)
            {
                batch.Ops.CopyTo(ops, count);
                count += batch.Ops.Length;
            }

            WriteCompletion.OnPool(ops, failure, _completionScope);
            taken.Clear();
        }
    }

    // ---- read bounds: what readers may see while batches wait for their fsync ----

    /// <summary>The highest seq of the conversation that is durable, or <see cref="ulong.MaxValue"/>
    /// when none of its seqs waits for an fsync. Call it after opening the cursor that reads: a batch
    /// written before the cursor opened is either still listed here or already durable.</summary>
    public ulong VisibleSeq(ulong conversationId) => VisibleBound(conversationId, static batch => batch.SeqBefore);

    /// <summary>Like <see cref="VisibleSeq"/>, for a user's inbox.</summary>
    public ulong VisibleInboxSeq(string userId) => VisibleBound(userId, static batch => batch.InboxSeqBefore);

    private ulong VisibleBound<TKey>(TKey key, Func<UnsyncedBatch, Dictionary<TKey, ulong>?> counterBefore)
        where TKey : notnull
    {
        if (_unsyncedCount == 0)
        {
            return ulong.MaxValue;
        }

        lock (_syncLock)
        {
            // Oldest first, and seqs grow with batches: the first hit is the lowest unsynced seq.
            foreach (var batch in _unsynced)
            {
                if (counterBefore(batch) is { } before && before.TryGetValue(key, out var last))
                {
                    return last;
                }
            }
        }

        return ulong.MaxValue;
    }

    /// <summary>A batch in the engine whose fsync has not completed. The dictionaries hold, per
    /// conversation (user), the last seq (inbox seq) before this batch.</summary>
    internal sealed class UnsyncedBatch(WriteOp[] ops, Dictionary<ulong, ulong>? seqBefore, Dictionary<string, ulong>? inboxSeqBefore, bool wroteRecords)
    {
        public WriteOp[] Ops { get; } = ops;

        public Dictionary<ulong, ulong>? SeqBefore { get; } = seqBefore;

        public Dictionary<string, ulong>? InboxSeqBefore { get; } = inboxSeqBefore;

        public bool WroteRecords { get; } = wroteRecords;

        /// <summary>Set by the committer once the engine has the batch; guarded by _syncLock.</summary>
        public bool Written { get; set; }
    }
}
