using System.Text;
using ChatBroker.Client;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;
using Xunit.Abstractions;
using static ChatBroker.EndToEnd.Tests.Cluster.ClusterPackets;
using ReceiptKind = ChatBroker.Protocol.Messages.ReceiptKind;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>
/// The one-to-one scenarios of the single-node suite (MessagingTests, ClientSdkTests) on three real nodes: the
/// sender's home, the recipient's home and the conversation's owner are three different nodes, and devices connect
/// at nodes other than their homes, so every message, ACK and receipt crosses the mesh.
/// </summary>
[Collection(ThreeNodeCluster.Collection)]
public sealed class ClusterMessagingTests(ThreeNodeCluster cluster, ITestOutputHelper output) : IClassFixture<ThreeNodeCluster>
{
    [Fact]
    public async Task Alice_sends_200_messages_to_bob_at_another_node_in_order_with_live_receipts_and_her_device_at_a_third_node_sees_them()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("m1-alice", "n1");
        var bob = cluster.UserAt("m1-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        await using var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone");
        await using var aliceLaptop = await cluster.LoginAsync(cluster["n3"], alice, "laptop");
        await using var bobPhone = await cluster.LoginAsync(cluster["n2"], bob, "phone");
        await bobPhone.ReceiveAsync<SyncDone>();
        await aliceLaptop.ReceiveAsync<SyncDone>();
        const int count = 200;

        await SendManyAsync(alicePhone, Enumerable.Range(1, count).Select(i => Text((ulong)i, bob, "message " + i)));
        var sent = new List<Sent>();
        while (sent.Count < count)
        {
            var s = await alicePhone.ReceiveAsync<Sent>();
            // SENTs come back in the order of the SENDs, also when the owner is another node.
            Assert.Equal(((ulong)sent.Count + 1, (ulong)sent.Count + 1), (s.ClientMsgId, s.Seq));
            sent.Add(s);
        }

        var conversation = sent[0].ConversationId;
        ulong lastInbox = 0;
        for (var i = 1; i <= count; i++)
        {
            var d = await bobPhone.ReceiveAsync<Deliver>();
            Assert.Equal((conversation, (ulong)i, "message " + i, alice), (d.ConversationId, d.Seq, d.Body.ToStringUtf8(), d.SenderUserId));
            Assert.True(d.InboxSeq > lastInbox);
            lastInbox = d.InboxSeq;
        }

        for (var i = 1; i <= count; i++)
        {
            var d = await aliceLaptop.ReceiveAsync<Deliver>();
            Assert.Equal(((ulong)i, (ulong)i), (d.Seq, d.ClientMsgId)); // her own message, matched to its client id
        }

        // ACK at n2 (bob's home) → the owner n3 → alice's home n1 → her devices at n1 and n3.
        await bobPhone.SendAsync(new Ack { InboxSeq = lastInbox });
        var delivered = await NextAsync<Receipt>(alicePhone, r => r.Kind == ReceiptKind.Delivered && r.UpToSeq == count);
        Assert.Equal((conversation, bob), (delivered.ConversationId, delivered.ReaderUserId));
        await NextAsync<Receipt>(aliceLaptop, r => r.Kind == ReceiptKind.Delivered && r.UpToSeq == count);

