using System.Diagnostics;
using System.Threading.Channels;
using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>
/// The single writer. Callers enqueue <see cref="WriteOp"/>s; one dedicated thread drains the queue
/// into one WriteBatch per commit (bounded by <see cref="StorageOptions.MaxBatchCount"/> and
/// <see cref="StorageOptions.MaxBatchBytes"/>), commits it (fsync with Durability.Sync), and only then
/// completes the callers' tasks. Because only this thread writes, it owns every counter (conversation
/// seqs, inbox seqs, conversation and push job ids) and assigns them while building the batch, so seqs
/// follow commit order. A failed commit rolls the counters back and fails every op in the batch.
/// </summary>
internal sealed class CommitWriter : IDisposable
{
    private readonly IKvEngine _engine;
    private readonly StorageOptions _options;
    private readonly Channel<WriteOp> _queue;
    private readonly Thread _thread;
    private readonly IKvBatch _batch;
    private readonly List<WriteOp> _ops = [];
    private readonly HashSet<string> _touched = new(StringComparer.Ordinal);

    // Counters, each recovered from the data when first needed. Undo logs hold the value before the
    // current batch for rollback.
    private readonly Dictionary<ulong, ulong> _lastSeq = [];
    private readonly Dictionary<ulong, ulong> _seqUndo = [];
    private readonly Dictionary<string, ulong> _lastInboxSeq = new(StringComparer.Ordinal);
    private readonly Dictionary<string, ulong> _inboxUndo = new(StringComparer.Ordinal);
    private readonly Dictionary<IdempotencyKey, AppendResult> _pendingIdempotency = [];
    private ulong _lastConversationId;
    private ulong _lastPushJobId;
    private ulong _batchStartConversationId;
    private ulong _batchStartPushJobId;
    private long _lastTimestamp;
    private long _batchBytes;

