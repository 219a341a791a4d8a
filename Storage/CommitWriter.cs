using System.Diagnostics;
using System.Threading.Channels;
using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>
/// The single writer. Callers enqueue <see cref="WriteOp"/>s; one dedicated thread drains the queue
/// into one WriteBatch per commit (bounded by <see cref="StorageOptions.MaxBatchCount"/> and
/// <see cref="StorageOptions.MaxBatchBytes"/>); a second thread commits it (fsync with Durability.Sync)
/// and only then completes the callers' tasks. The two overlap: batch N+1 is built while batch N is
/// being fsynced, and at most one batch is in flight, so batches commit in the order they were built.
/// When nothing else is queued the builder writes the batch itself instead of waking the committer
/// (one thread hop less per message at low load). With <see cref="Durability.Async"/> a caller that
/// finds the writer idle and the queue empty does the builder's work itself, on its own thread, and
/// gets its task back completed: no thread wakes at all (see <see cref="TryWriteHere"/>); a caller that
/// arrives meanwhile hands its op to that caller if it is inside an <see cref="AppendCompletionScope"/>.
/// The builder role is held under <c>_builderLock</c>: only its holder writes, so it owns every counter
/// (conversation seqs, inbox seqs, conversation and push job ids) and assigns them while building, so
/// seqs follow commit order.
/// A failed commit fails every op of that batch and of the batch built on top of it, and rolls the
/// counters back to before the failed batch: nothing is acknowledged that was not written, and no
/// seq is skipped.
/// With <see cref="Durability.Sync"/> and <see cref="StorageOptions.OverlapWalSync"/> (the default) a
/// third thread, the syncer, fsyncs the WAL while the committer writes the next batch: the committer's
/// rocksdb_write no longer waits for the disk, one fsync covers every batch written before it, and the
/// callers of a batch complete only after an fsync that began after their batch was written. Until then
/// the batch is "unsynced": its messages and inbox entries are already in the memtable, so the store's
/// reads hide them (<see cref="VisibleSeq"/>, <see cref="VisibleInboxSeq"/>). A failed fsync fails its
/// batches and every later write until the store is reopened (after a failed fsync nothing later can be
/// trusted to be durable either).
/// </summary>
internal sealed class CommitWriter : IDisposable
{
    private readonly IKvEngine _engine;
    private readonly StorageOptions _options;
    private readonly Channel<WriteOp> _queue;
    private readonly Thread _builder;
    private readonly Thread _committer;
    private readonly Thread? _syncer;

    // Hand-off between the threads. _inFlight is the batch being written while _busy is set (by the
    // committer when _handedOver, else inline by the builder);
    // _failure is set by the committer when that batch failed, and cleared by the builder after rollback.
    private readonly object _handoff = new();
    // Held by whoever builds: the builder thread for each batch it drains, or a caller writing its own
    // op when everything is idle (TryWriteHere). Taken before _handoff, never the other way round.
    private readonly Lock _builderLock = new();
    // Ops handed to a caller that writes its own op (TryWriteHere) by callers that arrive meanwhile; it
    // writes them before it lets go of _builderLock and completes them later on its own thread, outside every
    // lock (AppendCompletionScope: between two frames of its read loop, or when the scope ends).
    // _callerTakesOps is true while such a caller holds _builderLock and will still look at _handedOps.
    // Guarded by _handOverLock, which is taken inside _builderLock or alone, never the other way round.
    private readonly Lock _handOverLock = new();
    private List<WriteOp> _handedOps = [];
    private List<WriteOp> _writingHanded = []; // the holder's, while it writes what it took
    private bool _callerTakesOps;
    private bool _deferCompletions; // set by the holder while it writes handed ops
    private readonly bool _callerRuns;
    private volatile bool _disposing;
    // When the writer last finished a batch (Stopwatch ticks). A caller writes its own op only after the
    // writer has been idle this long: under a steady stream of appends the gaps are shorter, and the
    // builder's batches (one WAL write for many appends) serve them better than one write each.
    private long _idleSince;
    private readonly long _callerRunsMinIdleTicks;
    private Slot _current;
    private Slot _inFlight;
    private bool _busy;
    private int _idleWaiters; // threads in WaitIdle, waiting for _busy to clear
    private bool _handedOver; // _inFlight is the committer's to write (not written inline by the builder)
    private bool _stopping;
    private Exception? _failure;
    private volatile StorageException? _broken;

