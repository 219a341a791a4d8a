using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// Receipts, presence, typing, keys and push jobs across three in-process nodes: alice's home is node1, bob's node2,
/// their direct conversation is owned by node3, and their devices connect at other nodes than their homes, so every
/// signal crosses the mesh between gateway, owner and homes.
/// </summary>
public sealed class SignalTests : IAsyncLifetime
{
    private const ulong AllCapabilities = (ulong)(Capability.Receipts | Capability.Typing | Capability.Presence);

    private ClusterHarness _cluster = null!;
    private string _alice = "";
    private string _bob = "";
    private string _carol = "";
    private ulong _conversation;

    public async Task InitializeAsync()
    {
        // No presence debounce: a change is published at once, so the tests wait for packets, not for time.
        _cluster = await ClusterHarness.StartAsync(3, configure: o => o.Presence.Debounce = TimeSpan.Zero);
        _alice = _cluster.UserAt("alice", "node1");
        var alice = _alice;
        _bob = _cluster.UserAt("bob", "node2", bob => _cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(alice, bob)) == "node3");
        _carol = _cluster.UserAt("carol", "node3");
        _conversation = ClusterOps.DirectConversationId(_alice, _bob);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task Delivered_and_read_receipts_reach_the_sender_live_at_a_node_that_is_neither_her_home_nor_the_owner()
    {
        var alice = await ConnectAsync("node3", _alice, "phone");
        var bob = await ConnectAsync("node1", _bob, "phone");

        await alice.SendAsync(TestDevice.Text(1, _bob, "hello"));
        Assert.Equal(1UL, (await NextAsync<Sent>(alice)).Seq);
        var deliver = await NextAsync<Deliver>(bob);

        // ACK at node1 → bob's home node2 moves the cursor → the owner node3 records the receipt → alice's home node1
        // keeps it and tells her device at node3.
        await bob.SendAsync(new Ack { InboxSeq = deliver.InboxSeq });
        var delivered = await NextAsync<Receipt>(alice);
        Assert.Equal((_conversation, ReceiptKind.Delivered, 1UL, _bob), (delivered.ConversationId, delivered.Kind, delivered.UpToSeq, delivered.ReaderUserId));

        // READ at node1 goes to the owner, which checks and records it.
        await bob.SendAsync(new Read { ConversationId = _conversation, UpToSeq = 1 });
        var read = await NextAsync<Receipt>(alice, r => r.Kind == ReceiptKind.Read);
        Assert.Equal((_conversation, 1UL, _bob), (read.ConversationId, read.UpToSeq, read.ReaderUserId));

        // A READ beyond the log is clamped by the owner; one by a non-member is refused by it, as on one node.
        await bob.SendAsync(new Read { ConversationId = _conversation, UpToSeq = 99 });
        var carol = await ConnectAsync("node2", _carol, "phone");
        await carol.SendAsync(new Read { ConversationId = _conversation, UpToSeq = 1 });
        var refused = await NextAsync<Error>(carol);
        Assert.Equal((ReasonCode.NotAMember, PacketType.Read), (refused.Reason, refused.InReplyTo));

        // The receipts are kept at alice's home, not at the gateway or the owner.
        Assert.Equal([(_bob, false, 1UL), (_bob, true, 1UL)], _cluster["node1"].Broker.Store.ListReceipts(_alice, 10).Select(r => (r.ReaderUserId, r.Read, r.UpToSeq)).Order());
        Assert.Empty(_cluster["node3"].Broker.Store.ListReceipts(_alice, 10));
        Assert.Empty(_cluster["node2"].Broker.Store.ListReceipts(_alice, 10));
    }

