using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Cluster.Mesh.Wire;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// Cross-node messaging over three in-process nodes with real mesh servers: alice's home is node1, bob's node2,
/// and their direct conversation is owned by node3, so a SEND crosses the mesh to the owner and its inbox entries
/// cross it again to each home.
/// </summary>
public sealed class RoutingTests : IAsyncLifetime
{
    private ClusterHarness _cluster = null!;
    private string _alice = "";
    private string _bob = "";
    private ulong _conversation;

    public async Task InitializeAsync()
    {
        _cluster = await ClusterHarness.StartAsync(3);
        _alice = _cluster.UserAt("alice", "node1");
        var alice = _alice;
        _bob = _cluster.UserAt("bob", "node2", bob => _cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(alice, bob)) == "node3");
        _conversation = ClusterOps.DirectConversationId(_alice, _bob);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public void The_chosen_users_and_conversation_live_where_the_tests_say()
    {
        Assert.Equal("node1", _cluster.Ring.UserHome(_alice));
        Assert.Equal("node2", _cluster.Ring.UserHome(_bob));
        Assert.Equal("node3", _cluster.Ring.ConversationOwner(_conversation));
        Assert.Equal(_conversation, ClusterOps.DirectConversationId(_bob, _alice));
        Assert.True(_conversation >= Storage.ChatStore.FirstDerivedConversationId);
        foreach (var node in _cluster.Nodes)
        {
            Assert.Equal((ulong)_cluster.Map.Epoch, node.Cluster.CurrentEpoch);
            Assert.Equal(node.Id == "node3", node.Cluster.OwnsConversation(_conversation));
        }
    }

    [Fact]
    public async Task A_send_at_one_node_is_sequenced_by_the_owner_and_delivered_at_another()
    {
        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();

        await alice.SendAsync(TestDevice.Text(1, _bob, "hello across nodes"));
        var sent = await alice.ExpectAsync<Sent>();
        Assert.Equal((_conversation, 1UL, 1UL), (sent.ConversationId, sent.Seq, sent.ClientMsgId));

        var deliver = await bob.ExpectAsync<Deliver>();
        Assert.Equal((_conversation, 1UL, 1UL, _alice, "hello across nodes"), (deliver.ConversationId, deliver.Seq, deliver.InboxSeq, deliver.SenderUserId, deliver.Body.ToStringUtf8()));

        // The owner holds the log and the conversation; the homes hold their users' inbox entries and a copy.
        var owner = _cluster["node3"].Broker.Store;
        Assert.Equal(1UL, owner.GetLastSeq(_conversation));
        Assert.Equal([_alice, _bob], owner.ListMembers(_conversation).Select(m => m.UserId).Order());
        Assert.Empty(owner.ReadInbox(_bob, 0, 10));
        Assert.Null(_cluster["node2"].Broker.Store.GetConversation(_conversation));
        Assert.Equal((_conversation, 1UL), Assert.Single(_cluster["node2"].Broker.Store.ReadInbox(_bob, 0, 10)) is var e ? (e.ConversationId, e.Seq) : default);

        // The sender's own home gets its entry too (its other devices see the message).
        await ForwardedAsync("node3", "node1");
        await ForwardedAsync("node3", "node2");
        Assert.Equal(1UL, _cluster["node1"].Broker.Store.GetLastInboxSeq(_alice));
    }

