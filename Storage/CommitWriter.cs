using System.Diagnostics;
using System.Threading.Channels;
using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>
/// The single writer: every write of the store goes through it, as a <see cref="WriteOp"/>, into one
/// WriteBatch per commit. Who does what, one file each:
/// <list type="table">
/// <item><term>CommitWriter.Admission.cs</term><description>the caller's thread: <see cref="EnqueueAsync"/>
/// puts an op into the bounded queue (a full queue makes callers wait: backpressure).</description></item>
/// <item><term>CommitWriter.CallerWrite.cs</term><description>the caller's thread, <see cref="Durability.Async"/>
/// only: a caller that finds the writer idle takes the builder role and writes its own op (no thread wakes);
/// callers that arrive meanwhile hand it their ops (<see cref="CallerHandOver"/>), which it completes in its
/// <see cref="AppendCompletionScope"/>.</description></item>
/// <item><term>CommitWriter.Builder.cs</term><description>the builder thread ("ChatBroker.Storage batch
/// builder"): drains the queue into a batch (bounded by <see cref="StorageOptions.MaxBatchCount"/> and
/// <see cref="StorageOptions.MaxBatchBytes"/>), assigns the counters while building, and hands the batch
/// on, or writes it itself when nothing else is queued (one thread hop less at low load).</description></item>
/// <item><term>CommitWriter.Counters.cs</term><description>the counters the builder role assigns (conversation
/// seqs, inbox seqs, conversation and push job ids), recovered from the data.</description></item>
/// <item><term>CommitWriter.Committer.cs</term><description>the committer thread ("ChatBroker.Storage
/// committer"): writes the batch handed to it while the next one is built, then hands it to the syncer or
/// completes it.</description></item>
/// <item><term>WalSyncer.cs</term><description>the syncer thread (<see cref="Durability.Sync"/>): fsyncs the
/// WAL while the next batch is written; readers hide what is not durable yet.</description></item>
/// <item><term>WriteCompletion.cs</term><description>where ops complete: a pool work item per batch, the
/// caller's own thread, or the scope of the caller that wrote them.</description></item>
/// </list>
/// <para>
/// The builder role is held under <c>_builderLock</c>: only its holder builds, so it owns every counter and
/// assigns them while building, so seqs follow commit order. At most one batch is in flight
/// (<c>_handoff</c>), so batches commit in the order they were built. A failed commit fails every op of that
/// batch and of the batch built on top of it, and rolls the counters back to before the failed batch:
/// nothing is acknowledged that was not written, and no seq is skipped. Lock order (locksordering.txt):
/// <c>_builderLock</c>, then one of <c>_handOverLock</c>, <c>_handoff</c> or the syncer's <c>_syncLock</c>
/// (none of those three is taken under another). No caller's continuation runs under any of them.
/// </para>
/// </summary>
internal sealed partial class CommitWriter : IDisposable
{
    private readonly IKvEngine _engine;
    private readonly StorageOptions _options;
    private readonly Channel<WriteOp> _queue;
    private readonly Thread _builder;
    private readonly Thread _committer;
    private readonly WalSyncer? _syncer;

    // Hand-off between the builder role and the committer. _inFlight is the batch being written while _busy
    // is set (by the committer when _handedOver, else inline by the builder role); _failure is set by the
    // committer when that batch failed, and cleared by the builder role after rollback.
    private readonly object _handoff = new();
    // Held by whoever builds: the builder thread for each batch it drains, or a caller writing its own
    // op when everything is idle (TryWriteHere). Taken before _handoff, never the other way round.
    private readonly Lock _builderLock = new();
    private readonly CallerHandOver _handOver;
    // Set by a writing caller while it writes handed ops: their completions wait in its scope.
    private AppendCompletionScope? _deferCompletionsTo;
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
    private bool _handedOver; // _inFlight is the committer's to write (not written inline by the builder role)
    private bool _stopping;
    private Exception? _failure;
    private volatile StorageException? _broken;

    public CommitWriter(IKvEngine engine, StorageOptions options)
    {
        _engine = engine;
        _options = options;
        _current = new Slot(new CapturingKvBatch(engine.CreateBatch(), _capture));
        _inFlight = new Slot(new CapturingKvBatch(engine.CreateBatch(), _capture));
        _queue = Channel.CreateBounded<WriteOp>(new BoundedChannelOptions(Math.Max(1, options.QueueCapacity))
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _handOver = new CallerHandOver(_queue.Reader, options.MaxBatchCount);
        _lastConversationId = RecoverLastConversationId();
        _lastPushJobId = RecoverLastPushJobId();
        _current.Begin(_lastConversationId, _lastPushJobId);
        _callerRuns = options.WriteInlineWhenIdle && options.Durability == Durability.Async;
        _callerRunsMinIdleTicks = (long)(options.CallerWritesAfterIdle.TotalSeconds * Stopwatch.Frequency);
        _builder = new Thread(Build) { IsBackground = true, Name = "ChatBroker.Storage batch builder" };
        _committer = new Thread(CommitLoop) { IsBackground = true, Name = "ChatBroker.Storage committer" };
        if (options.Durability == Durability.Sync && options.OverlapWalSync)
        {
            _syncer = new WalSyncer(engine, options);
        }

        _committer.Start();
        _builder.Start();
    }

    // Scratch buffers, used only in the builder role.
    internal ByteWriter Key { get; } = new();

    internal ByteWriter Value { get; } = new(1024);

    internal IKvEngine Engine => _engine;

    internal IKvBatch Batch => _current.Batch;

    /// <summary>The batch being built, for an op that must not be captured for replication.</summary>
    internal CapturingKvBatch CapturingBatch => _current.Batch;

    internal StorageOptions Options => _options;

    /// <summary>The highest seq of the conversation that readers may see (see <see cref="WalSyncer.VisibleSeq"/>).</summary>
    internal ulong VisibleSeq(ulong conversationId) => Math.Min(_syncer?.VisibleSeq(conversationId) ?? ulong.MaxValue, ReplicatedSeq(conversationId));

    /// <summary>Like <see cref="VisibleSeq"/>, for a user's inbox.</summary>
    internal ulong VisibleInboxSeq(string userId) => Math.Min(_syncer?.VisibleInboxSeq(userId) ?? ulong.MaxValue, ReplicatedInboxSeq(userId));

    /// <summary>Stops accepting writes, commits everything already queued and stops the threads.</summary>
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
        _syncer?.Stop();
        _current.Batch.Dispose();
        _inFlight.Batch.Dispose();
    }
}