        await bobPhone.SendAsync(new Read { ConversationId = conversation, UpToSeq = count });
        var read = await NextAsync<Receipt>(alicePhone, r => r.Kind == ReceiptKind.Read);
        Assert.Equal(((ulong)count, bob), (read.UpToSeq, read.ReaderUserId));
    }

    [Fact]
    public async Task Receipts_made_while_the_sender_is_offline_reach_her_on_her_next_connect_at_another_node()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("m2-alice", "n1");
        var bob = cluster.UserAt("m2-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        ulong conversation;
        await using (var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone"))
        {
            await alicePhone.SendAsync(Text(1, bob, "are you there?"));
            await alicePhone.ReceiveAsync<Sent>();
            await alicePhone.SendAsync(Text(2, bob, "hello?"));
            conversation = (await alicePhone.ReceiveAsync<Sent>()).ConversationId;
        }

        await using (var bobPhone = await cluster.LoginAsync(cluster["n3"], bob, "phone"))
        {
            var first = await bobPhone.ReceiveAsync<Deliver>();
            var second = await bobPhone.ReceiveAsync<Deliver>();
            Assert.Equal((1UL, 2UL), (first.Seq, second.Seq));
            await bobPhone.SendAsync(new Ack { InboxSeq = second.InboxSeq });
            await bobPhone.SendAsync(new Read { ConversationId = conversation, UpToSeq = 1 });
            Assert.DoesNotContain(await DrainAsync(bobPhone), m => m is Error);
        }

        // alice comes back at n2: her home (n1) gives her what it kept, or tells her live if a receipt was still on its
        // way; either way she ends up knowing delivered up to 2 and read up to 1.
        await using var back = await cluster.LoginAsync(cluster["n2"], alice, "phone");
        ulong delivered = 0, read = 0;
        while (delivered < 2 || read < 1)
        {
            var r = await back.ReceiveAsync<Receipt>();
            Assert.Equal((conversation, bob), (r.ConversationId, r.ReaderUserId));
            if (r.Kind == ReceiptKind.Delivered)
            {
                delivered = Math.Max(delivered, r.UpToSeq);
            }
            else
            {
                read = Math.Max(read, r.UpToSeq);
            }
        }

        Assert.Equal((2UL, 1UL), (delivered, read));
    }

    [Fact]
    public async Task Messages_sent_while_bob_resumes_at_a_node_that_is_not_his_home_arrive_exactly_once_in_order()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("m3-alice", "n1");
        var bob = cluster.UserAt("m3-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        await using var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone");
        const int before = 300, during = 100;
        await SendManyAsync(alicePhone, Enumerable.Range(1, before).Select(i => Text((ulong)i, bob, "m" + i)));
        for (var i = 0; i < before; i++)
        {
            await alicePhone.ReceiveAsync<Sent>();
        }

        // bob connects at n1 (his home is n2) and drains the backlog over the mesh while alice keeps sending.
        var bobLogin = cluster.LoginAsync(cluster["n1"], bob, "phone");
        await SendManyAsync(alicePhone, Enumerable.Range(before + 1, during).Select(i => Text((ulong)i, bob, "m" + i)));
        await using var bobPhone = await bobLogin;
        for (var i = 1; i <= before + during; i++)
        {
            var d = await bobPhone.ReceiveAsync<Deliver>();
            Assert.Equal(((ulong)i, "m" + i), (d.Seq, d.Body.ToStringUtf8()));
        }

        Assert.DoesNotContain(await DrainAsync(bobPhone), m => m is Deliver);
    }

    [Fact]
    public async Task Resume_from_a_cursor_at_another_node_delivers_only_what_follows_it()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("m4-alice", "n3");
        var bob = cluster.UserAt("m4-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n1");
        await using var alicePhone = await cluster.LoginAsync(cluster["n3"], alice, "phone");
        await SendManyAsync(alicePhone, Enumerable.Range(1, 10).Select(i => Text((ulong)i, bob, "m" + i)));
        for (var i = 0; i < 10; i++)
        {
            await alicePhone.ReceiveAsync<Sent>();
        }

        ulong cursor = 0;
        await using (var bobPhone = await cluster.LoginAsync(cluster["n2"], bob, "phone"))
        {
            for (var i = 1; i <= 6; i++)
            {
                cursor = (await bobPhone.ReceiveAsync<Deliver>()).InboxSeq;
            }
        }

        await using var again = await cluster.LoginAsync(cluster["n3"], bob, "phone", resumeInboxSeq: cursor);
        for (var i = 7; i <= 10; i++)
        {
            Assert.Equal((ulong)i, (await again.ReceiveAsync<Deliver>()).Seq);
        }

        Assert.Equal(cursor + 4, (await again.ReceiveAsync<SyncDone>()).InboxSeq);
    }

    [Fact]
    public async Task A_non_members_send_and_history_through_a_node_that_does_not_own_the_conversation_are_refused_and_the_session_stays()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("m5-alice", "n1");
        var bob = cluster.UserAt("m5-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        var carol = cluster.UserAt("m5-carol", "n1");
        await using var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone");
        await alicePhone.SendAsync(Text(1, bob, "hi"));
        var conversation = (await alicePhone.ReceiveAsync<Sent>()).ConversationId;

        await using var carolPhone = await cluster.LoginAsync(cluster["n2"], carol, "phone");
        // Her (empty) backlog's end first: her home is another node, so it can come after the errors below, and the
        // drain at the end would count it (it did once in a fresh-clone run).
        Assert.Equal(0UL, (await carolPhone.ReceiveAsync<SyncDone>()).InboxSeq);
        await carolPhone.SendAsync(new Send { ClientMsgId = 7, ConversationId = conversation, Body = ByteString.CopyFromUtf8("intrude") });
        var error = await carolPhone.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, 7UL), (error.Reason, error.RequestId));
        await carolPhone.SendAsync(new History { RequestId = 3, ConversationId = conversation });
        Assert.Equal((ReasonCode.NotAMember, 3UL), await carolPhone.ReceiveAsync<Error>() is var e ? (e.Reason, e.RequestId) : default);
        Assert.Empty(await DrainAsync(carolPhone));

        await alicePhone.SendAsync(new History { RequestId = 4, ConversationId = conversation });
        Assert.Equal(["hi"], (await alicePhone.ReceiveAsync<HistoryPage>()).Messages.Select(m => m.Body.ToStringUtf8()));
    }

    private ChatClient Client(string user, string device, ClusterNodeProcess node, ChatClientOptions? options = null) => new(options ?? Options(user, device, node));

    private ChatClientOptions Options(string user, string device, ClusterNodeProcess node) => new()
    {
        EndPoint = node.Process!.TcpEndPoint,
        UserId = user,
        DeviceId = device,
        TokenProvider = _ => ValueTask.FromResult(cluster.Token(user, device)),
        Reconnect = new ReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(500) },
    };

    private static async Task<ReceivedMessage> NextAsync(ChatClient client) =>
        await client.Messages.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));

    [Fact]
    public async Task Sdk_clients_at_two_nodes_exchange_messages_and_receipts()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("s1-alice", "n1");
        var bob = cluster.UserAt("s1-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        await using var aliceClient = Client(alice, "phone", cluster["n3"]);
        await using var bobClient = Client(bob, "phone", cluster["n1"]);
        await aliceClient.ConnectAsync();
        await bobClient.ConnectAsync();

        var sent = await Task.WhenAll(Enumerable.Range(1, 100).Select(i => aliceClient.SendAsync(bob, Encoding.UTF8.GetBytes("m" + i))));
        Assert.Equal(Enumerable.Range(1, 100).Select(i => (ulong)i), sent.Select(s => s.Seq));
        for (var i = 1; i <= 100; i++)
        {
            var m = await NextAsync(bobClient);
            Assert.Equal(((ulong)i, "m" + i), (m.Seq, Encoding.UTF8.GetString(m.Body.Span)));
        }

        await bobClient.ReadAsync(sent[0].ConversationId, 100);
        while (true)
        {
            var r = await aliceClient.Receipts.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));
            if (r.Kind == ReceiptKind.Read && r.UpToSeq == 100 && r.ReaderUserId == bob)
            {
                break;
            }
        }
    }

    /// <summary>
    /// ClientSdkTests' broker crash, in a cluster: alice's SDK is connected at n1, which is only her gateway (her home,
    /// bob's home and the owner are elsewhere); n1 is killed, her SDK reconnects to another node from the list n1's
    /// CONNACK gave it (cluster_nodes; nothing is configured but n1) and the sends made meanwhile go out there with
    /// their client_msg_ids; bob's SDK at n3 gets everything once, in order. Then bob's device moves to n1 (back) and
    /// resumes from its cursor: nothing again.
    /// </summary>
    [Fact]
    public async Task Sdk_client_reconnects_to_another_node_when_its_node_dies_and_resumes_without_loss_or_duplicates()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("s2-alice", "n2");
        var bob = cluster.UserAt("s2-bob", "n3", b => cluster.OwnerOfDirect(alice, b) == "n2");
        var n1 = cluster["n1"];
        var aliceOptions = Options(alice, "phone", n1);
        await using var aliceClient = Client(alice, "phone", n1, aliceOptions);
        var bobClient = Client(bob, "phone", cluster["n3"]);
        try
        {
            await aliceClient.ConnectAsync();
            await bobClient.ConnectAsync();
            for (var i = 1; i <= 50; i++)
            {
                await aliceClient.SendAsync(bob, Encoding.UTF8.GetBytes("before " + i));
            }

            for (var i = 1; i <= 50; i++)
            {
                Assert.Equal((ulong)i, (await NextAsync(bobClient)).Seq);
            }

            var mark = cluster["n2"].Process!.LineCount;
            await cluster.KillAsync(n1);
            try
            {
                Assert.Equal(3, aliceClient.KnownEndPoints.Count); // n1, then n2 and n3 from CONNACK
                var pending = Enumerable.Range(51, 50).Select(i => aliceClient.SendAsync(bob, Encoding.UTF8.GetBytes("after " + i))).ToList();
                var sent = await Task.WhenAll(pending).WaitAsync(TimeSpan.FromSeconds(60));
                Assert.Equal(Enumerable.Range(51, 50).Select(i => (ulong)i), sent.Select(s => s.Seq));
                Assert.NotEqual(n1.Process?.TcpEndPoint ?? aliceClient.KnownEndPoints[0], aliceClient.CurrentEndPoint);
                for (var i = 51; i <= 100; i++)
                {
                    var m = await NextAsync(bobClient);
                    Assert.Equal(((ulong)i, "after " + i), (m.Seq, Encoding.UTF8.GetString(m.Body.Span)));
                }
            }
            finally
            {
                await cluster.StartAsync(n1); // same data directory, ports and id
                await cluster["n2"].Process!.WaitForLineAsync(ThreeNodeCluster.LiveNodes(3), mark).WaitAsync(ThreeNodeCluster.Patience);
            }

            // bob's device moves to n1 with the cursor his SDK kept: nothing he had comes again, the next message does.
            var cursor = bobClient.Cursor;
            await bobClient.DisposeAsync();
            var bobOptions = Options(bob, "phone", n1);
            bobOptions.ResumeInboxSeq = cursor;
            bobClient = Client(bob, "phone", n1, bobOptions);
            await bobClient.ConnectAsync();
            await bobClient.WaitForSyncAsync().WaitAsync(TimeSpan.FromSeconds(30));
            await aliceClient.SendAsync(bob, Encoding.UTF8.GetBytes("after the move"));
            var next = await NextAsync(bobClient);
            Assert.Equal((101UL, "after the move"), (next.Seq, Encoding.UTF8.GetString(next.Body.Span)));
        }
        finally
        {
            await bobClient.DisposeAsync();
        }
    }
}