    [Fact]
    public async Task A_retry_with_the_same_client_msg_id_through_another_node_gets_the_same_sent_and_one_deliver()
    {
        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var viaHome = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await viaHome.ExpectAsync<SyncDone>();
        await viaHome.SendAsync(TestDevice.Text(7, _bob, "once"));
        var first = await viaHome.ExpectAsync<Sent>();

        // The device lost the SENT and reconnects to another node (the owner itself, then a third one); each new
        // connection takes the device's session over.
        var connection = viaHome;
        foreach (var node in new[] { "node3", "node2" })
        {
            var retry = await _cluster[node].ConnectAsync(_alice, "phone");
            // Resuming from 0 it may be given its own "once" (once its home has the entry): a device that asks
            // for everything gets its own messages too, and matches them by client_msg_id.
            for (var m = await retry.ReceiveAsync(); m is not SyncDone; m = await retry.ReceiveAsync())
            {
                Assert.Equal((_alice, 7UL), Assert.IsType<Deliver>(m) is var own ? (own.SenderUserId, own.ClientMsgId) : default);
            }

            Assert.Equal(ReasonCode.SessionTakenOver, (await connection.ExpectAsync<Disconnect>()).Reason);
            await retry.SendAsync(TestDevice.Text(7, _bob, "once"));
            var again = await retry.ExpectAsync<Sent>();
            Assert.Equal((first.ConversationId, first.Seq, first.TimestampMs), (again.ConversationId, again.Seq, again.TimestampMs));
            connection = retry;
        }

        await connection.SendAsync(TestDevice.Text(8, _bob, "twice"));
        Assert.Equal(2UL, (await connection.ExpectAsync<Sent>()).Seq);
        Assert.Equal(("once", 1UL), await NextDeliverAsync(bob));
        Assert.Equal(("twice", 2UL), await NextDeliverAsync(bob)); // no second "once"
        Assert.Equal(2UL, _cluster["node3"].Broker.Store.GetLastSeq(_conversation));
    }