    [Fact]
    public async Task Receipts_made_while_the_sender_is_offline_come_on_her_next_connect_at_another_node_also_after_her_home_restarts()
    {
        var alice = await ConnectAsync("node3", _alice, "phone");
        await alice.SendAsync(TestDevice.Text(1, _bob, "one"));
        await NextAsync<Sent>(alice);
        await alice.SendAsync(TestDevice.Text(2, _bob, "two"));
        Assert.Equal(2UL, (await NextAsync<Sent>(alice)).Seq);
        await alice.SendAsync(new Disconnect());
        await alice.EndedAsync();
        await ForwardedAsync("node3", "node2"); // both are in bob's inbox at his home

        var bob = await _cluster["node1"].ConnectAsync(_bob, "phone");
        var delivers = new List<Deliver>();
        while (await bob.ReceiveAsync() is var message and not SyncDone)
        {
            if (message is Deliver d)
            {
                delivers.Add(d);
            }
        }

        Assert.Equal([1UL, 2UL], delivers.Select(d => d.Seq));
        await bob.SendAsync(new Ack { InboxSeq = delivers[^1].InboxSeq });
        await bob.SendAsync(new Read { ConversationId = _conversation, UpToSeq = 1 });

        // alice connects at node2: her home node1 answers with what it kept (or tells her live, if it was still on
        // its way); either way she ends up knowing delivered up to 2 and read up to 1.
        await ExpectReceiptsAsync(await _cluster["node2"].ConnectAsync(_alice, "tablet"), delivered: 2, read: 1);

        // Kept durably: after her home restarts, a device connecting at yet another node gets them from its store.
        await _cluster.RestartAsync("node1");
        var again = await _cluster["node3"].ConnectAsync(_alice, "laptop");
        var receipts = new List<Receipt>();
        while (await again.ReceiveAsync() is var message and not SyncDone)
        {
            if (message is Receipt r)
            {
                receipts.Add(r);
            }
        }

        // The catch-up ran alongside the read of the receipts: take any not yet in.
        while (receipts.Count < 2)
        {
            receipts.Add(await NextAsync<Receipt>(again));
        }

        Assert.Equal([(ReceiptKind.Delivered, 2UL), (ReceiptKind.Read, 1UL)], receipts.Select(r => (r.Kind, r.UpToSeq)).Order());
        Assert.All(receipts, r => Assert.Equal((_conversation, _bob), (r.ConversationId, r.ReaderUserId)));
    }

    [Fact]
    public async Task Presence_of_a_user_is_kept_by_his_home_and_seen_by_subscribers_at_other_nodes()
    {
        var alice = await ConnectAsync("node3", _alice, "phone");
        await alice.SendAsync(TestDevice.Text(1, _bob, "let's talk"));
        await NextAsync<Sent>(alice);

        // Nobody shares a conversation with carol: refused, whatever node asks.
        await alice.SendAsync(new PresenceSubscribe { RequestId = 7, UserIds = { _carol } });
        var refused = await NextAsync<Error>(alice);
        Assert.Equal((ReasonCode.NotAMember, 7UL), (refused.Reason, refused.RequestId));

        await alice.SendAsync(new PresenceSubscribe { RequestId = 8, UserIds = { _bob } });
        var subscribed = await NextAsync<PresenceSubscribed>(alice);
        Assert.Equal((8UL, _bob, PresenceStatus.Offline), (subscribed.RequestId, subscribed.Current.Single().UserId, subscribed.Current.Single().Status));

        // bob connects at node1; his home node2 counts the device and tells alice's node.
        var bob = await ConnectAsync("node1", _bob, "phone");
        Assert.Equal(PresenceStatus.Online, (await NextAsync<Presence>(alice, p => p.UserId == _bob)).Status);

        await bob.SendAsync(new PresenceSet { Status = PresenceStatus.Away });
        Assert.Equal(PresenceStatus.Away, (await NextAsync<Presence>(alice)).Status);

        await bob.SendAsync(new Disconnect());
        await bob.EndedAsync();
        var offline = await NextAsync<Presence>(alice);
        Assert.Equal(PresenceStatus.Offline, offline.Status);
        Assert.True(offline.LastSeenMs > 0);

        // A second subscriber at another node reads the current status from the home.
        var bobAgain = await ConnectAsync("node3", _bob, "tablet");
        Assert.Equal(PresenceStatus.Online, (await NextAsync<Presence>(alice)).Status);
        var laptop = await ConnectAsync("node2", _alice, "laptop");
        await laptop.SendAsync(new PresenceSubscribe { RequestId = 9, UserIds = { _bob } });
        Assert.Equal(PresenceStatus.Online, (await NextAsync<PresenceSubscribed>(laptop)).Current.Single().Status);

        // alice's phone unsubscribes: its node ends the subscription at bob's home; the laptop still hears.
        await alice.SendAsync(new PresenceSubscribe { RequestId = 10, UserIds = { _bob }, Unsubscribe = true });
        Assert.Equal(10UL, (await NextAsync<PresenceSubscribed>(alice)).RequestId);
        await bobAgain.SendAsync(new Disconnect());
        await bobAgain.EndedAsync();
        Assert.Equal(PresenceStatus.Offline, (await NextAsync<Presence>(laptop)).Status);
        await alice.SendAsync(new Ping());
        Assert.IsType<Pong>(await alice.ReceiveAsync()); // no PRESENCE came before it
    }

