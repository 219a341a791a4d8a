using System.Diagnostics;
using ChatBroker.Cluster.Mesh.Wire;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// The sending end of one mesh stream: this node → one remote node, stream index <see cref="Stream"/>.
/// Messages are queued (bounded in bytes and count), written in batches of up to max_batch_messages,
/// and kept until the receiver's cumulative ack covers them; after a broken stream the peer reconnects
/// with exponential backoff and writes every unacked message again (the receiver drops the ones it
/// already handled). Order is the order of <see cref="TrySend"/> calls.
/// </summary>
/// <remarks>
/// Queue layout (a ring of entries, ids consecutive from <c>_firstId</c>):
/// <code>
///   _head                 _head+_sent                _head+_count
///     │ written, unacked     │ queued, not yet written  │
///     ├──────────────────────┼──────────────────────────┤
///   _firstId                                       _firstId+_count-1 = last id
/// </code>
/// An ack moves <c>_head</c> (and frees the space senders wait for); a reconnect sets <c>_sent</c> to 0.
/// <c>_lock</c> guards the ring, the counters and the waiters; no await and no callback runs under it.
/// </remarks>
public sealed class MeshPeer : IAsyncDisposable
{
    /// <summary>Size of the slabs queued payloads are copied into (see <see cref="CopyPayload"/>).</summary>
    private const int ChunkBytes = 64 * 1024;

    private readonly MeshOptions _options;
    private readonly Wire.Mesh.MeshClient _client;
    private readonly IMeshResultHandler? _handler;
    private readonly ILogger _logger;
    private readonly ulong _session;

    private readonly Lock _lock = new();
    private readonly Entry[] _entries;
    private readonly BatchStamp[] _stamps;
    private readonly BatchStamp[] _ackedStamps;
    private readonly MeshMessage[] _wireMessages;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<(ulong Id, TaskCompletionSource Done)> _ackWaiters = [];
    private readonly List<PayloadChunk> _releaseAfterWrite = [];
    private readonly Stack<PayloadChunk> _freeChunks = new();
    private PayloadChunk? _chunk;
    private int _head;
    private int _count;
    private int _sent;
    private ulong _firstId = 1;
    private long _bytes;
    private ulong _ackSeen;
    private int _stampHead;
    private int _stampCount;
    private ulong _writingFrom;
    private ulong _writingTo;
    private TaskCompletionSource? _spaceWaiter;
    private TaskCompletionSource? _writerWaiter;
    private CancellationTokenSource? _callCancel;
    private bool _connected;
    private bool _ackedInStream;
    private bool _disposed;
    private Task? _run;

