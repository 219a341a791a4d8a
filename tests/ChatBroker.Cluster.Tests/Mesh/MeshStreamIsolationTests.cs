using System.Net;
using ChatBroker.Cluster.Mesh;

namespace ChatBroker.Cluster.Tests.Mesh;

/// <summary>
/// The three streams of a node pair (0: routed operations, 1: replication, 2: forward queues) share one HTTP/2
/// connection. A receiver reads a stream's next batch only when it has handled the previous one, so a stream whose
/// receiver is behind keeps its data unread at the server, and unread data holds the connection's flow-control window
/// as well as the stream's. With a connection window below the streams' windows together, two streams that are behind
/// took all of it and the third could not send a byte: the checker saw one gateway's SENDs to one owner time out for
/// tens of seconds under load (seeds 205, 301) while that owner served everyone else.
/// </summary>
public sealed class MeshStreamIsolationTests
{
    /// <summary>Holds every batch of streams 1 and 2 until released; signals stream 0's first batch.</summary>
    private sealed class BehindOnTwoStreams : IMeshSink
    {
        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource StreamZero { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ulong CurrentEpoch => 1;

        public async ValueTask HandleAsync(MeshInboundBatch batch, CancellationToken cancellationToken)
        {
            if (batch.Stream == 0)
            {
                StreamZero.TrySetResult();
                return;
            }

            await Release.Task.WaitAsync(cancellationToken);
        }
    }

    [Fact]
    public async Task Two_streams_whose_receiver_is_behind_leave_the_third_stream_of_the_connection_free()
    {
        var options = new MeshOptions();
        var sink = new BehindOnTwoStreams();
        await using var server = await MeshServer.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), new MeshReceiver("b", sink, options));
        using var channel = MeshChannel.Create(server.Address, options);
        var replication = new MeshPeer(channel, "a", "b", 1, options);
        var forwarding = new MeshPeer(channel, "a", "b", 2, options);
        var routed = new MeshPeer(channel, "a", "b", 0, options);
        try
        {
            replication.Start();
            forwarding.Start();
            routed.Start();

            // As much as each queue holds (max_queue_bytes): far more than the server reads while it is behind.
            var payload = new byte[100 * 1024];
            while (replication.TrySend(1, 1, payload, out _) | forwarding.TrySend(1, 1, payload, out _))
            {
            }

            // Until both have written what the windows let through (the writes wait for flow control past that).
            var windowBytes = 7L * 1024 * 1024;
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (replication.Metrics.Snapshot().BytesSent + forwarding.Metrics.Snapshot().BytesSent < windowBytes)
            {
                Assert.True(DateTime.UtcNow < deadline, "streams 1 and 2 never wrote what the HTTP/2 windows allow");
                await Task.Delay(10);
            }

            Assert.True(routed.TrySend(1, 1, "a routed SEND"u8, out _));
            var first = await Task.WhenAny(sink.StreamZero.Task, Task.Delay(TimeSpan.FromSeconds(10)));
            Assert.True(first == sink.StreamZero.Task, "stream 0 waited behind streams 1 and 2: they hold the connection's window");
        }
        finally
        {
            sink.Release.TrySetResult();
            await routed.DisposeAsync();
            await forwarding.DisposeAsync();
            await replication.DisposeAsync();
        }
    }
}