    // Counters, each recovered from the data when first needed. Each slot holds the values from before
    // its batch, for rollback.
    private readonly Dictionary<ulong, ulong> _lastSeq = [];
    private readonly Dictionary<string, ulong> _lastInboxSeq = new(StringComparer.Ordinal);
    private ulong _lastConversationId;
    private ulong _lastPushJobId;
    private long _lastTimestamp;

    // Per sending device, the highest client_msg_id in the idempotency index as far as this process knows
    // (read once from the index, then raised by every append). A client_msg_id above it cannot be a
    // duplicate, so the point lookup is skipped; devices that number their sends with a counter (the SDK
    // does) never need it. Only ever too high after a failed batch, which costs a lookup, never a wrong
    // answer. A cache: cleared when it holds StorageOptions.IdempotencyCacheDevices devices.
    private readonly Dictionary<(string User, string Device), ulong> _newestClientMsgId = [];

    // Batches written to the engine whose fsync has not completed yet, oldest first; shared by the
    // committer (adds), the syncer (removes) and readers (bounds). Guarded by _syncLock.
    private readonly object _syncLock = new();
    private readonly List<UnsyncedBatch> _unsynced = [];
    private volatile int _unsyncedCount;
    private int _unsyncedOps; // requests in _unsynced; at most StorageOptions.QueueCapacity
    private StorageException? _syncFailure;
    private bool _syncStopping;