    /// <param name="channel">The channel to the remote node (<see cref="MeshChannel.Create"/>); not owned.</param>
    /// <param name="localNodeId">This node's id: the origin of every message.</param>
    /// <param name="remoteNodeId">The remote node's id (for logs and the broker's bookkeeping).</param>
    /// <param name="stream">The stream index within this node pair; each index has its own order and ids.</param>
    public MeshPeer(GrpcChannel channel, string localNodeId, string remoteNodeId, uint stream, MeshOptions options, IMeshResultHandler? handler = null, MeshMetrics? metrics = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentException.ThrowIfNullOrEmpty(localNodeId);
        ArgumentException.ThrowIfNullOrEmpty(remoteNodeId);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (localNodeId.Length > options.MaxNodeIdLength)
        {
            throw new ArgumentException($"A node id has at most {options.MaxNodeIdLength} characters.", nameof(localNodeId));
        }

        _options = options;
        _client = new Wire.Mesh.MeshClient(channel);
        _handler = handler;
        _logger = logger ?? NullLogger.Instance;
        LocalNodeId = localNodeId;
        RemoteNodeId = remoteNodeId;
        Stream = stream;
        Metrics = metrics ?? new MeshMetrics();
        // A new session per instance: the receiver restarts its dedupe mark when this one appears.
        _session = (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        _entries = new Entry[options.MaxQueueMessages];
        _stamps = new BatchStamp[options.MaxQueueMessages];
        _ackedStamps = new BatchStamp[options.MaxQueueMessages];
        _wireMessages = new MeshMessage[options.MaxBatchMessages];
        for (var i = 0; i < _wireMessages.Length; i++)
        {
            _wireMessages[i] = new MeshMessage();
        }
    }

    public string LocalNodeId { get; }

    public string RemoteNodeId { get; }

    public uint Stream { get; }

    public MeshMetrics Metrics { get; }

    /// <summary>The highest id the receiver has acked (every id up to it is handled).</summary>
    public ulong AckedThrough
    {
        get
        {
            lock (_lock)
            {
                return _firstId - 1;
            }
        }
    }

    /// <summary>Messages held now (queued plus written but unacked).</summary>
    public int QueuedMessages
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>For a diagnosis (a request that got no answer in time): what this stream holds now — written but
    /// unacked, queued and not written yet — how long ago the oldest unacked batch was written, and whether the stream
    /// is up.</summary>
    /// <param name="kindName">Names a message kind for the count of held messages by kind (the broker's operations).</param>
    public string DescribeState(Func<uint, string>? kindName = null)
    {
        lock (_lock)
        {
            var kinds = new SortedDictionary<uint, int>();
            for (var i = 0; i < _count; i++)
            {
                var kind = _entries[(_head + i) % _entries.Length].Kind;
                kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
            }

            var oldest = _stampCount > 0 ? $"{Stopwatch.GetElapsedTime(_stamps[_stampHead].Written).TotalMilliseconds:0} ms ago" : "none";
            return $"stream {Stream} to {RemoteNodeId}: {_sent} written and unacked (oldest written {oldest}), {_count - _sent} queued, " +
                $"acked through id {_firstId - 1}, {(Volatile.Read(ref _connected) ? "connected" : "not connected")}; held by kind: " +
                string.Join(", ", kinds.Select(k => $"{k.Value} {kindName?.Invoke(k.Key) ?? k.Key.ToString(System.Globalization.CultureInfo.InvariantCulture)}"));
        }
    }

    /// <summary>Payload bytes held now; never above max_queue_bytes.</summary>
    public long QueuedBytes
    {
        get
        {
            lock (_lock)
            {
                return _bytes;
            }
        }
    }

    /// <summary>Whether a stream is up and has been acked since it opened.</summary>
    public bool IsConnected => Volatile.Read(ref _connected);

    /// <summary>Starts connecting and sending. Messages sent before this wait in the queue.</summary>
    public void Start()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _run ??= Task.Run(RunAsync);
        }
    }

    /// <summary>
    /// Queues a message if there is room (max_queue_bytes, max_queue_messages) and returns its id in
    /// <paramref name="id"/>; false when the queue is full (the caller waits: <see cref="SendAsync"/>).
    /// The payload is copied.
    /// </summary>
    public bool TrySend(uint kind, ulong epoch, ReadOnlySpan<byte> payload, out ulong id)
    {
        if (payload.Length > _options.MaxMessageBytes)
        {
            throw new ArgumentException($"A mesh message has at most {_options.MaxMessageBytes} payload bytes (max_message_bytes), not {payload.Length}.", nameof(payload));
        }

        TaskCompletionSource? writer;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_count == _entries.Length || _bytes + payload.Length > _options.MaxQueueBytes)
            {
                id = 0;
                return false;
            }

            id = _firstId + (ulong)_count;
            ref var entry = ref _entries[(_head + _count) % _entries.Length];
            entry.Payload = CopyPayload(payload, out entry.Chunk);
            entry.Epoch = epoch;
            entry.Kind = kind;
            _count++;
            _bytes += payload.Length;
            writer = _writerWaiter;
            _writerWaiter = null;
        }

        Metrics.AddQueuedBytes(payload.Length);
        writer?.TrySetResult();
        return true;
    }

    /// <summary>Queues a message, waiting for acks to free room when the queue is full (backpressure;
    /// counted in <see cref="MeshMetricsSnapshot.BackpressureWaits"/>). Returns its id.</summary>
    public ValueTask<ulong> SendAsync(uint kind, ulong epoch, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken = default)
    {
        return TrySend(kind, epoch, payload.Span, out var id) ? ValueTask.FromResult(id) : SendSlowAsync(kind, epoch, payload, cancellationToken);
    }

    /// <summary>Completes when the receiver has acked <paramref name="id"/> (and so every id before it).</summary>
    public Task WhenAckedAsync(ulong id, CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            if (id < _firstId)
            {
                return Task.CompletedTask;
            }

            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _ackWaiters.Add((id, done));
            return done.Task.WaitAsync(cancellationToken);
        }
    }

    /// <summary>Breaks the current stream as a network failure would; the peer reconnects and resends.
    /// For fault tests and for an operator who wants a stream re-established.</summary>
    public void ResetStream()
    {
        CancellationTokenSource? call;
        lock (_lock)
        {
            call = _callCancel;
        }

        try
        {
            call?.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The stream ended on its own meanwhile.
        }
    }

    /// <summary>Stops the peer. Unacked messages are dropped; waiting senders get <see cref="ObjectDisposedException"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        Task? run;
        TaskCompletionSource? space;
        List<(ulong Id, TaskCompletionSource Done)> waiters;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            run = _run;
            space = _spaceWaiter;
            _spaceWaiter = null;
            waiters = [.. _ackWaiters];
            _ackWaiters.Clear();
            Metrics.AddQueuedBytes(-_bytes);
            _bytes = 0;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        space?.TrySetException(new ObjectDisposedException(nameof(MeshPeer)));
        foreach (var (_, done) in waiters)
        {
            done.TrySetException(new ObjectDisposedException(nameof(MeshPeer)));
        }

        if (run is not null)
        {
            await run.ConfigureAwait(false);
        }

        _stop.Dispose();
    }

    private async ValueTask<ulong> SendSlowAsync(uint kind, ulong epoch, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref Metrics.BackpressureWaits);
        while (true)
        {
            Task space;
            lock (_lock)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                if (_count < _entries.Length && _bytes + payload.Length <= _options.MaxQueueBytes)
                {
                    space = Task.CompletedTask;
                }
                else
                {
                    _spaceWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    space = _spaceWaiter.Task;
                }
            }

            await space.WaitAsync(cancellationToken).ConfigureAwait(false);
            if (TrySend(kind, epoch, payload.Span, out var id))
            {
                return id;
            }
        }
    }

    private async Task RunAsync()
    {
        var attempt = 0;
        var first = true;
        while (!_stop.IsCancellationRequested)
        {
            using var callCancel = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            int resend;
            lock (_lock)
            {
                _callCancel = callCancel;
                resend = _sent;
                _sent = 0;
                _stampCount = 0;
            }

            if (!first)
            {
                Interlocked.Increment(ref Metrics.Reconnects);
                Interlocked.Add(ref Metrics.MessagesResent, resend);
            }

            first = false;
            Exception? failure = null;
            Volatile.Write(ref _ackedInStream, false);
            try
            {
                using var call = _client.Link(cancellationToken: callCancel.Token);
                var writer = WriteLoopAsync(call.RequestStream, callCancel.Token);
                var reader = ReadLoopAsync(call.ResponseStream, callCancel.Token);
                // Either loop ending ends the stream: a failed write, a failed read, or the receiver closing.
                await Task.WhenAny(writer, reader).ConfigureAwait(false);
                await callCancel.CancelAsync().ConfigureAwait(false);
                failure = await Outcome(reader).ConfigureAwait(false) ?? await Outcome(writer).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // A peer outlives any failure of one stream: every one ends in a reconnect.
            catch (Exception e)
#pragma warning restore CA1031
            {
                failure = e;
            }
            finally
            {
                Volatile.Write(ref _connected, false);
                lock (_lock)
                {
                    _callCancel = null;
                }
            }

            if (_stop.IsCancellationRequested)
            {
                break;
            }

            attempt = Volatile.Read(ref _ackedInStream) ? 0 : attempt + 1;
            var delay = ReconnectDelay(attempt);
            MeshLog.StreamBroken(_logger, RemoteNodeId, Stream, (int)delay.TotalMilliseconds, QueuedMessages, failure);
            try
            {
                await Task.Delay(delay, _stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    /// <summary>0 after a stream that got acks (reconnect at once: the link was fine), then the initial
    /// delay doubling per failed attempt up to the maximum, with jitter so peers do not reconnect in step.</summary>
    private TimeSpan ReconnectDelay(int attempt)
    {
        if (attempt == 0)
        {
            return TimeSpan.Zero;
        }

        var ms = Math.Min(_options.ReconnectMaxDelay.TotalMilliseconds, _options.ReconnectInitialDelay.TotalMilliseconds * Math.Pow(2, Math.Min(attempt - 1, 30)));
        return TimeSpan.FromMilliseconds(ms * (0.5 + (Random.Shared.NextDouble() * 0.5)));
    }

    private async Task WriteLoopAsync(IClientStreamWriter<MeshBatch> requests, CancellationToken cancellationToken)
    {
        // The header goes in the first batch of a stream only; later batches leave it empty.
        var batch = new MeshBatch { Origin = LocalNodeId, Session = _session, Stream = Stream };
        var wire = _wireMessages;
        while (true)
        {
            Task? wait = null;
            int taken;
            long bytes = 0;
            lock (_lock)
            {
                var available = _count - _sent;
                if (available == 0)
                {
                    _writerWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    wait = _writerWaiter.Task;
                    taken = 0;
                }
                else
                {
                    taken = 0;
                    var firstId = _firstId + (ulong)_sent;
                    while (taken < available && taken < wire.Length)
                    {
                        ref var entry = ref _entries[(_head + _sent + taken) % _entries.Length];
                        if (taken > 0 && bytes + entry.Payload.Length > _options.MaxBatchBytes)
                        {
                            break;
                        }

                        var m = wire[taken];
                        m.Id = firstId + (ulong)taken;
                        m.Epoch = entry.Epoch;
                        m.Kind = entry.Kind;
                        m.Payload = entry.Payload;
                        bytes += entry.Payload.Length;
                        taken++;
                    }

                    _sent += taken;
                    // An ack may free these entries while the write still reads their buffers (when it
                    // covers messages an earlier stream delivered): Release defers their return.
                    _writingFrom = firstId;
                    _writingTo = firstId + (ulong)taken - 1;
                    ref var stamp = ref _stamps[(_stampHead + _stampCount) % _stamps.Length];
                    stamp = new BatchStamp(firstId + (ulong)taken - 1, taken, Stopwatch.GetTimestamp());
                    _stampCount++;
                }
            }

            if (wait is not null)
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
                continue;
            }

            batch.Messages.Clear();
            for (var i = 0; i < taken; i++)
            {
                batch.Messages.Add(wire[i]);
            }

            batch.AckSeen = Volatile.Read(ref _ackSeen);
            try
            {
                await requests.WriteAsync(batch, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                EndWrite();
            }

            Interlocked.Increment(ref Metrics.BatchesSent);
            Interlocked.Add(ref Metrics.MessagesSent, taken);
            Interlocked.Add(ref Metrics.BytesSent, bytes);
            if (batch.Origin.Length != 0)
            {
                batch.Origin = string.Empty;
                batch.Session = 0;
                batch.Stream = 0;
            }
        }
    }

    /// <summary>
    /// Copies a payload into the current chunk (under <c>_lock</c>) and wraps it without a second copy.
    /// Acks free messages in the order they were queued, so chunks empty in order too and a few of them,
    /// reused, hold the whole queue: no allocation per message but the <see cref="ByteString"/> wrapper.
    /// A payload over a quarter of a chunk gets its own array.
    /// </summary>
    private ByteString CopyPayload(ReadOnlySpan<byte> payload, out PayloadChunk? chunk)
    {
        if (payload.Length > ChunkBytes / 4)
        {
            chunk = null;
            return ByteString.CopyFrom(payload);
        }

        chunk = _chunk;
        if (chunk is null || chunk.Used + payload.Length > ChunkBytes)
        {
            if (chunk is not null && chunk.Live == 0)
            {
                chunk.Used = 0;
                _freeChunks.Push(chunk);
            }

            chunk = _freeChunks.Count > 0 ? _freeChunks.Pop() : new PayloadChunk();
            _chunk = chunk;
        }

        var memory = chunk.Bytes.AsMemory(chunk.Used, payload.Length);
        payload.CopyTo(memory.Span);
        chunk.Used += payload.Length;
        chunk.Live++;
        return UnsafeByteOperations.UnsafeWrap(memory);
    }

    /// <summary>One payload of <paramref name="chunk"/> is acked (under <c>_lock</c>); an empty chunk that is
    /// no longer being filled is kept for reuse, up to what the queue bound can fill.</summary>
    private void ReleaseChunk(PayloadChunk chunk)
    {
        if (--chunk.Live == 0 && chunk != _chunk)
        {
            chunk.Used = 0;
            if (_freeChunks.Count < (_options.MaxQueueBytes / ChunkBytes) + 1)
            {
                _freeChunks.Push(chunk);
            }
        }
    }

    /// <summary>The write of the batch is over: chunks freed meanwhile can be reused now.</summary>
    private void EndWrite()
    {
        lock (_lock)
        {
            _writingFrom = 0;
            _writingTo = 0;
            foreach (var chunk in _releaseAfterWrite)
            {
                ReleaseChunk(chunk);
            }

            _releaseAfterWrite.Clear();
        }
    }

    /// <summary>Reads acks until the stream ends.</summary>
    private async Task ReadLoopAsync(IAsyncStreamReader<MeshAck> acks, CancellationToken cancellationToken)
    {
        while (await acks.MoveNext(cancellationToken).ConfigureAwait(false))
        {
            var ack = acks.Current;
            if (!Volatile.Read(ref _ackedInStream))
            {
                Volatile.Write(ref _ackedInStream, true);
                Volatile.Write(ref _connected, true);
            }

            var results = ack.Results;
            // A resent batch's ack may repeat results an earlier ack already carried (with the ack that freed
            // their ids); each result reaches the handler once.
            var alreadyAcked = results.Count > 0 ? AckedThrough : 0;
            for (var i = 0; i < results.Count; i++)
            {
                var r = results[i];
                if (r.Id <= alreadyAcked)
                {
                    continue;
                }

                Interlocked.Increment(ref Metrics.ResultsReceived);
                _handler?.OnResult(this, new MeshResultView(r.Id, r.Status, r.Reply.Memory, r.Epoch, r.Owner, r.Reason));
            }

            Release(ack.AckedThrough, ack.ReceiverEpoch);
        }
    }

    /// <summary>The failure a finished loop ended with, if any (cancellation after the other loop ended is none).</summary>
    private static async Task<Exception?> Outcome(Task loop)
    {
        try
        {
            await loop.ConfigureAwait(false);
            return null;
        }
        catch (OperationCanceledException)
        {
            return null;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled)
        {
            return null;
        }
#pragma warning disable CA1031 // Whatever broke the stream is logged and answered by a reconnect.
        catch (Exception e)
#pragma warning restore CA1031
        {
            return e;
        }
    }

    /// <summary>Frees every entry up to <paramref name="ackedThrough"/> and wakes what waits for it.</summary>
    private void Release(ulong ackedThrough, ulong receiverEpoch)
    {
        TaskCompletionSource? space = null;
        List<TaskCompletionSource>? done = null;
        int released;
        int stamps;
        long bytes = 0;
        lock (_lock)
        {
            var last = _firstId + (ulong)_count - 1;
            if (ackedThrough > last)
            {
                // The receiver claims to have handled messages that do not exist: a broken peer. The stream
                // is reset; the next one starts from what is really unacked.
                Interlocked.Increment(ref Metrics.ProtocolErrorsSent);
                MeshLog.AckPastSent(_logger, RemoteNodeId, Stream, ackedThrough, last);
                throw new InvalidOperationException($"mesh: ack {ackedThrough} past the last id {last}");
            }

            if (ackedThrough < _firstId)
            {
                return;
            }

            released = (int)(ackedThrough - _firstId + 1);
            for (var i = 0; i < released; i++)
            {
                ref var entry = ref _entries[(_head + i) % _entries.Length];
                bytes += entry.Payload.Length;
                var id = _firstId + (ulong)i;
                if (entry.Chunk is { } chunk)
                {
                    if (id >= _writingFrom && id <= _writingTo)
                    {
                        _releaseAfterWrite.Add(chunk);
                    }
                    else
                    {
                        ReleaseChunk(chunk);
                    }
                }

                entry = default;
            }

            _head = (_head + released) % _entries.Length;
            _count -= released;
            // An ack can cover messages of an earlier stream that this one has not written again yet.
            _sent = Math.Max(0, _sent - released);
            _firstId = ackedThrough + 1;
            _bytes -= bytes;
            Volatile.Write(ref _ackSeen, ackedThrough);
            stamps = 0;
            while (_stampCount > 0 && _stamps[_stampHead].LastId <= ackedThrough)
            {
                _ackedStamps[stamps++] = _stamps[_stampHead];
                _stampHead = (_stampHead + 1) % _stamps.Length;
                _stampCount--;
            }

            space = _spaceWaiter;
            _spaceWaiter = null;
            for (var i = _ackWaiters.Count - 1; i >= 0; i--)
            {
                if (_ackWaiters[i].Id <= ackedThrough)
                {
                    (done ??= []).Add(_ackWaiters[i].Done);
                    _ackWaiters.RemoveAt(i);
                }
            }
        }

        Metrics.AddQueuedBytes(-bytes);
        Interlocked.Add(ref Metrics.MessagesAcked, released);
        space?.TrySetResult();
        if (done is not null)
        {
            foreach (var d in done)
            {
                d.TrySetResult();
            }
        }

        if (_handler is not null)
        {
            var now = Stopwatch.GetTimestamp();
            for (var i = 0; i < stamps; i++)
            {
                _handler.OnBatchAcked(this, _ackedStamps[i].Messages, Stopwatch.GetElapsedTime(_ackedStamps[i].Written, now));
            }

            _handler.OnAcked(this, ackedThrough, receiverEpoch);
        }
    }

    private struct Entry
    {
        public ByteString Payload;
        public PayloadChunk? Chunk;
        public ulong Epoch;
        public uint Kind;
    }

    /// <summary>A slab that payloads are copied into one after another; reused once every payload in it is acked.</summary>
    private sealed class PayloadChunk
    {
        public readonly byte[] Bytes = new byte[ChunkBytes];
        public int Used;
        public int Live;
    }

    private readonly record struct BatchStamp(ulong LastId, int Messages, long Written);
}
