using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Cluster.Mesh.Wire;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>What a remote node answered to one request: a reply, a refusal, or (no reply) "done".</summary>
public readonly record struct MeshReply(MeshStatus Status, byte[]? Reply, ulong Epoch, string Owner, uint Reason)
{
    public static MeshReply Done => new(MeshStatus.Ok, null, 0, "", 0);
}

/// <summary>
/// This node's link to one other node: the <see cref="MeshPeer"/> that sends to it (one stream, so operations
/// reach it in the order they were sent) and the requests waiting for their outcome, correlated by message id.
/// </summary>
/// <remarks>
/// A request is queued and registered under <c>_lock</c>, and the peer's ack loop takes the same lock, so an
/// answer can never arrive before its request is registered. The mesh gives each message at most one result, in
/// the ack that first covers it or (after a lost ack) in the resend's; an acked message without a result is done.
/// Ids are consecutive, so the outstanding ones form a queue in id order.
/// </remarks>
public sealed class PeerLink : IMeshResultHandler, IAsyncDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, TaskCompletionSource<MeshReply>> _pending = [];
    private readonly Queue<ulong> _order = new();
    private readonly GrpcChannel _channel;
    private readonly bool _ownsChannel;
    private readonly PeerLink? _replication;
    private readonly PeerLink? _forwarding;
    private readonly PeerLink? _signals;
    private int _started;
    private bool _disposed;
    private long _lastDiagnostic;

    public PeerLink(string localNodeId, string remoteNodeId, string meshAddress, MeshOptions options, MeshMetrics metrics, ILogger? logger = null)
        : this(localNodeId, remoteNodeId, meshAddress, MeshChannel.Create(new Uri("http://" + meshAddress), options), 0, options, metrics, logger)
    {
        _ownsChannel = true;
        // Stream 1 of the pair, on the same HTTP/2 connection: replication's batches (docs/cluster.md, "Replication").
        // A stream of its own, so a primary's replica traffic and the routed operations (forwarded SENDs, which may
        // wait for that node's own replicas) never wait behind each other.
        _replication = new PeerLink(localNodeId, remoteNodeId, meshAddress, _channel, 1, options, metrics, logger);
        // Stream 2: the forward queues' inbox entries for the node as a home (HomeForwarder). A home's copy waits for the
        // home's own replicas; on stream 0 a slow one held the SENDs and reads queued behind it (up to forward_timeout).
        _forwarding = new PeerLink(localNodeId, remoteNodeId, meshAddress, _channel, 2, options, metrics, logger);
        // Stream 3: posts that answer nobody and need no order against stream 0 (live deliveries to a gateway's devices,
        // receipts and delivered reports; inbox ACKs stay on 0, where a SYNC after an ACK reads after it). Receipts are
        // writes that wait for the receiver's replicas; on stream 0 thousands of these posts queued ahead of the
        // forwarded SENDs and reads, which timed out behind them (checker, event 5006: 3,400 DeviceDeliver, 1,270
        // ReceiptForUser, 640 DeliveredReport, 290 AckInbox ahead of 6 SENDs).
        _signals = new PeerLink(localNodeId, remoteNodeId, meshAddress, _channel, 3, options, metrics, logger);
    }

    private PeerLink(string localNodeId, string remoteNodeId, string meshAddress, GrpcChannel channel, uint stream, MeshOptions options, MeshMetrics metrics, ILogger? logger)
    {
        NodeId = remoteNodeId;
        MeshAddress = meshAddress;
        _channel = channel;
        // The peer logs a broken stream and its reconnect (event 4001) and an ack past what it sent (4002).
        Peer = new MeshPeer(_channel, localNodeId, remoteNodeId, stream, options, this, metrics, logger);
    }

    /// <summary>The replication stream to the same node (stream 1), started on first use; null on that stream itself.</summary>
    public PeerLink? Replication => Started(_replication);

    /// <summary>The forwarding stream to the same node (stream 2: inbox entries for it as a home), started on first use;
    /// null on a stream other than 0.</summary>
    public PeerLink? Forwarding => Started(_forwarding);

    /// <summary>True at most once per <paramref name="interval"/>: whether a diagnostic about this link may be logged now.</summary>
    public bool TryTakeDiagnosticTurn(TimeSpan interval)
    {
        var now = System.Diagnostics.Stopwatch.GetTimestamp();
        var last = Interlocked.Read(ref _lastDiagnostic);
        return (last == 0 || System.Diagnostics.Stopwatch.GetElapsedTime(last, now) >= interval)
            && Interlocked.CompareExchange(ref _lastDiagnostic, now, last) == last;
    }

    /// <summary>The signals stream to the same node (stream 3: posts without an answer, see the constructor), started on
    /// first use; null on a stream other than 0.</summary>
    public PeerLink? Signals => Started(_signals);

    private static PeerLink? Started(PeerLink? stream)
    {
        if (stream is not null && Interlocked.Exchange(ref stream._started, 1) == 0)
        {
            lock (stream._lock)
            {
                if (!stream._disposed)
                {
                    stream.Peer.Start();
                }
            }
        }

        return stream;
    }

    public string NodeId { get; }

    /// <summary>host:port of the remote node's mesh, as the map gave it.</summary>
    public string MeshAddress { get; }

    public MeshPeer Peer { get; }

    /// <summary>Requests waiting for an outcome now.</summary>
    public int PendingCount
    {
        get
        {
            lock (_lock)
            {
                return _pending.Count;
            }
        }
    }

    public void Start() => Peer.Start();

    /// <summary>
    /// Queues an operation and returns its outcome once the remote node has handled it; null when the peer's
    /// queue is full (the caller answers with a retryable error: backpressure).
    /// </summary>
    public Task<MeshReply>? TryRequest(ClusterOpKind kind, ulong epoch, ReadOnlySpan<byte> payload)
    {
        lock (_lock)
        {
            if (_disposed || !Peer.TrySend((uint)kind, epoch, payload, out var id))
            {
                return null;
            }

            var done = new TaskCompletionSource<MeshReply>(TaskCreationOptions.RunContinuationsAsynchronously);
            _pending[id] = done;
            _order.Enqueue(id);
            return done.Task;
        }
    }

    /// <summary>Queues an operation whose outcome nobody waits for (a live delivery, a registration); false when
    /// the queue is full.</summary>
    public bool TryPost(ClusterOpKind kind, ulong epoch, ReadOnlySpan<byte> payload)
    {
        lock (_lock)
        {
            return !_disposed && Peer.TrySend((uint)kind, epoch, payload, out _);
        }
    }

    void IMeshResultHandler.OnResult(MeshPeer peer, in MeshResultView result)
    {
        TaskCompletionSource<MeshReply>? done;
        lock (_lock)
        {
            if (!_pending.Remove(result.Id, out done))
            {
                return; // a posted operation's result, or a request that timed out and was dropped
            }
        }

        done.TrySetResult(new MeshReply(result.Status, result.Reply.IsEmpty ? null : result.Reply.ToArray(), result.Epoch, result.Owner, result.Reason));
    }

    void IMeshResultHandler.OnAcked(MeshPeer peer, ulong ackedThrough, ulong receiverEpoch)
    {
        List<TaskCompletionSource<MeshReply>>? done = null;
        lock (_lock)
        {
            while (_order.Count > 0 && _order.Peek() <= ackedThrough)
            {
                if (_pending.Remove(_order.Dequeue(), out var waiting))
                {
                    (done ??= []).Add(waiting);
                }
            }
        }

        if (done is not null)
        {
            foreach (var waiting in done)
            {
                waiting.TrySetResult(MeshReply.Done);
            }
        }
    }

    void IMeshResultHandler.OnBatchAcked(MeshPeer peer, int messages, TimeSpan latency)
    {
    }

    public async ValueTask DisposeAsync()
    {
        List<TaskCompletionSource<MeshReply>> waiting;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            waiting = [.. _pending.Values];
            _pending.Clear();
            _order.Clear();
        }

        if (_replication is not null)
        {
            await _replication.DisposeAsync().ConfigureAwait(false);
        }

        if (_forwarding is not null)
        {
            await _forwarding.DisposeAsync().ConfigureAwait(false);
        }

        if (_signals is not null)
        {
            await _signals.DisposeAsync().ConfigureAwait(false);
        }

        await Peer.DisposeAsync().ConfigureAwait(false);
        if (_ownsChannel)
        {
            _channel.Dispose();
        }
        foreach (var w in waiting)
        {
            w.TrySetException(new RouteUnavailableException($"the link to node {NodeId} was closed"));
        }
    }
}