    public CommitWriter(IKvEngine engine, StorageOptions options)
    {
        _engine = engine;
        _options = options;
        _current = new Slot(engine.CreateBatch());
        _inFlight = new Slot(engine.CreateBatch());
        _queue = Channel.CreateBounded<WriteOp>(new BoundedChannelOptions(Math.Max(1, options.QueueCapacity))
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _lastConversationId = RecoverLastConversationId();
        _lastPushJobId = RecoverLastPushJobId();
        _current.Begin(_lastConversationId, _lastPushJobId);
        _callerRuns = options.WriteInlineWhenIdle && options.Durability == Durability.Async;
        _callerRunsMinIdleTicks = (long)(options.CallerWritesAfterIdle.TotalSeconds * Stopwatch.Frequency);
        _builder = new Thread(Build) { IsBackground = true, Name = "ChatBroker.Storage batch builder" };
        _committer = new Thread(CommitLoop) { IsBackground = true, Name = "ChatBroker.Storage committer" };
        if (options.Durability == Durability.Sync && options.OverlapWalSync)
        {
            _syncer = new Thread(SyncLoop) { IsBackground = true, Name = "ChatBroker.Storage WAL syncer" };
            _syncer.Start();
        }

        _committer.Start();
        _builder.Start();
    }

    // Scratch buffers, used only on the builder thread.
    internal ByteWriter Key { get; } = new();

    internal ByteWriter Value { get; } = new(1024);

    internal IKvEngine Engine => _engine;

    internal IKvBatch Batch => _current.Batch;

    internal StorageOptions Options => _options;

    /// <summary>Enqueues an op; waits for room when the queue is full (backpressure).</summary>
    public async Task<T> EnqueueAsync<T>(WriteOp<T> op, CancellationToken cancellationToken)
    {
        if (_callerRuns && TryWriteHere(op))
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
                ? new StorageException(broken.Message, broken)
                : new ObjectDisposedException("The message store is closed.");
        }

        return await op.Task.ConfigureAwait(false);
    }

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
    private bool TryWriteHere(WriteOp op)
    {
        if (_queue.Reader.Count != 0
            || Stopwatch.GetTimestamp() - Volatile.Read(ref _idleSince) < _callerRunsMinIdleTicks)
        {
            return false;
        }

        if (!_builderLock.TryEnter())
        {
            return TryHandToWritingCaller(op);
        }

        var takesOps = false;
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

            if (AppendCompletionScope.IsActive)
            {
                // This thread can complete other callers' ops once it holds no locks: take theirs too.
                lock (_handOverLock)
                {
                    _callerTakesOps = true;
                }

                takesOps = true;
            }

            Add(op);
            HandOff(completeHere: true);
            StorageMetrics.CallerWritten.Add(1);
            return true;
        }
        finally
        {
            if (takesOps)
            {
                WriteHandedOps();
            }

            _builderLock.Exit();
        }
    }

    /// <summary>
    /// Another caller is writing its own op (<see cref="TryWriteHere"/>) from inside an
    /// <see cref="AppendCompletionScope"/>: hand it this op instead of waking the builder thread. Order is
    /// kept: an earlier op of this caller is either still queued (then this one queues too), handed over
    /// already (then it is ahead in the same list), or written.
    /// </summary>
    private bool TryHandToWritingCaller(WriteOp op)
    {
        if (!Volatile.Read(ref _callerTakesOps))
        {
            return false; // the usual case without scopes (the builder thread, or a caller outside one, writes)
        }

        lock (_handOverLock)
        {
            if (!_callerTakesOps || _queue.Reader.Count != 0 || _handedOps.Count >= _options.MaxBatchCount)
            {
                return false;
            }

            _handedOps.Add(op);
            return true;
        }
    }

    /// <summary>Writes the ops handed over while this caller held the builder lock, as batches, until
    /// none is left; their completions wait until this thread holds no lock (see <see cref="AppendCompletionScope"/>).
    /// After a few rounds it stops taking more, so a caller does not become the writer for everybody.</summary>
    private void WriteHandedOps()
    {
        const int MaxRounds = 4;
        try
        {
            for (var round = 1; ; round++)
            {
                lock (_handOverLock)
                {
                    if (_handedOps.Count == 0 || round == MaxRounds)
                    {
                        _callerTakesOps = false; // nobody adds after this: the last take is below
                    }

                    (_handedOps, _writingHanded) = (_writingHanded, _handedOps);
                }

                if (_writingHanded.Count == 0)
                {
                    return;
                }

                _deferCompletions = true;
                StorageMetrics.HandedOver.Add(_writingHanded.Count);
                foreach (var handed in _writingHanded)
                {
                    Add(handed);
                }

                _writingHanded.Clear();
                HandOff(completeHere: true);
                _deferCompletions = false;
            }
        }
        catch (Exception ex)
        {
            // A bug: fail what was taken rather than leave its callers waiting, and take no more.
            _deferCompletions = false;
            lock (_handOverLock)
            {
                _callerTakesOps = false;
                _writingHanded.AddRange(_handedOps);
                _handedOps.Clear();
            }

            Finish(_writingHanded, ex);
            _writingHanded.Clear();
            throw;
        }
    }

    /// <summary>Stops accepting writes, commits everything already queued and stops both threads.</summary>
    public void Dispose()
    {
        _disposing = true;
        lock (_builderLock)
        {
            // A caller writing its own op finishes first; later ones see _disposing and queue.
        }

        _queue.Writer.TryComplete();
        _builder.Join();
        lock (_handoff)
        {
            _stopping = true;
            Monitor.PulseAll(_handoff);
        }

        _committer.Join();
        lock (_syncLock)
        {
            _syncStopping = true;
            Monitor.PulseAll(_syncLock);
        }

        _syncer?.Join();
        _current.Batch.Dispose();
        _inFlight.Batch.Dispose();
    }

    // ---- used by ops on the builder thread ----

    /// <summary>Server time in ms, never going backwards within this process, so that message
    /// timestamps are non-decreasing in seq order (retention relies on it).</summary>
    internal long Now()
    {
        var now = _options.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        if (now < _lastTimestamp)
        {
            now = _lastTimestamp;
        }

        _lastTimestamp = now;
        return now;
    }

    internal ulong NextSeq(ulong conversationId)
    {
        if (!_lastSeq.TryGetValue(conversationId, out var last))
        {
            // Not cached means no batch in flight touched it: the engine is up to date for it.
            last = RecoverLastSeq(conversationId);
        }

        _current.SeqUndo.TryAdd(conversationId, last);
        _lastSeq[conversationId] = last + 1;
        return last + 1;
    }

    internal ulong NextInboxSeq(string userId)
    {
        if (!_lastInboxSeq.TryGetValue(userId, out var last))
        {
            last = RecoverLastInboxSeq(userId);
        }

        _current.InboxUndo.TryAdd(userId, last);
        _lastInboxSeq[userId] = last + 1;
        return last + 1;
    }

    /// <summary>True when no stored append of this device can have <paramref name="clientMsgId"/>: it is
    /// above the highest client_msg_id the device has in the idempotency index.</summary>
    internal bool IsAboveNewestClientMsgId(string userId, string deviceId, ulong clientMsgId)
    {
        if (!_newestClientMsgId.TryGetValue((userId, deviceId), out var newest))
        {
            if (_newestClientMsgId.Count >= _options.IdempotencyCacheDevices)
            {
                _newestClientMsgId.Clear();
            }

            var lower = Records.IdempotencyKey(new ByteWriter(), userId, deviceId, 0).Span[..^8].ToArray();
            using (var cursor = _engine.OpenCursor(Cf.Idempotency, lower, KeyRange.PrefixSuccessor(lower)))
            {
                cursor.SeekToLast();
                newest = cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
            }

            _newestClientMsgId[(userId, deviceId)] = newest;
        }

        return clientMsgId > newest;
    }

    internal void NoteClientMsgId(string userId, string deviceId, ulong clientMsgId)
    {
        ref var newest = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_newestClientMsgId, (userId, deviceId), out _);
        newest = Math.Max(newest, clientMsgId);
    }

    internal ulong NextConversationId() => ++_lastConversationId;

    internal ulong NextPushJobId() => ++_lastPushJobId;

    /// <summary>Idempotency keys written by batches not yet visible in the engine (building or in flight).</summary>
    internal bool TryGetPendingDuplicate(in IdempotencyKey key, out AppendResult result) =>
        _current.PendingIdempotency.TryGetValue(key, out result!) || _inFlight.PendingIdempotency.TryGetValue(key, out result!);

    internal void AddPendingIdempotency(in IdempotencyKey key, AppendResult result) => _current.PendingIdempotency[key] = result;

    // ---- the builder ----

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
            _broken = new StorageException("The message store's commit writer stopped: " + ex.Message, ex);
            _queue.Writer.TryComplete();
            Finish(_current.Ops, _broken);
            while (_queue.Reader.TryRead(out var op))
            {
                Finish([op], _broken);
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
                // Rejected before writing anything (bad argument, missing record): fail just this op.
                Finish([op], ex);
                return;
            }

            // Half-written: the batch cannot be trusted, so nothing in it is committed.
            _current.Ops.Add(op);
            WaitIdle();
            FailCurrent(new StorageException("A write failed while the batch was built: " + ex.Message, ex));
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
            CommitSlot(_inFlight, syncHere: _syncer is not null && _unsyncedCount == 0, completeHere);
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
        Finish(_current.Ops, new StorageException("An earlier write batch failed, so this one was not committed: " + failure.Message, failure));

        _inFlight.Reset();
        _current.Reset();
        _current.Begin(_lastConversationId, _lastPushJobId);
        return false;
    }

    private void FailCurrent(Exception failure)
    {
        _current.Rollback(this);
        Finish(_current.Ops, failure);

        _current.Reset();
        _current.Begin(_lastConversationId, _lastPushJobId);
    }

    /// <summary>Completes (or fails) the ops on one thread-pool work item. Their continuations run
    /// inline there, one after another, instead of as one work item each, and never on the writer's
    /// own threads.</summary>
    private static void Finish(List<WriteOp> ops, Exception? failure)
    {
        if (ops.Count > 0)
        {
            FinishAll(ops.ToArray(), failure);
        }
    }

    private static void FinishAll(WriteOp[] batch, Exception? failure)
    {
        ThreadPool.UnsafeQueueUserWorkItem(
            static state =>
            {
                var (batch, failure) = state;
                foreach (var op in batch)
                {
                    Complete(op, failure);
                }
            },
            (batch, failure),
            preferLocal: false);
    }

    private static void Complete(WriteOp op, Exception? failure)
    {
        if (failure is null)
        {
            op.Complete();
        }
        else
        {
            op.Fail(failure);
        }
    }

    // ---- the committer ----

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
    /// writer idle. Runs on the committer thread, or inline on the builder (see <see cref="HandOff"/>).</summary>
    private void CommitSlot(Slot slot, bool syncHere, bool completeHere = false)
    {
        {
            Exception? failure = null;
            UnsyncedBatch? unsynced = null;
            if (_syncer is not null && slot.Ops.Count > 0)
            {
                // Registered before the write makes the batch visible, so readers can hide it. Ops that
                // wrote nothing (a duplicate, an unchanged cursor) wait for the fsync too: their answers
                // may rest on an earlier batch that is not durable yet. A batch fsynced in its own write
                // is visible only once durable, and completes right here.
                unsynced = syncHere ? null : Register(slot, out failure);
                failure ??= syncHere ? EarlierSyncFailure() : null;
            }

            if (failure is null && slot.Batch.Count > 0)
            {
                var started = Stopwatch.GetTimestamp();
                try
                {
                    _engine.Commit(slot.Batch, syncHere || (_syncer is null && _options.Durability == Durability.Sync));
                    StorageMetrics.Commits.Add(1);
                    StorageMetrics.CommitLatency.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                    StorageMetrics.BatchSize.Record(slot.Ops.Count);
                }
                catch (Exception ex)
                {
                    StorageMetrics.CommitFailures.Add(1);
                    failure = new StorageException("Commit of a write batch failed: " + ex.Message, ex);
                }
            }

            if (unsynced is not null)
            {
                lock (_syncLock)
                {
                    if (failure is null)
                    {
                        unsynced.Written = true;
                        Monitor.PulseAll(_syncLock);
                    }
                    else
                    {
                        _unsynced.Remove(unsynced);
                        _unsyncedCount = _unsynced.Count;
                        _unsyncedOps -= unsynced.Ops.Length;
                    }
                }
            }

            if (unsynced is null || failure is not null)
            {
                if (completeHere)
                {
                    // A caller writing its own op (TryWriteHere): nobody awaits it yet, so completing it
                    // runs no continuation here. Ops other callers handed it are awaited: they complete
                    // later on this thread, outside every lock (AppendCompletionScope).
                    foreach (var op in slot.Ops)
                    {
                        if (_deferCompletions)
                        {
                            AppendCompletionScope.Defer(op, failure);
                        }
                        else
                        {
                            Complete(op, failure);
                        }
                    }
                }
                else
                {
                    Finish(slot.Ops, failure);
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

    private StorageException? EarlierSyncFailure()
    {
        lock (_syncLock)
        {
            return _syncFailure is null
                ? null
                : new StorageException("An earlier fsync of the WAL failed, so the store accepts no writes until it is reopened: " + _syncFailure.Message, _syncFailure);
        }
    }

    private UnsyncedBatch? Register(Slot slot, out Exception? failure)
    {
        failure = EarlierSyncFailure();
        if (failure is not null)
        {
            return null;
        }

        lock (_syncLock)
        {
            // Bounded like the queue: if the disk stalls, the committer stops here and the queue's
            // backpressure reaches the callers, instead of written-but-unsynced batches piling up.
            while (_unsyncedOps >= _options.QueueCapacity && _syncFailure is null)
            {
                Monitor.Wait(_syncLock);
            }

            if (_syncFailure is not null)
            {
                failure = new StorageException("An earlier fsync of the WAL failed, so the store accepts no writes until it is reopened: " + _syncFailure.Message, _syncFailure);
                return null;
            }

            var batch = new UnsyncedBatch(
                slot.Ops.ToArray(),
                slot.SeqUndo.Count == 0 ? null : new Dictionary<ulong, ulong>(slot.SeqUndo),
                slot.InboxUndo.Count == 0 ? null : new Dictionary<string, ulong>(slot.InboxUndo, StringComparer.Ordinal),
                slot.Batch.Count > 0);
            _unsynced.Add(batch);
            _unsyncedCount = _unsynced.Count;
            _unsyncedOps += batch.Ops.Length;
            return batch;
        }
    }

    // ---- the syncer ----

    private void SyncLoop()
    {
        var taken = new List<UnsyncedBatch>();
        while (true)
        {
            StorageException? earlierFailure;
            lock (_syncLock)
            {
                while (!(_unsynced.Count > 0 && _unsynced[0].Written) && !_syncStopping)
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
                    failure = new StorageException("fsync of the WAL failed; the store accepts no writes until it is reopened: " + ex.Message, ex);
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

            FinishAll(ops, failure);
            taken.Clear();
        }
    }

    // ---- read bounds: what readers may see while batches wait for their fsync ----

    /// <summary>The highest seq of the conversation that is durable, or <see cref="ulong.MaxValue"/>
    /// when none of its seqs waits for an fsync. Call it after opening the cursor that reads: a batch
    /// written before the cursor opened is either still listed here or already durable.</summary>
    internal ulong VisibleSeq(ulong conversationId) => VisibleBound(conversationId, static batch => batch.SeqBefore);

    /// <summary>Like <see cref="VisibleSeq"/>, for a user's inbox.</summary>
    internal ulong VisibleInboxSeq(string userId) => VisibleBound(userId, static batch => batch.InboxSeqBefore);

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
    private sealed class UnsyncedBatch(WriteOp[] ops, Dictionary<ulong, ulong>? seqBefore, Dictionary<string, ulong>? inboxSeqBefore, bool wroteRecords)
    {
        public WriteOp[] Ops { get; } = ops;

        public Dictionary<ulong, ulong>? SeqBefore { get; } = seqBefore;

        public Dictionary<string, ulong>? InboxSeqBefore { get; } = inboxSeqBefore;

        public bool WroteRecords { get; } = wroteRecords;

        /// <summary>Set by the committer once the engine has the batch; guarded by _syncLock.</summary>
        public bool Written { get; set; }
    }

    /// <summary>One batch being built or committed, with what is needed to undo its counters.</summary>
    private sealed class Slot(IKvBatch batch)
    {
        public IKvBatch Batch { get; } = batch;

        public List<WriteOp> Ops { get; } = [];

        public HashSet<string> Touched { get; } = new(StringComparer.Ordinal);

        public Dictionary<ulong, ulong> SeqUndo { get; } = [];

        public Dictionary<string, ulong> InboxUndo { get; } = new(StringComparer.Ordinal);

        public Dictionary<IdempotencyKey, AppendResult> PendingIdempotency { get; } = [];

        public ulong ConversationIdBefore { get; private set; }

        public ulong PushJobIdBefore { get; private set; }

        public long Bytes { get; set; }

        public void Begin(ulong conversationId, ulong pushJobId)
        {
            ConversationIdBefore = conversationId;
            PushJobIdBefore = pushJobId;
        }

        public void Rollback(CommitWriter w)
        {
            foreach (var (conversation, last) in SeqUndo)
            {
                w._lastSeq[conversation] = last;
            }

            foreach (var (user, last) in InboxUndo)
            {
                w._lastInboxSeq[user] = last;
            }

            w._lastConversationId = ConversationIdBefore;
            w._lastPushJobId = PushJobIdBefore;
        }

        public void Reset()
        {
            Batch.Clear();
            Ops.Clear();
            Touched.Clear();
            SeqUndo.Clear();
            InboxUndo.Clear();
            PendingIdempotency.Clear();
            Bytes = 0;
        }
    }

    // ---- recovery: every counter comes from the data itself ----

    private ulong RecoverLastSeq(ulong conversationId)
    {
        var lower = Records.ConversationPrefix(new ByteWriter(8), conversationId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Messages, lower, KeyRange.PrefixSuccessor(lower));
        cursor.SeekToLast();
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    private ulong RecoverLastInboxSeq(string userId)
    {
        var lower = Records.InboxPrefix(new ByteWriter(), userId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Inboxes, lower, KeyRange.PrefixSuccessor(lower));
        cursor.SeekToLast();
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    private ulong RecoverLastConversationId()
    {
        using var cursor = _engine.OpenCursor(Cf.Conversations, [], []);
        cursor.SeekToLast();
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    private ulong RecoverLastPushJobId()
    {
        // Completed jobs are deleted, so the newest key alone could go backwards; a high-water mark
        // written with every batch that enqueues jobs keeps ids unique across restarts.
        var hw = _engine.Get(Cf.Default, Records.PushJobHighWaterKey);
        var last = hw is { Length: 8 } ? Records.TrailingU64(hw) : 0;
        using var cursor = _engine.OpenCursor(Cf.PushJobs, [], []);
        cursor.SeekToLast();
        if (cursor.Valid)
        {
            last = Math.Max(last, Records.TrailingU64(cursor.Key));
        }

        return last;
    }
}

internal readonly record struct IdempotencyKey(string UserId, string DeviceId, ulong ClientMsgId);

/// <summary>A unit of work for the commit writer.</summary>
internal abstract class WriteOp
{
    /// <summary>Non-null for ops that read state an earlier op of the same batch may have written.</summary>
    public virtual string? ConflictKey => null;

    /// <summary>As <see cref="ConflictKey"/>, for an op that reads several such records.</summary>
    public virtual IReadOnlyList<string>? ConflictKeys => null;

    public virtual int EstimatedBytes => 64;

    /// <summary>Runs on the writer thread: reads what it needs and adds its writes to the batch.
    /// Throwing before writing anything fails this op alone.</summary>
    public abstract void Apply(CommitWriter writer);

    public abstract void Complete();

    public abstract void Fail(Exception error);
}

internal abstract class WriteOp<T> : WriteOp
{
    // Continuations run synchronously, but only ever on the completion work item (CommitWriter.Finish) or
    // in an AppendCompletionScope (an op handed to a writing caller), never under the writer's locks.
    private readonly TaskCompletionSource<T> _completion = new();

    protected T Result { get; set; } = default!;

    public Task<T> Task => _completion.Task;

    public override void Complete() => _completion.TrySetResult(Result);

    public override void Fail(Exception error) => _completion.TrySetException(error);
}