    [Fact]
    public async Task An_offline_recipient_reconnecting_at_a_third_node_catches_up_in_order_then_gets_live_messages()
    {
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        const int Offline = 20;
        for (var i = 1; i <= Offline; i++)
        {
            await alice.SendAsync(TestDevice.Text((ulong)i, _bob, $"m{i}"));
        }

        for (var i = 1; i <= Offline; i++)
        {
            Assert.Equal((ulong)i, (await alice.ExpectAsync<Sent>()).Seq);
        }

        // Everything acked by the owner reaches bob's home durably, whether or not bob is online.
        await ForwardedAsync("node3", "node2");
        Assert.Equal((ulong)Offline, _cluster["node2"].Broker.Store.GetLastInboxSeq(_bob));

        // Bob connects at node3, which is neither his home nor (as a gateway) holding his inbox.
        var bob = await _cluster["node3"].ConnectAsync(_bob, "phone");
        for (var i = 1; i <= Offline; i++)
        {
            var deliver = await bob.ExpectAsync<Deliver>();
            Assert.Equal(($"m{i}", (ulong)i, (ulong)i), (deliver.Body.ToStringUtf8(), deliver.Seq, deliver.InboxSeq));
        }

        Assert.Equal((ulong)Offline, (await bob.ExpectAsync<SyncDone>()).InboxSeq);
        Assert.True(_cluster["node3"].Cluster.Metrics.Snapshot().RemoteReads >= 1);

        // Live from here: the home tells the gateway that holds bob's connection.
        await alice.SendAsync(TestDevice.Text(100, _bob, "live"));
        Assert.Equal((ulong)Offline + 1, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(("live", (ulong)Offline + 1), await NextDeliverAsync(bob));
        Assert.Equal(1, _cluster["node2"].Cluster.Metrics.Snapshot().DeliversPosted);

        // ACK at the gateway moves the cursor at the home. A SYNC after it reads the home's inbox over the same
        // stream, so its SYNC_DONE comes after the home has stored the ACK.
        await bob.SendAsync(new Ack { InboxSeq = Offline + 1 });
        await bob.SendAsync(new Sync { RequestId = 5, InboxSeq = Offline + 1 });
        Assert.Equal(5UL, (await bob.ExpectAsync<SyncDone>()).RequestId);
        Assert.Equal((ulong)Offline + 1, _cluster["node2"].Broker.Store.GetCursor(_bob, "phone", Storage.CursorStream.Inbox));
    }

    [Fact]
    public async Task A_forward_to_a_node_that_does_not_own_the_conversation_is_refused_with_the_owner()
    {
        var send = TestDevice.Text(1, _bob, "misrouted");
        var forward = new ForwardSend { SenderUser = _alice, SenderDevice = "phone", Send = send.ToByteString(), ConversationId = _conversation }.ToByteArray();
        var link = _cluster["node1"].Cluster.LinkTo("node2")!;
        var epoch = _cluster["node1"].Cluster.CurrentEpoch;

        // Stamped with an older epoch, and stamped with the current one: node2 owns neither way.
        foreach (var stamp in new[] { epoch - 1, epoch })
        {
            var reply = await link.TryRequest(ClusterOpKind.ForwardSend, stamp, forward)!.WaitAsync(TestDevice.Timeout);
            Assert.Equal((MeshStatus.StaleEpoch, epoch, "node3"), (reply.Status, reply.Epoch, reply.Owner));
        }

        Assert.Equal(0UL, _cluster["node2"].Broker.Store.GetLastSeq(_conversation));
        Assert.Equal(0UL, _cluster["node3"].Broker.Store.GetLastSeq(_conversation));

        // An inbox entry for a user whose home is elsewhere is refused the same way.
        var append = new InboxAppend { Message = new ForwardedMessage { ConversationId = _conversation, Seq = 1, SenderUser = _alice, SenderDevice = "phone", Body = ByteString.CopyFromUtf8("x") } };
        append.Recipients.Add(_alice);
        var refused = await link.TryRequest(ClusterOpKind.InboxAppend, epoch, append.ToByteArray())!.WaitAsync(TestDevice.Timeout);
        Assert.Equal((MeshStatus.StaleEpoch, "node1"), (refused.Status, refused.Owner));
        Assert.Equal(0UL, _cluster["node2"].Broker.Store.GetLastInboxSeq(_alice));
    }

    [Fact]
    public async Task Operations_a_node_cannot_parse_or_accept_are_rejected_with_a_reason_and_the_stream_goes_on()
    {
        var link = _cluster["node1"].Cluster.LinkTo("node3")!;
        var epoch = _cluster["node1"].Cluster.CurrentEpoch;
        async Task<MeshReply> AskAsync(ClusterOpKind kind, byte[] payload) => await link.TryRequest(kind, epoch, payload)!.WaitAsync(TestDevice.Timeout);

        Assert.Equal((MeshStatus.Rejected, (uint)ReasonCode.BadRequest), await AskAsync((ClusterOpKind)99, []) is var a ? (a.Status, a.Reason) : default);
        Assert.Equal((MeshStatus.Rejected, (uint)ReasonCode.MalformedBody), await AskAsync(ClusterOpKind.ForwardSend, [0xFF, 0xFF, 0xFF]) is var b ? (b.Status, b.Reason) : default);
        var noMessage = new InboxAppend();
        noMessage.Recipients.Add(_cluster.UserAt("carol", "node3"));
        Assert.Equal((MeshStatus.Rejected, (uint)ReasonCode.InvalidField), await AskAsync(ClusterOpKind.InboxAppend, noMessage.ToByteArray()) is var c ? (c.Status, c.Reason) : default);

        // A forwarded SEND with no sender is refused, not stored.
        var anonymous = new ForwardSend { SenderDevice = "phone", Send = TestDevice.Text(1, _bob, "x").ToByteString(), ConversationId = _conversation };
        Assert.Equal((MeshStatus.Rejected, (uint)ReasonCode.InvalidField), await AskAsync(ClusterOpKind.ForwardSend, anonymous.ToByteArray()) is var d ? (d.Status, d.Reason) : default);
        Assert.Equal(0UL, _cluster["node3"].Broker.Store.GetLastSeq(_conversation));

        // The stream is still up: a real SEND through the same link is sequenced.
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "fine"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
    }

    [Fact]
    public async Task The_senders_other_device_at_another_node_gets_the_message_from_her_home()
    {
        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var phone = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await phone.ExpectAsync<SyncDone>();
        var laptop = await _cluster["node3"].ConnectAsync(_alice, "laptop"); // neither her home nor her phone's node
        await laptop.ExpectAsync<SyncDone>();

        await phone.SendAsync(TestDevice.Text(41, _bob, "from my phone"));
        var sent = await phone.ExpectAsync<Sent>();
        var copy = await laptop.ExpectAsync<Deliver>();
        Assert.Equal((sent.ConversationId, sent.Seq, 41UL, "phone", "from my phone"), (copy.ConversationId, copy.Seq, copy.ClientMsgId, copy.SenderDeviceId, copy.Body.ToStringUtf8()));
        Assert.Equal(("from my phone", 1UL), await NextDeliverAsync(bob));

        // Closed at its gateway, the laptop is forgotten by the home: the next message is only in the inbox.
        await laptop.SendAsync(new Disconnect());
        await laptop.EndedAsync();
        await phone.SendAsync(TestDevice.Text(42, _bob, "laptop closed"));
        await phone.ExpectAsync<Sent>();
        Assert.Equal(("laptop closed", 2UL), await NextDeliverAsync(bob));
        await ForwardedAsync("node3", "node1");
        Assert.Equal(2UL, _cluster["node1"].Broker.Store.GetLastInboxSeq(_alice));
    }

    [Fact]
    public async Task A_pair_whose_derived_id_holds_another_pairs_conversation_takes_its_next_candidate_everywhere()
    {
        // A hash collision, made by hand: the first candidate of (alice, bob) already holds xavier and yvonne.
        await _cluster["node3"].Broker.Store.GetOrCreateDirectAtAsync(_conversation, "xavier", "yvonne");
        var second = ClusterOps.DirectConversationId(_alice, _bob, 1);
        Assert.Equal(1, ClusterOps.DirectIdAttempt(_bob, _alice, second));

        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "no mix-up"));
        var sent = await alice.ExpectAsync<Sent>();
        Assert.Equal((second, 1UL), (sent.ConversationId, sent.Seq));
        var deliver = await bob.ExpectAsync<Deliver>();
        Assert.Equal((second, "no mix-up"), (deliver.ConversationId, deliver.Body.ToStringUtf8()));

