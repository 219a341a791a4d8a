using System.Diagnostics;
using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;
using Xunit.Abstractions;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>
/// The cluster as an operator runs it: three <c>chatbroker serve</c> processes and etcd (<see cref="ThreeNodeCluster"/>,
/// one per class: in network namespaces where possible), devices on real sockets speaking the protocol. Each test
/// picks its own users (a prefix of its own) with the nodes' ring, so where each user's home and each
/// conversation's owner is, is known; the kill test puts the node it killed back before it ends.
/// </summary>
[Collection(ThreeNodeCluster.Collection)]
public sealed class ClusterTests(ThreeNodeCluster cluster, ITestOutputHelper output) : IClassFixture<ThreeNodeCluster>
{
    private static Send Text(ulong clientMsgId, string to, string text) =>
        new() { ClientMsgId = clientMsgId, ToUserId = to, Body = ByteString.CopyFromUtf8(text) };

    [Fact]
    public async Task Alice_on_node1_and_bob_on_node2_exchange_messages_sequenced_by_node3()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("a-alice", "n1");
        var bob = cluster.UserAt("a-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");

        await using var bobPhone = await cluster.LoginAsync(cluster["n2"], bob, "phone");
        await bobPhone.ReceiveAsync<SyncDone>();
        await using var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone");
        await alicePhone.ReceiveAsync<SyncDone>();

        await alicePhone.SendAsync(Text(1, bob, "hello from node1"));
        var sent = await alicePhone.ReceiveAsync<Sent>();
        Assert.Equal((1UL, 1UL), (sent.ClientMsgId, sent.Seq));
        var deliver = await bobPhone.ReceiveAsync<Deliver>();
        Assert.Equal((sent.ConversationId, 1UL, alice, "hello from node1"), (deliver.ConversationId, deliver.Seq, deliver.SenderUserId, deliver.Body.ToStringUtf8()));