    public CommitWriter(IKvEngine engine, StorageOptions options)
    {
        _engine = engine;
        _options = options;
        _batch = engine.CreateBatch();
        _queue = Channel.CreateBounded<WriteOp>(new BoundedChannelOptions(Math.Max(1, options.QueueCapacity))
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _lastConversationId = RecoverLastConversationId();
        _lastPushJobId = RecoverLastPushJobId();
        _thread = new Thread(Run) { IsBackground = true, Name = "ChatBroker.Storage commit writer" };
        _thread.Start();
    }

    // Scratch buffers, used only on the writer thread.
    internal ByteWriter Key { get; } = new();

    internal ByteWriter Value { get; } = new(1024);

    internal ByteWriter Key2 { get; } = new();

    internal IKvEngine Engine => _engine;

    internal IKvBatch Batch => _batch;

    internal StorageOptions Options => _options;

    /// <summary>Enqueues an op; waits for room when the queue is full (backpressure).</summary>
    public async Task<T> EnqueueAsync<T>(WriteOp<T> op, CancellationToken cancellationToken)
    {
        try
        {
            if (!_queue.Writer.TryWrite(op))
            {
                await _queue.Writer.WriteAsync(op, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (ChannelClosedException)
        {
            throw new ObjectDisposedException("The message store is closed.");
        }

        return await op.Task.ConfigureAwait(false);
    }

    /// <summary>Stops accepting writes, commits everything already queued and stops the thread.</summary>
    public void Dispose()
    {
        _queue.Writer.TryComplete();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        _batch.Dispose();
    }

    // ---- used by ops on the writer thread ----

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
            last = RecoverLastSeq(conversationId);
        }

        _seqUndo.TryAdd(conversationId, last);
        _lastSeq[conversationId] = last + 1;
        return last + 1;
    }

    internal ulong NextInboxSeq(string userId)
    {
        if (!_lastInboxSeq.TryGetValue(userId, out var last))
        {
            last = RecoverLastInboxSeq(userId);
        }

        _inboxUndo.TryAdd(userId, last);
        _lastInboxSeq[userId] = last + 1;
        return last + 1;
    }

    internal ulong NextConversationId() => ++_lastConversationId;

    internal ulong NextPushJobId() => ++_lastPushJobId;

    internal bool TryGetPendingDuplicate(in IdempotencyKey key, out AppendResult result) => _pendingIdempotency.TryGetValue(key, out result!);

    internal void AddPendingIdempotency(in IdempotencyKey key, AppendResult result) => _pendingIdempotency[key] = result;

    internal ulong LastSeqCached(ulong conversationId) => _lastSeq.TryGetValue(conversationId, out var last) ? last : RecoverLastSeq(conversationId);

    // ---- the loop ----

    private void Run()
    {
        var reader = _queue.Reader;
        while (true)
        {
            if (!reader.TryRead(out var first))
            {
                if (!reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
                {
                    break;
                }

                continue;
            }

            Add(first);
            while (_ops.Count < _options.MaxBatchCount && _batchBytes < _options.MaxBatchBytes && reader.TryRead(out var next))
            {
                Add(next);
            }

            Commit();
        }
    }

    private void Add(WriteOp op)
    {
        // An op that reads what an earlier op of this batch wrote (a prekey take after an upload, a
        // cursor advanced twice) must see it: commit the batch first. These ops are rare.
        var conflict = op.ConflictKey;
        if (conflict is not null && !_touched.Add(conflict))
        {
            Commit();
            _touched.Add(conflict);
        }

        var countBefore = _batch.Count;
        try
        {
            op.Apply(this);
        }
        catch (Exception ex)
        {
            if (_batch.Count == countBefore)
            {
                // Rejected before writing anything (bad argument, missing record): fail just this op.
                op.Fail(ex);
                return;
            }

            // Half-written: the batch cannot be trusted, so nothing in it is committed.
            _ops.Add(op);
            FailBatch(new StorageException("A write failed while the batch was built: " + ex.Message, ex));
            return;
        }

        _ops.Add(op);
        _batchBytes += op.EstimatedBytes;
    }

    private void Commit()
    {
        if (_ops.Count == 0)
        {
            return;
        }

        Exception? failure = null;
        if (_batch.Count > 0)
        {
            if (_lastPushJobId != _batchStartPushJobId)
            {
                Span<byte> hw = stackalloc byte[8];
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(hw, _lastPushJobId);
                _batch.Put(Cf.Default, Records.PushJobHighWaterKey, hw);
            }

            var started = Stopwatch.GetTimestamp();
            try
            {
                _engine.Commit(_batch, _options.Durability == Durability.Sync);
                StorageMetrics.Commits.Add(1);
                StorageMetrics.CommitLatency.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                StorageMetrics.BatchSize.Record(_ops.Count);
            }
            catch (Exception ex)
            {
                StorageMetrics.CommitFailures.Add(1);
                failure = new StorageException("Commit of a write batch failed: " + ex.Message, ex);
            }
        }

        if (failure is not null)
        {
            FailBatch(failure);
            return;
        }

        foreach (var op in _ops)
        {
            op.Complete();
        }

        ResetBatch();
    }

    private void FailBatch(Exception failure)
    {
        Rollback();
        foreach (var op in _ops)
        {
            op.Fail(failure);
        }

        ResetBatch();
    }

    private void ResetBatch()
    {
        _batch.Clear();
        _ops.Clear();
        _touched.Clear();
        _seqUndo.Clear();
        _inboxUndo.Clear();
        _pendingIdempotency.Clear();
        _batchBytes = 0;
        _batchStartConversationId = _lastConversationId;
        _batchStartPushJobId = _lastPushJobId;
    }

    private void Rollback()
    {
        foreach (var (conversation, last) in _seqUndo)
        {
            _lastSeq[conversation] = last;
        }

        foreach (var (user, last) in _inboxUndo)
        {
            _lastInboxSeq[user] = last;
        }

        _lastConversationId = _batchStartConversationId;
        _lastPushJobId = _batchStartPushJobId;
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
        _batchStartConversationId = cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
        return _batchStartConversationId;
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

        _batchStartPushJobId = last;
        return last;
    }
}

internal readonly record struct IdempotencyKey(string UserId, string DeviceId, ulong ClientMsgId);

/// <summary>A unit of work for the commit writer.</summary>
internal abstract class WriteOp
{
    /// <summary>Non-null for ops that read state an earlier op of the same batch may have written.</summary>
    public virtual string? ConflictKey => null;

    public virtual int EstimatedBytes => 64;

    /// <summary>Runs on the writer thread: reads what it needs and adds its writes to the batch.
    /// Throwing before writing anything fails this op alone.</summary>
    public abstract void Apply(CommitWriter writer);

    public abstract void Complete();

    public abstract void Fail(Exception error);
}

internal abstract class WriteOp<T> : WriteOp
{
    private readonly TaskCompletionSource<T> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    protected T Result { get; set; } = default!;

    public Task<T> Task => _completion.Task;

    public override void Complete() => _completion.TrySetResult(Result);

    public override void Fail(Exception error) => _completion.TrySetException(error);
}