    [Fact]
    public async Task Typing_reaches_the_other_member_at_his_node_through_the_owner_and_his_home()
    {
        var alice = await ConnectAsync("node3", _alice, "phone");
        var bob = await ConnectAsync("node1", _bob, "phone");
        await alice.SendAsync(TestDevice.Text(1, _bob, "hi"));
        await NextAsync<Sent>(alice);
        await NextAsync<Deliver>(bob);

        // From the owner's node (node3) to bob at node1, through his home node2.
        await alice.SendAsync(new Typing { ConversationId = _conversation });
        var notice = await NextAsync<TypingNotice>(bob);
        Assert.Equal((_conversation, _alice, false), (notice.ConversationId, notice.UserId, notice.Stopped));

        // From node1, which does not own the conversation: forwarded to the owner first.
        await bob.SendAsync(new Typing { ConversationId = _conversation, Stopped = true });
        var back = await NextAsync<TypingNotice>(alice);
        Assert.Equal((_conversation, _bob, true), (back.ConversationId, back.UserId, back.Stopped));

        // A non-member at another node is refused by the owner, with the error a single node gives.
        var carol = await ConnectAsync("node2", _carol, "phone");
        await carol.SendAsync(new Typing { ConversationId = _conversation });
        var refused = await NextAsync<Error>(carol);
        Assert.Equal((ReasonCode.NotAMember, PacketType.Typing, _conversation), (refused.Reason, refused.InReplyTo, refused.RequestId));
    }

    [Fact]
    public async Task Prekeys_uploaded_at_one_node_are_kept_by_the_home_and_each_one_time_key_is_fetched_once_through_other_nodes()
    {
        var bob = await ConnectAsync("node1", _bob, "phone");
        await bob.SendAsync(new KeysUpload
        {
            RequestId = 1,
            IdentityKey = ByteString.CopyFrom(new byte[32]),
            SignedPrekey = new SignedPrekey { KeyId = 5, PublicKey = ByteString.CopyFrom(new byte[32]), Signature = ByteString.CopyFrom(new byte[64]) },
            OneTimePrekeys =
            {
                new OneTimePrekey { KeyId = 1, PublicKey = ByteString.CopyFrom([1]) },
                new OneTimePrekey { KeyId = 2, PublicKey = ByteString.CopyFrom([2]) },
            },
        });
        var uploaded = await NextAsync<KeysUploaded>(bob);
        Assert.Equal((1UL, 2U), (uploaded.RequestId, uploaded.OneTimePrekeysRemaining));
        Assert.Equal(2, _cluster["node2"].Broker.Store.CountOneTimePrekeys(_bob, "phone"));
        Assert.Null(_cluster["node1"].Broker.Store.GetPrekeyBundle(_bob, "phone"));

        // Two fetchers at two other nodes, at the same time: each gets its own one-time key.
        var alice = await ConnectAsync("node3", _alice, "phone");
        var carol = await ConnectAsync("node2", _carol, "phone");
        await Task.WhenAll(alice.SendAsync(new FetchKeys { RequestId = 2, UserId = _bob }), carol.SendAsync(new FetchKeys { RequestId = 3, UserId = _bob }));
        var bundles = new[] { await NextAsync<KeyBundle>(alice), await NextAsync<KeyBundle>(carol) };
        Assert.Equal([1U, 2U], bundles.Select(b => b.Devices.Single().OneTimePrekey.KeyId).Order());
        Assert.All(bundles, b => Assert.Equal(5U, b.Devices.Single().SignedPrekey.KeyId));
        Assert.Equal(0, _cluster["node2"].Broker.Store.CountOneTimePrekeys(_bob, "phone"));

        // bob's device at node1 hears from his home that it runs low, as a device at the home would.
        Assert.Equal(0UL, (await NextAsync<KeysUploaded>(bob)).RequestId);

        // Kept durably at the home: after it restarts, a fetch gets the bundle, with no one-time key left.
        await _cluster.RestartAsync("node2");
        await alice.SendAsync(new FetchKeys { RequestId = 4, UserId = _bob, DeviceId = "phone" });
        var last = await NextAsync<KeyBundle>(alice);
        Assert.Equal((4UL, 5U, false), (last.RequestId, last.Devices.Single().SignedPrekey.KeyId, last.Devices.Single().OneTimePrekey is not null));

        await alice.SendAsync(new FetchKeys { RequestId = 5, UserId = _carol });
        Assert.Equal((ReasonCode.KeysNotFound, 5UL), await NextAsync<Error>(alice) is var e ? (e.Reason, e.RequestId) : default);
    }

