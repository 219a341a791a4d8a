using System.Collections.Concurrent;
using ChatBroker.Cluster.Mesh.Wire;
using Grpc.Core;

namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// The receiving end of the mesh on one node: the dedupe state of every (origin, stream) link, and the
/// batch handling that <see cref="MeshService"/> (the gRPC adapter) calls for each received batch.
/// </summary>
/// <remarks>
/// Per link it keeps the session of the sender instance and the high-water mark: the highest id handed
/// to the sink. Ids of a session are consecutive, so a message at or below the mark is a resend and is
/// dropped (its cached result, if any, goes back to the sender again); the next id is handed over; a
/// jump past it is a broken sender and fails the stream. A new session (the sender restarted) starts
/// from its first id. The state lives in memory: after this node restarts, a resend can reach the sink
/// again, and the sink's own idempotency (client_msg_id, seq) covers it.
/// </remarks>
public sealed class MeshReceiver
{
    private readonly ConcurrentDictionary<(string Origin, uint Stream), MeshLinkState> _links = new();
    private readonly Lock _linksLock = new();

    public MeshReceiver(string localNodeId, IMeshSink sink, MeshOptions options, MeshMetrics? metrics = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(localNodeId);
        ArgumentNullException.ThrowIfNull(sink);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        LocalNodeId = localNodeId;
        Sink = sink;
        Options = options;
        Metrics = metrics ?? new MeshMetrics();
    }

    public string LocalNodeId { get; }

    public IMeshSink Sink { get; }

    public MeshOptions Options { get; }

    public MeshMetrics Metrics { get; }

    /// <summary>Links with dedupe state now.</summary>
    public int LinkCount => _links.Count;

    /// <summary>Serves one Link call until the origin ends it or it breaks.</summary>
    internal async Task RunLinkAsync(IAsyncStreamReader<MeshBatch> requests, IServerStreamWriter<MeshAck> responses, CancellationToken cancellationToken)
    {
        if (!await requests.MoveNext(cancellationToken).ConfigureAwait(false))
        {
            return;
        }

        var first = requests.Current;
        if (first.Origin.Length == 0 || first.Origin.Length > Options.MaxNodeIdLength)
        {
            throw ProtocolError($"the first batch of a stream must name its origin (1 to {Options.MaxNodeIdLength} characters)");
        }

        var link = GetOrAddLink(first.Origin, first.Stream);
        var inbound = new MeshInboundBatch(Options, first.Origin, first.Stream);
        var session = first.Session;
        var ack = new MeshAck();
        var batch = first;
        while (true)
        {
            if (batch.Origin.Length != 0 && (!string.Equals(batch.Origin, link.Origin, StringComparison.Ordinal) || batch.Stream != link.Stream || batch.Session != session))
            {
                throw ProtocolError("origin, session and stream cannot change within a stream");
            }

            await HandleBatchAsync(link, session, batch, inbound, ack, cancellationToken).ConfigureAwait(false);
            await responses.WriteAsync(ack, cancellationToken).ConfigureAwait(false);
            if (!await requests.MoveNext(cancellationToken).ConfigureAwait(false))
            {
                return;
            }

            batch = requests.Current;
        }
    }

    private async Task HandleBatchAsync(MeshLinkState link, ulong session, MeshBatch batch, MeshInboundBatch inbound, MeshAck ack, CancellationToken cancellationToken)
    {
        var messages = batch.Messages;
        var count = messages.Count;
        if (count == 0 || count > Options.MaxBatchMessages)
        {
            throw ProtocolError($"a batch has 1 to {Options.MaxBatchMessages} messages, not {count}");
        }

        Interlocked.Increment(ref Metrics.BatchesReceived);
        ack.Results.Clear();
        // One batch of a link at a time: a reconnecting origin may have a new stream up while the old one
        // still delivers, and the high-water mark must move in order.
        await link.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!link.HasSession || link.Session != session)
            {
                // A new sender instance: its ids start over. Its first message sets the mark.
                link.Session = session;
                link.HighWater = messages[0].Id - 1;
                link.Results.Clear();
            }

            link.PruneResults(batch.AckSeen);
            var firstId = messages[0].Id;
            for (var i = 0; i < count; i++)
            {
                var m = messages[i];
                if (m.Id != firstId + (ulong)i || m.Id == 0)
                {
                    throw ProtocolError("ids within a batch must be consecutive and above 0");
                }

                if (m.Payload.Length > Options.MaxMessageBytes)
                {
                    throw ProtocolError($"a message has at most {Options.MaxMessageBytes} payload bytes, not {m.Payload.Length}");
                }
            }

            var lastId = firstId + (ulong)count - 1;
            if (firstId > link.HighWater + 1)
            {
                throw ProtocolError($"ids jump from {link.HighWater} to {firstId}");
            }

            // Messages at or below the mark were handed over before: a resend after a lost ack. The ack says
            // "handled through the mark", which may lie beyond this batch (a stale stream handled later batches
            // too), so it carries the cached results up to the mark: an ack never frees an id without its result.
            var duplicates = (int)Math.Min((ulong)count, link.HighWater - firstId + 1);
            if (duplicates > 0)
            {
                Interlocked.Add(ref Metrics.Duplicates, duplicates);
                link.CopyResults(firstId, link.HighWater, ack.Results);
            }

            var fresh = count - duplicates;
            if (fresh > 0)
            {
                inbound.Reset(messages, duplicates, fresh);
                try
                {
                    await Sink.HandleAsync(inbound, cancellationToken).ConfigureAwait(false);
                    link.HighWater = lastId;
                    Interlocked.Add(ref Metrics.MessagesReceived, fresh);
                    for (var i = 0; i < fresh; i++)
                    {
                        if (inbound.ResultAt(i) is { } result)
                        {
                            CountResult(result);
                            ack.Results.Add(result);
                            if (!link.CacheResult(result, Options.MaxCachedResults))
                            {
                                Interlocked.Increment(ref Metrics.ResultsDropped);
                            }
                        }
                    }
                }
                finally
                {
                    inbound.Release();
                }
            }

            ack.AckedThrough = link.HighWater;
            ack.ReceiverEpoch = Sink.CurrentEpoch;
        }
        finally
        {
            link.Gate.Release();
        }
    }

    private void CountResult(MeshResult result)
    {
        if (result.Status == MeshStatus.StaleEpoch)
        {
            Interlocked.Increment(ref Metrics.StaleEpochRefusals);
        }
        else if (result.Status == MeshStatus.Rejected)
        {
            Interlocked.Increment(ref Metrics.Rejections);
        }
    }

    private MeshLinkState GetOrAddLink(string origin, uint stream)
    {
        if (_links.TryGetValue((origin, stream), out var link))
        {
            return link;
        }

        lock (_linksLock)
        {
            if (_links.TryGetValue((origin, stream), out link))
            {
                return link;
            }

            if (_links.Count >= Options.MaxLinks)
            {
                Interlocked.Increment(ref Metrics.LinksRefused);
                throw new RpcException(new Status(StatusCode.ResourceExhausted, $"mesh: {_links.Count} links exist (max_links)"));
            }

            link = new MeshLinkState(origin, stream);
            _links[(origin, stream)] = link;
            return link;
        }
    }

    private RpcException ProtocolError(string reason)
    {
        Interlocked.Increment(ref Metrics.ProtocolErrors);
        return new RpcException(new Status(StatusCode.InvalidArgument, "mesh: " + reason));
    }
}