        await bobPhone.SendAsync(Text(1, alice, "hello from node2"));
        var reply = await bobPhone.ReceiveAsync<Sent>();
        Assert.Equal((sent.ConversationId, 2UL), (reply.ConversationId, reply.Seq));
        var back = await alicePhone.ReceiveAsync<Deliver>();
        Assert.Equal((2UL, bob, "hello from node2"), (back.Seq, back.SenderUserId, back.Body.ToStringUtf8()));
    }

    [Fact]
    public async Task Bob_offline_then_resuming_on_node3_gets_what_he_missed_in_order_then_live_messages()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("b-alice", "n1");
        var bob = cluster.UserAt("b-bob", "n2");

        await using (var first = await cluster.LoginAsync(cluster["n2"], bob, "phone"))
        {
            await first.ReceiveAsync<SyncDone>();
        }

        await using var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone");
        await alicePhone.ReceiveAsync<SyncDone>();
        for (var i = 1; i <= 3; i++)
        {
            await alicePhone.SendAsync(Text((ulong)i, bob, $"missed {i}"));
            Assert.Equal((ulong)i, (await alicePhone.ReceiveAsync<Sent>()).Seq);
        }

        // Bob comes back at another node than his home's and than the one he left.
        await using var bobPhone = await cluster.LoginAsync(cluster["n3"], bob, "phone");
        var inbox = 0UL;
        for (var i = 1; i <= 3; i++)
        {
            var d = await bobPhone.ReceiveAsync<Deliver>();
            Assert.Equal(((ulong)i, $"missed {i}"), (d.Seq, d.Body.ToStringUtf8()));
            Assert.True(d.InboxSeq > inbox);
            inbox = d.InboxSeq;
        }

        await bobPhone.ReceiveAsync<SyncDone>();
        await bobPhone.SendAsync(new Ack { InboxSeq = inbox });
        await alicePhone.SendAsync(Text(4, bob, "live"));
        Assert.Equal(4UL, (await alicePhone.ReceiveAsync<Sent>()).Seq);
        var live = await bobPhone.ReceiveAsync<Deliver>();
        Assert.Equal((4UL, "live"), (live.Seq, live.Body.ToStringUtf8()));
    }

    [Fact]
    public async Task A_client_msg_id_retried_through_two_other_nodes_is_one_message()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("c-alice", "n1");
        var bob = cluster.UserAt("c-bob", "n3", b => cluster.OwnerOfDirect(alice, b) == "n2");
        await using var bobPhone = await cluster.LoginAsync(cluster["n3"], bob, "phone");
        await bobPhone.ReceiveAsync<SyncDone>();

        Sent? first = null;
        foreach (var gateway in new[] { "n1", "n3" })
        {
            // The same device reconnects elsewhere and sends the same message again, marked DUP after the first.
            await using var alicePhone = await cluster.LoginAsync(cluster[gateway], alice, "phone");
            await alicePhone.ReceiveAsync<SyncDone>();
            await alicePhone.SendAsync(Text(7, bob, "only once"), first is null ? FrameFlags.None : FrameFlags.Dup);
            var sent = await alicePhone.ReceiveAsync<Sent>();
            first ??= sent;
            Assert.Equal((first.ConversationId, first.Seq, 7UL), (sent.ConversationId, sent.Seq, sent.ClientMsgId));
        }

        await using (var alicePhone = await cluster.LoginAsync(cluster["n2"], alice, "phone"))
        {
            await alicePhone.ReceiveAsync<SyncDone>();
            await alicePhone.SendAsync(Text(8, bob, "next"));
            Assert.Equal(first!.Seq + 1, (await alicePhone.ReceiveAsync<Sent>()).Seq);
        }

        var once = await bobPhone.ReceiveAsync<Deliver>();
        var next = await bobPhone.ReceiveAsync<Deliver>();
        Assert.Equal(("only once", 1UL, "next", 2UL), (once.Body.ToStringUtf8(), once.Seq, next.Body.ToStringUtf8(), next.Seq));

        await bobPhone.SendAsync(new History { RequestId = 1, ConversationId = first.ConversationId, Limit = 10 });
        var page = await bobPhone.ReceiveAsync<HistoryPage>();
        Assert.Equal(["only once", "next"], page.Messages.Select(m => m.Body.ToStringUtf8()));
    }

    [Fact]
    public async Task History_is_paged_through_a_node_that_does_not_own_the_conversation()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("d-alice", "n2");
        var bob = cluster.UserAt("d-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        await using var alicePhone = await cluster.LoginAsync(cluster["n2"], alice, "phone");
        await alicePhone.ReceiveAsync<SyncDone>();
        ulong conversation = 0;
        for (var i = 1; i <= 5; i++)
        {
            await alicePhone.SendAsync(Text((ulong)i, bob, $"h{i}"));
            conversation = (await alicePhone.ReceiveAsync<Sent>()).ConversationId;
        }

        await using var bobPhone = await cluster.LoginAsync(cluster["n1"], bob, "tablet");
        await bobPhone.ReceiveAsync<SyncDone>();
        var pages = new List<string[]>();
        var before = 0UL;
        for (var request = 1UL; request <= 5; request++)
        {
            await bobPhone.SendAsync(new History { RequestId = request, ConversationId = conversation, BeforeSeq = before, Limit = 2 });
            var page = await bobPhone.ReceiveAsync<HistoryPage>();
            Assert.Equal(request, page.RequestId);
            pages.Add([.. page.Messages.Select(m => m.Body.ToStringUtf8())]);
            if (!page.More)
            {
                break;
            }

            before = page.Messages[0].Seq;
        }

        Assert.Equal([["h4", "h5"], ["h2", "h3"], ["h1"]], pages);
    }

    [Fact]
    public async Task Cluster_status_lists_the_three_members_live_with_their_addresses()
    {
        output.WriteLine(cluster.Mode);
        var (exit, stdout, stderr) = await BrokerProcess.RunCliAsync(["cluster", "status", .. cluster.CliSettings]);
        Assert.True(exit == 0, stderr);
        Assert.Matches(@"cluster map epoch \d+ .*: 3 members, 3 live; vnodes 128, replication factor 1", stdout);
        foreach (var node in cluster.Nodes)
        {
            Assert.Matches($@"(?m)^{node.Id}\s+Active\s+yes\s+{node.Address}:{node.MeshPort}\s+{node.Address}:{node.TcpPort}\s*$", stdout);
        }
    }

    [Fact]
    public async Task Kill_9_of_a_node_its_ranges_answer_unavailable_others_keep_working_and_after_restart_nothing_acked_is_lost()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("e-alice", "n1");
        var bob = cluster.UserAt("e-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        var carol = cluster.UserAt("e-carol", "n2", c => cluster.OwnerOfDirect(alice, c) != "n3");
        var n1 = cluster["n1"];
        var n3 = cluster["n3"];

        await using var alicePhone = await cluster.LoginAsync(n1, alice, "phone");
        await alicePhone.ReceiveAsync<SyncDone>();
        ulong conversation = 0;
        for (var i = 1; i <= 3; i++)
        {
            await alicePhone.SendAsync(Text((ulong)i, bob, $"acked {i}"));
            var sent = await alicePhone.ReceiveAsync<Sent>();
            Assert.Equal((ulong)i, sent.Seq);
            conversation = sent.ConversationId;
        }

        var mark = n1.Process!.LineCount;
        await cluster.KillAsync(n3);
        try
        {
            await n1.Process.WaitForLineAsync(ThreeNodeCluster.LiveNodes(2), mark).WaitAsync(ThreeNodeCluster.Patience);

            // The dead node's conversation: refused at once with a retry_after, not after the forward timeout.
            var clock = Stopwatch.StartNew();
            await alicePhone.SendAsync(Text(4, bob, "after the crash"));
            var error = await alicePhone.ReceiveAsync<Error>();
            Assert.Equal((ReasonCode.ServerUnavailable, 4UL), (error.Reason, error.RequestId));
            Assert.True(error.RetryAfterMs > 0);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"answered after {clock.Elapsed}");

            // Everything not on n3 goes on.
            await using var carolPhone = await cluster.LoginAsync(cluster["n2"], carol, "phone");
            await carolPhone.ReceiveAsync<SyncDone>();
            await alicePhone.SendAsync(Text(5, carol, "unaffected"));
            Assert.Equal(1UL, (await alicePhone.ReceiveAsync<Sent>()).Seq);
            Assert.Equal("unaffected", (await carolPhone.ReceiveAsync<Deliver>()).Body.ToStringUtf8());
        }
        finally
        {
            mark = n1.Process.LineCount;
            await cluster.StartAsync(n3); // same data directory, ports and id
            await n1.Process.WaitForLineAsync(ThreeNodeCluster.LiveNodes(3), mark).WaitAsync(ThreeNodeCluster.Patience);
        }

        // The device retries (same client_msg_id, DUP). n1 sees n3 live again, and n3's mesh listened before it
        // registered: the forward goes through (within cluster.forward_timeout) and is sequenced after the acked three.
        await alicePhone.SendAsync(Text(4, bob, "after the crash"), FrameFlags.Dup);
        var retried = await alicePhone.ReceiveAsync<Sent>();
        Assert.Equal((conversation, 4UL), (retried.ConversationId, retried.Seq));

        // Nothing n3 acknowledged before the kill is lost: bob reads all four at his home, through n1.
        await using var bobPhone = await cluster.LoginAsync(n1, bob, "phone");
        for (var i = 1; i <= 4; i++)
        {
            var d = await bobPhone.ReceiveAsync<Deliver>();
            Assert.Equal((ulong)i, d.Seq);
            Assert.Equal(i <= 3 ? $"acked {i}" : "after the crash", d.Body.ToStringUtf8());
        }

        // (Entries n3 had not forwarded to bob's home when it was killed come after its restart, catch-up or live.)
        await bobPhone.SendAsync(new History { RequestId = 1, ConversationId = conversation, Limit = 10 });
        var page = await bobPhone.ReceiveAsync<HistoryPage>();
        Assert.Equal([1UL, 2UL, 3UL, 4UL], page.Messages.Select(m => m.Seq));
    }
}