    [Fact]
    public async Task A_push_job_is_created_once_on_the_offline_recipients_home_and_none_while_he_is_online_at_another_node()
    {
        var alice = await ConnectAsync("node1", _alice, "phone");
        await alice.SendAsync(TestDevice.Text(1, _bob, "are you there?"));
        await NextAsync<Sent>(alice);
        await ForwardedAsync("node3", "node2");
        await ForwardedAsync("node3", "node1");

        var job = Assert.Single(DueJobs("node2"));
        Assert.Equal((_bob, _conversation, 1UL), (job.UserId, job.ConversationId, job.Seq));
        Assert.Empty(DueJobs("node3")); // the owner is not bob's home
        Assert.Empty(DueJobs("node1")); // the sender gets none

        // The same entry forwarded again (a resend after a lost ack) stores nothing and creates no second job.
        var message = _cluster["node2"].Broker.Store.ReadRange(_conversation, 1, 1).Single();
        var append = new InboxAppend { Message = ClusterOps.ToWire(message), Recipients = { _bob } };
        var link = _cluster["node3"].Cluster.LinkTo("node2")!;
        var reply = await link.TryRequest(ClusterOpKind.InboxAppend, _cluster["node3"].Cluster.CurrentEpoch, append.ToByteArray())!.WaitAsync(TestDevice.Timeout);
        Assert.Equal(ChatBroker.Cluster.Mesh.Wire.MeshStatus.Ok, reply.Status);
        Assert.Single(DueJobs("node2"));

        // bob online at node3 (not his home): his home knows, and the next message creates no job.
        var bob = await ConnectAsync("node3", _bob, "phone");
        await alice.SendAsync(TestDevice.Text(2, _bob, "now?"));
        await NextAsync<Sent>(alice);
        Assert.Equal(2UL, (await NextAsync<Deliver>(bob, d => d.Seq == 2)).Seq);
        await ForwardedAsync("node3", "node2");
        Assert.Single(DueJobs("node2"));
    }

    [Fact]
    public async Task On_an_owner_that_is_the_recipients_home_a_device_online_at_another_node_means_no_push_job()
    {
        // dave's home is node3, which also owns his conversation with alice.
        var alice = _alice;
        var dave = _cluster.UserAt("dave", "node3", d => _cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(alice, d)) == "node3");
        var sender = await ConnectAsync("node1", _alice, "phone");
        var phone = await ConnectAsync("node2", dave, "phone");

        await sender.SendAsync(TestDevice.Text(1, dave, "online elsewhere"));
        await NextAsync<Sent>(sender);
        await NextAsync<Deliver>(phone);
        Assert.Empty(DueJobs("node3"));

        await phone.SendAsync(new Disconnect());
        await phone.EndedAsync();
        // node2 → node3 is one ordered stream: once node3 answers a HISTORY from node2, it has handled the close.
        var bob = await ConnectAsync("node2", _bob, "phone");
        await bob.SendAsync(new History { RequestId = 1, ConversationId = _conversation });
        Assert.Equal(ReasonCode.ConversationNotFound, (await NextAsync<Error>(bob)).Reason); // node3's answer: no message yet

