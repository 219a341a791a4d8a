using System.Net;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Client.Tests;

/// <summary>
/// A device of a cluster whose node is lost reconnects to another node: one named in CONNACK's cluster_nodes, or one
/// configured as a fallback, and resumes from its cursor there. The nodes are fake servers on 127.0.0.1.
/// </summary>
public sealed class ClusterReconnectTests
{
    private static readonly TimeSpan Timeout = FakeServer.Timeout;

    private static ChatClient NewClient(EndPoint endPoint, params EndPoint[] fallbacks) => new(new ChatClientOptions
    {
        EndPoint = endPoint,
        FallbackEndPoints = fallbacks,
        UserId = "alice",
        DeviceId = "phone",
        TokenProvider = _ => ValueTask.FromResult("token"),
        Reconnect = new ReconnectPolicy(new Random(7)) { InitialDelay = TimeSpan.FromMilliseconds(5), MaxDelay = TimeSpan.FromMilliseconds(20) },
    });

    [Fact]
    public async Task A_device_whose_node_dies_reconnects_to_a_node_from_connack_and_resumes_from_its_cursor()
    {
        var nodeA = new FakeServer();
        using var nodeB = new FakeServer();
        await using var client = NewClient(nodeA.EndPoint);
        var connecting = client.ConnectAsync();
        var first = await nodeA.AcceptAsync();
        var connect = Assert.IsType<Connect>((await first.ReadAsync()).Message);
        Assert.Equal(0UL, connect.ResumeInboxSeq);
        await first.WriteAsync(new Connack
        {
            Reason = ReasonCode.Success,
            KeepaliveS = 60,
            MaxFrameSize = ProtocolConstants.DefaultMaxFrameSize,
            // this node, another one, and an address the client cannot use (skipped)
            ClusterNodes = { nodeA.EndPoint.ToString(), nodeB.EndPoint.ToString(), "not an address" },
        });
        await connecting.WaitAsync(Timeout);
        Assert.Equal([nodeA.EndPoint, nodeB.EndPoint], client.KnownEndPoints);

        await first.WriteAsync(FakeConnection.Deliver(7, 1, 5, "before"), new SyncDone());
        using (var read = new CancellationTokenSource(Timeout))
        {
            Assert.Equal(5UL, (await client.Messages.ReadAsync(read.Token)).InboxSeq);
        }

        // node A dies: its connection is reset and nothing listens there any more.
        nodeA.Dispose();
        await first.DisposeAsync();

        var (second, resumed) = await nodeB.AcceptSessionAsync();
        await using (second)
        {
            Assert.Equal(5UL, resumed.ResumeInboxSeq);
            Assert.Equal(nodeB.EndPoint, client.CurrentEndPoint);
            await second.WriteAsync(FakeConnection.Deliver(7, 2, 6, "after"), new SyncDone());
            using var read = new CancellationTokenSource(Timeout);
            var message = await client.Messages.ReadAsync(read.Token);
            Assert.Equal((2UL, 6UL), (message.Seq, message.InboxSeq));
        }
    }

    [Fact]
    public async Task A_configured_fallback_is_tried_when_the_first_node_cannot_be_reached()
    {
        var dead = new FakeServer();
        var deadEndPoint = dead.EndPoint;
        dead.Dispose(); // nothing listens: connection refused
        using var live = new FakeServer();
        await using var client = NewClient(deadEndPoint, live.EndPoint);

        var connecting = client.ConnectAsync();
        var (connection, _) = await live.AcceptSessionAsync();
        await using (connection)
        {
            await connecting.WaitAsync(Timeout);
            Assert.Equal(live.EndPoint, client.CurrentEndPoint);
            Assert.Equal(ChatConnectionState.Connected, client.State);
        }
    }

    [Theory]
    [InlineData("10.77.0.1:7883", true)]
    [InlineData("[::1]:7883", true)]
    [InlineData("chat-2.example.net:7883", true)]
    [InlineData("chat-2.example.net", false)]
    [InlineData("host:0", false)]
    [InlineData("host:70000", false)]
    [InlineData(":7883", false)]
    [InlineData("a b:7883", false)]
    public void Cluster_node_addresses_are_parsed_or_skipped(string text, bool valid) =>
        Assert.Equal(valid, ChatClient.ParseHostPort(text) is not null);
}