        // Bob answers through his own node, which has never seen the pair: it finds the same id.
        await bob.SendAsync(TestDevice.Text(1, _alice, "same here"));
        var answer = await bob.ExpectAsync<Sent>();
        Assert.Equal((second, 2UL), (answer.ConversationId, answer.Seq));

        // And through the node that owns the taken id, which probes on by itself.
        await ForwardedAsync(_cluster.Ring.ConversationOwner(second), "node1");
        var laptop = await _cluster["node3"].ConnectAsync(_alice, "laptop");
        Assert.Equal(2, (await CatchUpAsync(laptop)).Count); // her inbox so far: her message and bob's answer
        await laptop.SendAsync(TestDevice.Text(1, _bob, "from the owner of the taken id"));
        Assert.Equal((second, 3UL), (await laptop.ExpectAsync<Sent>()) is var third ? (third.ConversationId, third.Seq) : default);
        Assert.Equal(0UL, _cluster["node3"].Broker.Store.GetLastSeq(_conversation)); // xavier's and yvonne's stays untouched
        // Counted where a gateway learned it from a refusal: at least alice's node1 (bob's node2 too, unless it owns
        // the second candidate and so remembered the pair when it stored alice's message).
        Assert.True(_cluster["node1"].Cluster.Metrics.Snapshot().DirectIdProbes >= 1);
    }

    [Fact]
    public async Task A_device_that_connects_at_another_node_takes_over_its_session_there()
    {
        var atNode3 = await _cluster["node3"].ConnectAsync(_bob, "phone");
        await atNode3.ExpectAsync<SyncDone>();

        // Another gateway: the home tells node3 to close the old session.
        var atNode1 = await _cluster["node1"].ConnectAsync(_bob, "phone");
        await atNode1.ExpectAsync<SyncDone>();
        Assert.Equal(ReasonCode.SessionTakenOver, (await atNode3.ExpectAsync<Disconnect>()).Reason);
        await atNode3.EndedAsync();

        // The home itself: it closes the session at node1.
        var atHome = await _cluster["node2"].ConnectAsync(_bob, "phone");
        await atHome.ExpectAsync<SyncDone>();
        Assert.Equal(ReasonCode.SessionTakenOver, (await atNode1.ExpectAsync<Disconnect>()).Reason);
        await atNode1.EndedAsync();

        // And a gateway again: the home closes its own session.
        var again = await _cluster["node3"].ConnectAsync(_bob, "phone");
        await again.ExpectAsync<SyncDone>();
        Assert.Equal(ReasonCode.SessionTakenOver, (await atHome.ExpectAsync<Disconnect>()).Reason);
        await atHome.EndedAsync();

        // Only the newest session gets bob's messages.
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "to the newest"));
        await alice.ExpectAsync<Sent>();
        Assert.Equal(("to the newest", 1UL), await NextDeliverAsync(again));
    }

    [Fact]
    public async Task History_is_read_from_the_conversations_owner_through_any_node()
    {
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        for (var i = 1; i <= 3; i++)
        {
            await alice.SendAsync(TestDevice.Text((ulong)i, _bob, $"h{i}"));
            await alice.ExpectAsync<Sent>();
        }

        await ForwardedAsync("node3", "node2");
        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        Assert.Equal(3, (await CatchUpAsync(bob)).Count);
        await bob.SendAsync(new History { RequestId = 9, ConversationId = _conversation, Limit = 2 });
        var page = await bob.ExpectAsync<HistoryPage>();
        Assert.Equal((9UL, true), (page.RequestId, page.More));
        Assert.Equal(["h2", "h3"], page.Messages.Select(m => m.Body.ToStringUtf8()));

        // Membership is the owner's to check.
        var carol = await _cluster["node1"].ConnectAsync(_cluster.UserAt("carol", "node1"), "phone");
        await carol.ExpectAsync<SyncDone>();
        await carol.SendAsync(new History { RequestId = 10, ConversationId = _conversation });
        Assert.Equal((ReasonCode.NotAMember, 10UL), (await carol.ExpectAsync<Error>()) is var e ? (e.Reason, e.RequestId) : default);
    }

    [Fact]
    public async Task Reserved_user_ids_are_refused_in_cluster_mode()
    {
        var device = _cluster["node1"].Broker.Open();
        await device.SendAsync(_cluster["node1"].Broker.ConnectPacket("#home/node2", "phone"));
        Assert.Equal(ReasonCode.InvalidField, (await device.ExpectAsync<Connack>()).Reason);

        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, "#home/node2", "into a forward queue"));
        Assert.Equal(ReasonCode.InvalidField, (await alice.ExpectAsync<Error>()).Reason);
    }

    [Fact]
    public async Task Broken_mesh_streams_mid_conversation_lose_and_duplicate_nothing()
    {
        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();

        const int Count = 60;
        var gatewayToOwner = _cluster["node1"].Cluster.LinkTo("node3")!.Peer;
        var ownerToHome = _cluster["node3"].Cluster.LinkTo("node2")!.Peer;
        var reconnectsBefore = gatewayToOwner.Metrics.Snapshot().Reconnects + ownerToHome.Metrics.Snapshot().Reconnects;
        for (var i = 1; i <= Count; i++)
        {
            await alice.SendAsync(TestDevice.Text((ulong)i, _bob, $"m{i}"));
            if (i % 20 == 10)
            {
                gatewayToOwner.ResetStream(); // the owner's link from the gateway and to the home break mid-stream
                ownerToHome.ResetStream();
            }
        }

        for (var i = 1; i <= Count; i++)
        {
            Assert.Equal((ulong)i, (await alice.ExpectAsync<Sent>()).Seq);
        }

        for (var i = 1; i <= Count; i++)
        {
            Assert.Equal(($"m{i}", (ulong)i), await NextDeliverAsync(bob));
        }

        await ForwardedAsync("node3", "node2");
        Assert.Equal((ulong)Count, _cluster["node2"].Broker.Store.GetLastInboxSeq(_bob));
        Assert.Equal((ulong)Count, _cluster["node3"].Broker.Store.GetLastSeq(_conversation));
        Assert.True(gatewayToOwner.Metrics.Snapshot().Reconnects + ownerToHome.Metrics.Snapshot().Reconnects > reconnectsBefore);
    }

    [Fact]
    public async Task While_the_owner_is_unreachable_a_send_gets_a_retryable_error_and_the_retry_after_it_returns_one_message()
    {
        await using var cluster = await ClusterHarness.StartAsync(3, new ClusterRoutingOptions { ForwardTimeout = TimeSpan.FromMilliseconds(300) });
        var aliceId = cluster.UserAt("alice", "node1");
        var bobId = cluster.UserAt("bob", "node2", b => cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(aliceId, b)) == "node3");
        var bob = await cluster["node2"].ConnectAsync(bobId, "phone");
        await bob.ExpectAsync<SyncDone>();
        var alice = await cluster["node1"].ConnectAsync(aliceId, "phone");
        await alice.ExpectAsync<SyncDone>();

        await cluster["node3"].StopMeshAsync();
        await alice.SendAsync(TestDevice.Text(1, bobId, "while the owner is away"));
        var error = await alice.ExpectAsync<Error>();
        Assert.Equal((ReasonCode.ServerUnavailable, 1UL, 1000UL), (error.Reason, error.RequestId, error.RetryAfterMs));
        Assert.Equal(1, cluster["node1"].Cluster.Metrics.Snapshot().SendsAnsweredUnavailable);

        // The owner's port opens again; the device retries as the error told it to. The forward queued before the
        // error may reach the owner first: either way the owner's store resolves the client_msg_id to one message.
        await cluster["node3"].RestartMeshAsync();
        Sent? sent = null;
        for (var attempt = 0; sent is null; attempt++)
        {
            Assert.True(attempt < 30, "the owner did not come back within 30 retries");
            await alice.SendAsync(TestDevice.Text(1, bobId, "while the owner is away"));
            var answer = await alice.ReceiveAsync();
            sent = answer as Sent;
            Assert.True(sent is not null || answer is Error { Reason: ReasonCode.ServerUnavailable }, $"unexpected {answer}");
        }

        Assert.Equal(1UL, sent.Seq);
        await alice.SendAsync(TestDevice.Text(2, bobId, "after"));
        Assert.Equal(2UL, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(("while the owner is away", 1UL), await NextDeliverAsync(bob));
        Assert.Equal(("after", 2UL), await NextDeliverAsync(bob));
    }

    [Fact]
    public async Task Entries_an_owner_acked_but_had_not_forwarded_when_it_crashed_are_forwarded_after_its_restart()
    {
        var alice = await _cluster["node1"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "first"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        await ForwardedAsync("node3", "node2");

        // Bob's home cannot be reached: the owner acknowledges, stores the entries in its forward queue, and
        // crashes with them unsent (its mesh queue is in memory and lost).
        await _cluster["node2"].StopMeshAsync();
        for (var i = 2; i <= 5; i++)
        {
            await alice.SendAsync(TestDevice.Text((ulong)i, _bob, $"m{i}"));
            Assert.Equal((ulong)i, (await alice.ExpectAsync<Sent>()).Seq);
        }

        Assert.Equal(4UL, _cluster["node3"].Cluster.ForwardBacklog("node2"));
        await _cluster.RestartAsync("node3");
        await _cluster["node2"].RestartMeshAsync();

        await ForwardedAsync("node3", "node2");
        var inbox = _cluster["node2"].Broker.Store.ReadInbox(_bob, 0, 100);
        Assert.Equal(5, _cluster["node2"].Cluster.Metrics.Snapshot().CopiesStored);
        Assert.True(_cluster["node3"].Cluster.Metrics.Snapshot().InboxEntriesForwarded >= 4); // the restarted owner sent them
        Assert.Equal([1UL, 2UL, 3UL, 4UL, 5UL], inbox.Select(e => e.Seq));
        var bob = await _cluster["node2"].ConnectAsync(_bob, "phone");
        for (var i = 1; i <= 5; i++)
        {
            Assert.Equal((ulong)i, (await bob.ExpectAsync<Deliver>()).Seq);
        }
    }

    /// <summary>The DELIVERs of a catch-up, up to its SYNC_DONE.</summary>
    private static async Task<List<Deliver>> CatchUpAsync(TestDevice device)
    {
        var delivers = new List<Deliver>();
        while (await device.ReceiveAsync() is var message and not SyncDone)
        {
            delivers.Add(Assert.IsType<Deliver>(message));
        }

        return delivers;
    }

    /// <summary>The next DELIVER, skipping receipts; its body and seq.</summary>
    private static async Task<(string Body, ulong Seq)> NextDeliverAsync(TestDevice device)
    {
        while (true)
        {
            var message = await device.ReceiveAsync();
            switch (message)
            {
                case Deliver deliver:
                    return (deliver.Body.ToStringUtf8(), deliver.Seq);
                case Receipt:
                    continue;
                default:
                    throw new Xunit.Sdk.XunitException($"expected DELIVER, got {message}");
            }
        }
    }

    /// <summary>Waits until <paramref name="owner"/>'s forward queue to <paramref name="home"/> is drained (acked = stored).</summary>
    private async Task ForwardedAsync(string owner, string home)
    {
        using var timeout = new CancellationTokenSource(TestDevice.Timeout);
        await _cluster[owner].Cluster.WhenForwardedAsync(home, timeout.Token);
        Assert.Equal(0UL, _cluster[owner].Cluster.ForwardBacklog(home));
    }
}
