using ChatBroker.Cluster.Mesh;
using ChatBroker.Cluster.Mesh.Wire;
using Google.Protobuf;
using Grpc.Core;

namespace ChatBroker.Cluster.Tests.Mesh;

/// <summary>The receiver against a plain generated gRPC client that breaks the rules on purpose.</summary>
public sealed class MeshReceiverTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private static MeshMessage Message(ulong id, int size = 4) => new() { Id = id, Epoch = 1, Kind = 1, Payload = ByteString.CopyFrom(new byte[size]) };

    private static async Task<RpcException> ExpectStreamFailureAsync(MeshTestNode node, params MeshBatch[] batches)
    {
        using var channel = MeshChannel.Create(node.Server.Address, node.Options);
        var client = new ChatBroker.Cluster.Mesh.Wire.Mesh.MeshClient(channel);
        using var call = client.Link();
        return await Assert.ThrowsAsync<RpcException>(async () =>
        {
            foreach (var batch in batches)
            {
                await call.RequestStream.WriteAsync(batch);
            }

            while (await call.ResponseStream.MoveNext(CancellationToken.None).WaitAsync(Timeout))
            {
            }
        });
    }

    [Fact]
    public async Task A_resent_batch_behind_the_mark_gets_every_result_its_ack_frees()
    {
        // A stale stream handled [1, 2] and [3, 4], but its acks were lost. The new stream resends [1, 2]: the ack
        // says "handled through 4", so it must carry the results of 3 and 4 too, or the sender frees them without.
        await using var b = await MeshTestNode.StartAsync("node-b");
        using var channel = MeshChannel.Create(b.Server.Address, b.Options);
        var client = new ChatBroker.Cluster.Mesh.Wire.Mesh.MeshClient(channel);
        static MeshMessage Request(ulong id) => new() { Id = id, Epoch = 1, Kind = RecordingSink.RequestKind, Payload = ByteString.CopyFrom([(byte)id]) };
        using (var stale = client.Link())
        {
            await stale.RequestStream.WriteAsync(new MeshBatch { Origin = "x", Session = 9, Stream = 0, Messages = { Request(1), Request(2) } });
            await stale.RequestStream.WriteAsync(new MeshBatch { Messages = { Request(3), Request(4) } });
            for (var acks = 0; acks < 2; acks++)
            {
                Assert.True(await stale.ResponseStream.MoveNext(CancellationToken.None).WaitAsync(Timeout));
            }
        }

        using var fresh = client.Link();
        await fresh.RequestStream.WriteAsync(new MeshBatch { Origin = "x", Session = 9, Stream = 0, Messages = { Request(1), Request(2) } });
        Assert.True(await fresh.ResponseStream.MoveNext(CancellationToken.None).WaitAsync(Timeout));
        var ack = fresh.ResponseStream.Current;
        Assert.Equal(4UL, ack.AckedThrough);
        Assert.Equal([1UL, 2UL, 3UL, 4UL], ack.Results.Select(r => r.Id).ToArray());
        Assert.Equal(4, b.Sink.Snapshot().Length);
    }

    [Fact]
    public async Task A_gap_in_ids_fails_the_stream()
    {
        await using var b = await MeshTestNode.StartAsync("node-b");
        var e = await ExpectStreamFailureAsync(b,
            new MeshBatch { Origin = "x", Session = 9, Messages = { Message(1), Message(2) } },
            new MeshBatch { Messages = { Message(5) } });
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("jump", e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(2, b.Sink.Snapshot().Length);
        Assert.Equal(1, b.ReceiverMetrics.Snapshot().ProtocolErrors);
    }

    [Fact]
    public async Task A_batch_over_the_message_count_fails_the_stream()
    {
        await using var b = await MeshTestNode.StartAsync("node-b", new MeshOptions { MaxBatchMessages = 4, MaxQueueMessages = 64, MaxCachedResults = 64 });
        var batch = new MeshBatch { Origin = "x", Session = 9 };
        for (ulong i = 1; i <= 5; i++)
        {
            batch.Messages.Add(Message(i));
        }

        var e = await ExpectStreamFailureAsync(b, batch);
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Empty(b.Sink.Snapshot());
    }

    [Fact]
    public async Task An_oversized_message_fails_the_stream()
    {
        await using var b = await MeshTestNode.StartAsync("node-b", new MeshOptions { MaxMessageBytes = 100, MaxBatchBytes = 100 });
        var e = await ExpectStreamFailureAsync(b, new MeshBatch { Origin = "x", Session = 9, Messages = { Message(1, 101) } });
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Empty(b.Sink.Snapshot());
    }

    [Fact]
    public async Task A_stream_without_an_origin_fails()
    {
        await using var b = await MeshTestNode.StartAsync("node-b");
        var e = await ExpectStreamFailureAsync(b, new MeshBatch { Messages = { Message(1) } });
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
    }

    [Fact]
    public async Task Links_past_the_bound_are_refused()
    {
        await using var b = await MeshTestNode.StartAsync("node-b", new MeshOptions { MaxLinks = 1 });
        using var channel = MeshChannel.Create(b.Server.Address, b.Options);
        var client = new ChatBroker.Cluster.Mesh.Wire.Mesh.MeshClient(channel);
        using (var call = client.Link())
        {
            await call.RequestStream.WriteAsync(new MeshBatch { Origin = "x", Session = 1, Messages = { Message(1) } });
            Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None).WaitAsync(Timeout));
            Assert.Equal(1UL, call.ResponseStream.Current.AckedThrough);
        }

        var e = await ExpectStreamFailureAsync(b, new MeshBatch { Origin = "y", Session = 1, Messages = { Message(1) } });
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(1, b.ReceiverMetrics.Snapshot().LinksRefused);
    }
}
