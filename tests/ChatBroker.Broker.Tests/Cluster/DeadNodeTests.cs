using System.Diagnostics;
using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// A node whose lease is gone (crashed: its registration went with it) stays in the map with its ranges. The other
/// nodes answer operations that need it at once with SERVER_UNAVAILABLE and retry_after, not after the forward
/// timeout (30 s here, so a fast answer cannot be the timeout); everything else goes on; when it is back, what was
/// queued for it arrives and the retried operations succeed.
/// </summary>
public sealed class DeadNodeTests
{
    private static readonly ClusterRoutingOptions Routing = new()
    {
        ForwardTimeout = TimeSpan.FromSeconds(30),
        RetryAfter = TimeSpan.FromMilliseconds(250),
        Mesh = new MeshOptions { MaxReplyBytes = 256 * 1024, ReconnectMaxDelay = TimeSpan.FromMilliseconds(200) },
    };

    [Fact]
    public async Task Operations_of_a_dead_nodes_ranges_are_refused_at_once_others_go_on_and_queued_entries_arrive_when_it_is_back()
    {
        await using var cluster = await ClusterHarness.StartAsync(3, Routing);
        var aliceId = cluster.UserAt("alice", "node1");
        // bob: the conversation with alice is owned by the node that dies.
        var bobId = cluster.UserAt("bob", "node2", b => cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(aliceId, b)) == "node3");
        // carol: nothing of hers or of her conversation with alice is on node3.
        var carolId = cluster.UserAt("carol", "node2", c => cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(aliceId, c)) != "node3");
        // dave: his home dies, his conversation with alice is owned by a live node.
        var daveId = cluster.UserAt("dave", "node3", d => cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(aliceId, d)) != "node3");
        var daveOwner = cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(aliceId, daveId));

        var bob = await cluster["node2"].ConnectAsync(bobId, "phone");
        await bob.ExpectAsync<SyncDone>();
        var carol = await cluster["node2"].ConnectAsync(carolId, "phone");
        await carol.ExpectAsync<SyncDone>();
        var alice = await cluster["node1"].ConnectAsync(aliceId, "phone");
        await alice.ExpectAsync<SyncDone>();

        await cluster.KillAsync("node3");
        await cluster.WaitForLivenessAsync("node1", "node3", live: false);
        await cluster.WaitForLivenessAsync("node2", "node3", live: false);

        // The owner is down: answered at once, and nothing is queued for it.
        var clock = Stopwatch.StartNew();
        await alice.SendAsync(TestDevice.Text(1, bobId, "while node3 is down"));
        var error = await alice.ExpectAsync<Error>();
        Assert.Equal((ReasonCode.ServerUnavailable, 1UL, 250UL), (error.Reason, error.RequestId, error.RetryAfterMs));
        Assert.Contains("node3", error.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"answered after {clock.Elapsed}");
        Assert.Equal(0, cluster["node1"].Cluster.LinkTo("node3")!.PendingCount);
        Assert.Equal(1, cluster["node1"].Cluster.Metrics.Snapshot().SendsAnsweredUnavailable);

        // History of a conversation the dead node owns: refused at once, through any node.
        clock.Restart();
        var conversation = ClusterOps.DirectConversationId(aliceId, bobId);
        await bob.SendAsync(new History { RequestId = 7, ConversationId = conversation, Limit = 10 });
        var historyError = await bob.ExpectAsync<Error>();
        Assert.Equal((ReasonCode.ServerUnavailable, 7UL), (historyError.Reason, historyError.RequestId));
        Assert.True(historyError.RetryAfterMs > 0);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"answered after {clock.Elapsed}");

        // A device whose home is down cannot catch up: its session ends at once with SERVER_UNAVAILABLE.
        var daveAtNode1 = await cluster["node1"].ConnectAsync(daveId, "tablet");
        var ended = await daveAtNode1.ReadToEndAsync();
        Assert.Contains(ended, m => m is Disconnect { Reason: ReasonCode.ServerUnavailable });

        // Other ranges are unaffected: alice and carol, both live.
        await alice.SendAsync(TestDevice.Text(2, carolId, "to carol"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        var deliver = await carol.ExpectAsync<Deliver>();
        Assert.Equal(("to carol", 1UL), (deliver.Body.ToStringUtf8(), deliver.Seq));

        // A live owner acknowledges a message for dave; its entry waits in the forward queue to dave's home.
        await alice.SendAsync(TestDevice.Text(3, daveId, "to dave"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(1UL, cluster[daveOwner].Cluster.ForwardBacklog("node3"));

        // node3 is back: the queued entry reaches dave's home, the retried SEND is sequenced once.
        await cluster.ReviveAsync("node3");
        await cluster.WaitForLivenessAsync("node1", "node3", live: true);
        await cluster.WaitForLivenessAsync(daveOwner, "node3", live: true);
        using (var timeout = new CancellationTokenSource(TestDevice.Timeout))
        {
            await cluster[daveOwner].Cluster.WhenForwardedAsync("node3", timeout.Token);
        }

        var dave = await cluster["node3"].ConnectAsync(daveId, "phone");
        var caughtUp = await dave.ExpectAsync<Deliver>();
        Assert.Equal(("to dave", 1UL), (caughtUp.Body.ToStringUtf8(), caughtUp.Seq));
        await dave.ExpectAsync<SyncDone>();

        await alice.SendAsync(TestDevice.Text(1, bobId, "while node3 is down"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        var toBob = await bob.ExpectAsync<Deliver>();
        Assert.Equal(("while node3 is down", 1UL), (toBob.Body.ToStringUtf8(), toBob.Seq));
        Assert.Equal(1UL, cluster["node3"].Broker.Store.GetLastSeq(conversation));
    }
}