        await sender.SendAsync(TestDevice.Text(2, dave, "offline now"));
        await NextAsync<Sent>(sender);
        var job = Assert.Single(DueJobs("node3"));
        Assert.Equal((dave, 2UL), (job.UserId, job.Seq));
    }

    [Fact]
    public async Task Signal_operations_are_checked_like_every_other_mesh_operation()
    {
        var link = _cluster["node1"].Cluster.LinkTo("node2")!;
        var epoch = _cluster["node1"].Cluster.CurrentEpoch;
        async Task<MeshReply> AskAsync(ClusterOpKind kind, IMessage payload) => await link.TryRequest(kind, epoch, payload.ToByteArray())!.WaitAsync(TestDevice.Timeout);

        // A receipt for alice goes to her home, node1: node2 refuses it and names node1; nothing is kept.
        var receipt = new Receipt { ConversationId = _conversation, Kind = ReceiptKind.Read, UpToSeq = 1, ReaderUserId = _bob };
        var stale = await AskAsync(ClusterOpKind.ReceiptForUser, new ReceiptForUser { User = _alice, Receipt = receipt.ToByteString() });
        Assert.Equal((ChatBroker.Cluster.Mesh.Wire.MeshStatus.StaleEpoch, "node1"), (stale.Status, stale.Owner));
        // A READ goes to the conversation's owner, node3; bob's keys live at node2, alice's do not.
        Assert.Equal("node3", (await AskAsync(ClusterOpKind.ReadReceipt, new ReadReceipt { User = _bob, Device = "phone", ConversationId = _conversation, UpToSeq = 1 })).Owner);
        Assert.Equal("node1", (await AskAsync(ClusterOpKind.FetchKeys, new FetchKeysRequest { Fetch = new FetchKeys { UserId = _alice }.ToByteString() })).Owner);

        // Reserved or empty ids and garbage are refused with a reason; the stream goes on.
        var reserved = await AskAsync(ClusterOpKind.ReceiptForUser, new ReceiptForUser { User = "#home/node2", Receipt = receipt.ToByteString() });
        Assert.Equal((ChatBroker.Cluster.Mesh.Wire.MeshStatus.Rejected, (uint)ReasonCode.InvalidField), (reserved.Status, reserved.Reason));
        var garbage = await link.TryRequest(ClusterOpKind.DeviceNotice, epoch, [0xFF, 0xFF])!.WaitAsync(TestDevice.Timeout);
        Assert.Equal((ChatBroker.Cluster.Mesh.Wire.MeshStatus.Rejected, (uint)ReasonCode.MalformedBody), (garbage.Status, garbage.Reason));
        var keys = await AskAsync(ClusterOpKind.FetchKeys, new FetchKeysRequest { Fetch = new FetchKeys { UserId = _bob }.ToByteString() });
        Assert.Equal((uint)ReasonCode.KeysNotFound, SignalResult.Parser.ParseFrom(keys.Reply).Reason);
        Assert.Empty(_cluster["node2"].Broker.Store.ListReceipts(_alice, 10));
    }

    private IReadOnlyList<Storage.PushJob> DueJobs(string node) =>
        _cluster[node].Broker.Store.ListDuePushJobs(long.MaxValue, 100);

    /// <summary>Connects with receipts, typing and presence, and reads up to the end of the catch-up.</summary>
    private async Task<TestDevice> ConnectAsync(string node, string user, string device)
    {
        var harness = _cluster[node].Broker;
        var connection = harness.Open();
        var connect = harness.ConnectPacket(user, device);
        connect.Capabilities = AllCapabilities;
        await connection.SendAsync(connect);
        Assert.Equal(ReasonCode.Success, (await connection.ExpectAsync<Connack>()).Reason);
        await NextAsync<SyncDone>(connection);
        return connection;
    }

    /// <summary>The next <typeparamref name="T"/> (that matches), skipping other packets (receipts, deliveries,
    /// presence of others: what a test does not look at), at most 50 of them.</summary>
    private static async Task<T> NextAsync<T>(TestDevice device, Func<T, bool>? match = null)
        where T : class, IMessage
    {
        for (var skipped = 0; skipped < 50; skipped++)
        {
            var message = await device.ReceiveAsync();
            Assert.NotNull(message);
            if (message is T wanted && (match is null || match(wanted)))
            {
                return wanted;
            }

            Assert.False(message is Error && typeof(T) != typeof(Error), $"unexpected {message}");
        }

        throw new Xunit.Sdk.XunitException($"no {typeof(T).Name} in 50 packets");
    }

    /// <summary>Reads receipts until the device knows bob delivered and read up to the given seqs.</summary>
    private async Task ExpectReceiptsAsync(TestDevice device, ulong delivered, ulong read)
    {
        ulong knownDelivered = 0, knownRead = 0;
        while (knownDelivered < delivered || knownRead < read)
        {
            var receipt = await NextAsync<Receipt>(device);
            Assert.Equal((_conversation, _bob), (receipt.ConversationId, receipt.ReaderUserId));
            if (receipt.Kind == ReceiptKind.Read)
            {
                knownRead = Math.Max(knownRead, receipt.UpToSeq);
            }
            else
            {
                knownDelivered = Math.Max(knownDelivered, receipt.UpToSeq);
            }
        }

        Assert.Equal((delivered, read), (knownDelivered, knownRead));
    }

    private async Task ForwardedAsync(string owner, string home)
    {
        using var timeout = new CancellationTokenSource(TestDevice.Timeout);
        await _cluster[owner].Cluster.WhenForwardedAsync(home, timeout.Token);
    }
}
