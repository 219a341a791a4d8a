using System.Collections.Concurrent;
using System.Net;
using System.Threading.Channels;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Cluster.Mesh.Wire;
using Grpc.Net.Client;

namespace ChatBroker.Cluster.Tests.Mesh;

/// <summary>A message as a <see cref="RecordingSink"/> saw it.</summary>
internal readonly record struct Received(string Origin, uint Stream, ulong Id, ulong Epoch, uint Kind, byte[] Payload);

/// <summary>
/// A sink that records what it handles and can be told to hold batches, refuse stale epochs, answer
/// requests, or run a hook on a message (to break the stream at a chosen point).
/// </summary>
internal sealed class RecordingSink : IMeshSink
{
    public const uint RequestKind = 2;

    private readonly List<Received> _received = [];
    private readonly Lock _lock = new();
    private TaskCompletionSource? _gate;

    public ulong CurrentEpoch { get; set; } = 1;

    /// <summary>Messages with an epoch below <see cref="CurrentEpoch"/> are refused naming this owner.</summary>
    public string? OwnerForStaleEpochs { get; set; }

    /// <summary>Called for each message before it is recorded.</summary>
    public Action<MeshInboundMessage>? OnMessage { get; set; }

    /// <summary>Completes when a batch is waiting at the gate.</summary>
    public TaskCompletionSource BatchHeld { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Signals the count of recorded messages each time it changes.</summary>
    public Channel<int> Progress { get; } = Channel.CreateUnbounded<int>();

    public void Hold() => _gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Release() => _gate?.TrySetResult();

    public Received[] Snapshot()
    {
        lock (_lock)
        {
            return [.. _received];
        }
    }

    public async ValueTask HandleAsync(MeshInboundBatch batch, CancellationToken cancellationToken)
    {
        if (_gate is { } gate)
        {
            BatchHeld.TrySetResult();
            await gate.Task.WaitAsync(cancellationToken);
        }

        int count;
        lock (_lock)
        {
            for (var i = 0; i < batch.Count; i++)
            {
                var m = batch[i];
                OnMessage?.Invoke(m);
                if (OwnerForStaleEpochs is { } owner && m.Epoch < CurrentEpoch)
                {
                    batch.RefuseStaleEpoch(i, CurrentEpoch, owner);
                    continue;
                }

                if (m.Kind == RequestKind)
                {
                    batch.Reply(i, [.. "re:"u8, .. m.Payload.Span]);
                }

                _received.Add(new Received(batch.Origin, batch.Stream, m.Id, m.Epoch, m.Kind, m.Payload.ToArray()));
            }

            count = _received.Count;
        }

        Progress.Writer.TryWrite(count);
    }

    /// <summary>Waits (bounded) until at least <paramref name="count"/> messages are recorded.</summary>
    public async Task WaitForAsync(int count, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        lock (_lock)
        {
            if (_received.Count >= count)
            {
                return;
            }
        }

        while (await Progress.Reader.ReadAsync(cts.Token) < count)
        {
        }
    }
}

/// <summary>Records results and batch acks a peer reports.</summary>
internal sealed class RecordingResults : IMeshResultHandler
{
    public ConcurrentQueue<(ulong Id, MeshStatus Status, byte[] Reply, ulong Epoch, string Owner, uint Reason)> Results { get; } = new();

    public ConcurrentQueue<TimeSpan> BatchLatencies { get; } = new();

    public ulong LastReceiverEpoch { get; private set; }

    public void OnResult(MeshPeer peer, in MeshResultView result) =>
        Results.Enqueue((result.Id, result.Status, result.Reply.ToArray(), result.Epoch, result.Owner, result.Reason));

    public void OnAcked(MeshPeer peer, ulong ackedThrough, ulong receiverEpoch) => LastReceiverEpoch = receiverEpoch;

    public void OnBatchAcked(MeshPeer peer, int messages, TimeSpan latency) => BatchLatencies.Enqueue(latency);
}

/// <summary>One in-process node: a Kestrel mesh server on 127.0.0.1:0 with its sink.</summary>
internal sealed class MeshTestNode : IAsyncDisposable
{
    private readonly List<IAsyncDisposable> _owned = [];

    private MeshTestNode(string id, MeshServer server, RecordingSink sink, MeshOptions options)
    {
        Id = id;
        Server = server;
        Sink = sink;
        Options = options;
    }

    public string Id { get; }

    public MeshServer Server { get; }

    public RecordingSink Sink { get; }

    public MeshOptions Options { get; }

    public MeshMetrics ReceiverMetrics => Server.Receiver.Metrics;

    public static async Task<MeshTestNode> StartAsync(string id, MeshOptions? options = null, int port = 0)
    {
        options ??= new MeshOptions();
        var sink = new RecordingSink();
        var server = await MeshServer.StartAsync(new IPEndPoint(IPAddress.Loopback, port), new MeshReceiver(id, sink, options));
        return new MeshTestNode(id, server, sink, options);
    }

    /// <summary>A started peer from this node to <paramref name="remote"/>; disposed with this node.</summary>
    public MeshPeer ConnectTo(MeshTestNode remote, IMeshResultHandler? results = null, uint stream = 0, MeshOptions? options = null)
    {
        var o = options ?? Options;
        var channel = MeshChannel.Create(remote.Server.Address, o);
        var peer = new MeshPeer(channel, Id, remote.Id, stream, o, results);
        // Disposed in reverse: the peer before its channel.
        _owned.Add(new ChannelOwner(channel));
        _owned.Add(peer);
        peer.Start();
        return peer;
    }

    /// <summary>Stops the server only, as a crash of the receiving side would; peers of this node keep running.</summary>
    public ValueTask StopServerAsync() => Server.DisposeAsync();

    public async ValueTask DisposeAsync()
    {
        for (var i = _owned.Count - 1; i >= 0; i--)
        {
            await _owned[i].DisposeAsync();
        }

        await Server.DisposeAsync();
    }

    private sealed class ChannelOwner(GrpcChannel channel) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            channel.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
