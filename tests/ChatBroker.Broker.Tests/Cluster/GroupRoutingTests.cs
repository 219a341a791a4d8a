using System.Diagnostics;
using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// Groups across three in-process nodes with real mesh servers. A group lives on the ring owner of its id; the
/// tests make node1's draws land on a chosen owner (<see cref="ClusterNode.GroupIdSource"/>) so that a group
/// created through node1 is owned by node2, with members whose homes are on all three nodes and whose devices
/// connect at their home or elsewhere. The fan-out threshold is 4: groups of up to 4 members are fanned out on
/// write (inbox entries through the owner's forward queues), larger ones on read (the log on the owner).
/// </summary>
public sealed class GroupRoutingTests : IAsyncLifetime
{
    private const int Threshold = 4;

    private ClusterHarness _cluster = null!;
    private string _alice = "", _bob = "", _carol = "", _dave = "", _erin = "", _frank = "";

    public async Task InitializeAsync()
    {
        _cluster = await ClusterHarness.StartAsync(3, configure: o => o.Fanout.WriteThreshold = Threshold);
        _alice = _cluster.UserAt("alice", "node1");
        _bob = _cluster.UserAt("bob", "node2");
        _carol = _cluster.UserAt("carol", "node3");
        _dave = _cluster.UserAt("dave", "node1");
        _erin = _cluster.UserAt("erin", "node3");
        _frank = _cluster.UserAt("frank", "node2");
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>A drawn group id whose ring owner is <paramref name="owner"/>.</summary>
    private ulong IdOwnedBy(string owner)
    {
        while (true)
        {
            var id = ClusterNode.DrawGroupId();
            if (_cluster.Ring.ConversationOwner(id) == owner)
            {
                return id;
            }
        }
    }

    /// <summary>Makes every node's next group land on <paramref name="owner"/>.</summary>
    private void PlaceGroupsOn(string owner)
    {
        foreach (var node in _cluster.Nodes)
        {
            node.Cluster.GroupIdSource = () => IdOwnedBy(owner);
        }
    }

    private static GroupRequest Create(ulong requestId, string title, params string[] members)
    {
        var create = new GroupCreate { Title = title };
        create.MemberUserIds.Add(members);
        return new GroupRequest { RequestId = requestId, Create = create };
    }

    /// <summary>alice at node1 (home node1), bob at node2 (home node2), carol at node3 (home node3), dave at node3
    /// (home node1: a device away from its home).</summary>
    private async Task<GroupDevice[]> ConnectFourAsync() =>
    [
        await GroupDevice.ConnectAsync(_cluster["node1"], _alice),
        await GroupDevice.ConnectAsync(_cluster["node2"], _bob),
        await GroupDevice.ConnectAsync(_cluster["node3"], _carol),
        await GroupDevice.ConnectAsync(_cluster["node3"], _dave),
    ];

    /// <summary>Each device reads the SYSTEM message at <paramref name="seq"/> next; all of them read the same bytes.</summary>
    private static async Task<SystemEvent> EveryoneSeesSystemAsync(ulong groupId, ulong seq, params GroupDevice[] devices)
    {
        Deliver? first = null;
        foreach (var device in devices)
        {
            var deliver = await device.NextDeliverAsync();
            Assert.Equal((groupId, seq, ContentType.System), (deliver.ConversationId, deliver.Seq, deliver.ContentType));
            if (first is null)
            {
                first = deliver;
            }
            else
            {
                Assert.Equal((first.Body, first.SenderUserId, first.TimestampMs), (deliver.Body, deliver.SenderUserId, deliver.TimestampMs));
            }
        }

        return GroupDevice.SystemEventOf(first!);
    }

    [Fact]
    public async Task A_group_created_through_one_node_lives_on_its_owner_and_members_on_every_node_exchange_messages()
    {
        var devices = await ConnectFourAsync();
        var (alice, bob, carol, dave) = (devices[0], devices[1], devices[2], devices[3]);
        PlaceGroupsOn("node2");

        var created = await alice.GroupAsync(Create(1, "trip", _bob, _carol, _dave));
        var id = created.ConversationId;
        Assert.Equal(1UL, created.Seq);
        Assert.InRange(id, ChatStore.FirstDrawnGroupId, ChatStore.FirstDerivedConversationId - 1);
        Assert.Equal("node2", _cluster.Ring.ConversationOwner(id));
        Assert.Equal([_alice, _bob, _carol, _dave], _cluster["node2"].Broker.Store.ListMembers(id).Select(m => m.UserId).Order());
        Assert.Null(_cluster["node1"].Broker.Store.GetConversation(id)); // the gateway keeps nothing
        Assert.True(_cluster["node1"].Cluster.GroupMetrics.Snapshot().OpsForwarded >= 1);

        var systemEvent = await EveryoneSeesSystemAsync(id, 1, devices);
        Assert.Equal((SystemEvent.Types.Kind.GroupCreated, _alice, 4), (systemEvent.Kind, systemEvent.ActorUserId, systemEvent.UserIds.Count));

        // One message from a member on each node (dave's gateway is node3, his home node1).
        ulong seq = 1;
        foreach (var sender in devices)
        {
            await sender.SendAsync(GroupDevice.ToGroup(100 + seq, id, "from " + sender.User));
            var sent = await sender.ExpectAsync<Sent>();
            Assert.Equal((id, ++seq), (sent.ConversationId, sent.Seq));
        }

        foreach (var device in devices)
        {
            var got = new List<string>();
            for (var i = 0; i < devices.Length - 1; i++)
            {
                var deliver = await device.NextDeliverAsync();
                Assert.Equal(id, deliver.ConversationId);
                Assert.NotEqual(0UL, deliver.InboxSeq); // fan-out on write: an inbox entry at the member's home
                got.Add($"{deliver.Seq}:{deliver.Body.ToStringUtf8()}");
            }

            var expected = devices.Select((d, i) => (d, i)).Where(x => x.d != device).Select(x => $"{x.i + 2}:from {x.d.User}");
            Assert.Equal(expected, got);
        }

        // The log is on the owner only; each home has a copy of what its users got.
        Assert.Equal(5UL, _cluster["node2"].Broker.Store.GetLastSeq(id));
        Assert.Equal([1UL, 2, 3, 4, 5], _cluster["node1"].Broker.Store.ReadInbox(_alice, 0, 100).Where(e => e.ConversationId == id).Select(e => e.Seq));
    }

    [Fact]
    public async Task List_and_get_give_the_same_answer_from_every_node()
    {
        var devices = await ConnectFourAsync();
        var (alice, bob, carol) = (devices[0], devices[1], devices[2]);
        PlaceGroupsOn("node2");
        var first = (await alice.GroupAsync(Create(1, "one", _bob, _carol))).ConversationId;
        PlaceGroupsOn("node3");
        var second = (await bob.GroupAsync(Create(2, "two", _alice))).ConversationId;

        foreach (var (device, expected) in new[] { (alice, new[] { first, second }), (bob, [first, second]), (carol, [first]) })
        {
            var list = await device.GroupAsync(new GroupRequest { RequestId = 10, List = new GroupListRequest() });
            Assert.Equal(expected.Order().ToArray(), list.Groups.Select(g => g.ConversationId));
            var one = list.Groups.Single(g => g.ConversationId == first);
            Assert.Equal(("one", 3), (one.Title, one.Members.Count));
            Assert.True(one.Members.Single(m => m.UserId == _alice).Admin);
        }

        Assert.True(_cluster["node3"].Cluster.GroupMetrics.Snapshot().ListsScattered >= 1);
        var get = await carol.GroupAsync(new GroupRequest { RequestId = 11, Get = new GroupRef { ConversationId = first } });
        Assert.Equal((first, 1UL), (get.Groups.Single().ConversationId, get.Groups.Single().LastSeq));

        // Not a member: refused by the owner, answered through the gateway.
        await devices[3].SendAsync(new GroupRequest { RequestId = 12, Get = new GroupRef { ConversationId = second } });
        var error = await devices[3].ExpectAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, 12UL), (error.Reason, error.RequestId));
    }

    [Fact]
    public async Task A_drawn_id_that_is_taken_is_drawn_again()
    {
        var alice = await GroupDevice.ConnectAsync(_cluster["node1"], _alice);
        PlaceGroupsOn("node2");
        var taken = (await alice.GroupAsync(Create(1, "first", _bob))).ConversationId;
        var fresh = IdOwnedBy("node3");
        var draws = new Queue<ulong>([taken, fresh]);
        _cluster["node1"].Cluster.GroupIdSource = draws.Dequeue;

        var second = await alice.GroupAsync(Create(2, "second", _carol));
        Assert.Equal(fresh, second.ConversationId);
        Assert.Equal(1, _cluster["node1"].Cluster.GroupMetrics.Snapshot().IdsRedrawn);
        Assert.Equal("first", _cluster["node2"].Broker.Store.GetConversation(taken)!.Title); // untouched
        Assert.Equal([_alice, _bob], _cluster["node2"].Broker.Store.ListMembers(taken).Select(m => m.UserId).Order());
    }

    [Fact]
    public async Task Membership_changes_are_seen_alike_by_everyone_and_a_removed_member_gets_nothing_after()
    {
        var devices = await ConnectFourAsync();
        var (alice, bob, carol, dave) = (devices[0], devices[1], devices[2], devices[3]);
        PlaceGroupsOn("node2");
        var id = (await alice.GroupAsync(Create(1, "club", _bob, _carol))).ConversationId;
        await EveryoneSeesSystemAsync(id, 1, alice, bob, carol);

        // Added through node1 (alice is the admin); dave's device is at node3, his home node1.
        var added = await alice.GroupAsync(new GroupRequest { RequestId = 2, AddMembers = new GroupMembers { ConversationId = id, UserIds = { _dave } } });
        Assert.Equal(2UL, added.Seq);
        var addEvent = await EveryoneSeesSystemAsync(id, 2, alice, bob, carol, dave);
        Assert.Equal((SystemEvent.Types.Kind.MembersAdded, _dave), (addEvent.Kind, addEvent.UserIds.Single()));

        // bob removed: he gets the message that removed him, then nothing of the group.
        var removed = await alice.GroupAsync(new GroupRequest { RequestId = 3, RemoveMembers = new GroupMembers { ConversationId = id, UserIds = { _bob } } });
        Assert.Equal(3UL, removed.Seq);
        var removeEvent = await EveryoneSeesSystemAsync(id, 3, alice, bob, carol, dave);
        Assert.Equal((SystemEvent.Types.Kind.MembersRemoved, _bob), (removeEvent.Kind, removeEvent.UserIds.Single()));

        await carol.SendAsync(GroupDevice.ToGroup(1, id, "after bob left"));
        Assert.Equal(4UL, (await carol.ExpectAsync<Sent>()).Seq);
        foreach (var member in new[] { alice, dave })
        {
            var deliver = await member.NextDeliverAsync();
            Assert.Equal((id, 4UL, "after bob left"), (deliver.ConversationId, deliver.Seq, deliver.Body.ToStringUtf8()));
        }

        // carol leaves through node3: the remaining members and carol see it.
        var left = await carol.GroupAsync(new GroupRequest { RequestId = 4, Leave = new GroupRef { ConversationId = id } });
        Assert.Equal(5UL, left.Seq);
        Assert.Equal(SystemEvent.Types.Kind.MemberLeft, (await EveryoneSeesSystemAsync(id, 5, alice, carol, dave)).Kind);

        // What bob gets next is a direct message sent after all that, not the group's seq 4 or 5.
        await alice.SendAsync(TestDevice.Text(9, _bob, "sentinel"));
        await alice.ExpectAsync<Sent>();
        var next = await bob.NextDeliverAsync();
        Assert.Equal("sentinel", next.Body.ToStringUtf8());
        Assert.DoesNotContain(_cluster["node2"].Broker.Store.ReadInbox(_bob, 0, 100), e => e.ConversationId == id && e.Seq > 3);

        // bob is refused as a non-member wherever he asks.
        await bob.SendAsync(GroupDevice.ToGroup(2, id, "let me in"));
        Assert.Equal(ReasonCode.NotAMember, (await bob.ExpectAsync<Error>()).Reason);
        Assert.Equal([_alice, _dave], _cluster["node2"].Broker.Store.ListMembers(id).Select(m => m.UserId).Order());
    }

    [Fact]
    public async Task Group_history_is_paged_by_the_owner_through_another_node()
    {
        var devices = await ConnectFourAsync();
        PlaceGroupsOn("node2");
        var id = (await devices[0].GroupAsync(Create(1, "log", _bob, _carol))).ConversationId;
        for (ulong i = 1; i <= 3; i++)
        {
            await devices[0].SendAsync(GroupDevice.ToGroup(i, id, $"m{i}"));
            await devices[0].ExpectAsync<Sent>();
        }

        var carol = devices[2]; // at node3: neither the owner nor the creator's node
        await carol.SendAsync(new History { RequestId = 5, ConversationId = id, Limit = 10 });
        var page = await carol.ExpectAsync<HistoryPage>();
        Assert.Equal([1UL, 2, 3, 4], page.Messages.Select(m => m.Seq));
        Assert.Equal(ContentType.System, page.Messages[0].ContentType);
        Assert.Equal(["m1", "m2", "m3"], page.Messages.Skip(1).Select(m => m.Body.ToStringUtf8()));

        await devices[3].SendAsync(new History { RequestId = 6, ConversationId = id }); // dave: not a member
        Assert.Equal((ReasonCode.NotAMember, 6UL), (await devices[3].ExpectAsync<Error>()) is var e ? (e.Reason, e.RequestId) : default);
    }

    [Fact]
    public async Task A_group_send_retried_through_another_node_gets_the_same_sent_and_one_deliver()
    {
        var alice = await GroupDevice.ConnectAsync(_cluster["node1"], _alice);
        var bob = await GroupDevice.ConnectAsync(_cluster["node2"], _bob);
        PlaceGroupsOn("node2");
        var id = (await alice.GroupAsync(Create(1, "once", _bob, _carol))).ConversationId;
        await EveryoneSeesSystemAsync(id, 1, alice, bob);
        await alice.SendAsync(GroupDevice.ToGroup(7, id, "once"));
        var first = await alice.ExpectAsync<Sent>();

        // The SENT was lost: the device reconnects at node3 (taking its session over) and retries.
        var retry = new GroupDevice(await _cluster["node3"].ConnectAsync(_alice, "phone"), _alice);
        await retry.ExpectAsync<SyncDone>();
        Assert.Equal(ReasonCode.SessionTakenOver, (await alice.ExpectAsync<Disconnect>()).Reason);
        await retry.SendAsync(GroupDevice.ToGroup(7, id, "once"));
        var again = await retry.ExpectAsync<Sent>();
        Assert.Equal((first.ConversationId, first.Seq, first.TimestampMs), (again.ConversationId, again.Seq, again.TimestampMs));
        await retry.SendAsync(GroupDevice.ToGroup(8, id, "twice"));
        Assert.Equal(first.Seq + 1, (await retry.ExpectAsync<Sent>()).Seq);

        var delivers = await bob.DeliversThroughAsync(id, first.Seq + 1);
        Assert.Equal(["once", "twice"], delivers.Select(d => d.Body.ToStringUtf8()));
        Assert.Equal(3UL, _cluster["node2"].Broker.Store.GetLastSeq(id));
    }

    [Fact]
    public async Task A_large_group_is_read_from_the_owner_live_and_by_a_member_resuming_at_another_node()
    {
        var devices = await ConnectFourAsync();
        var frank = await GroupDevice.ConnectAsync(_cluster["node1"], _frank); // home node2
        var online = devices.Append(frank).ToArray();
        PlaceGroupsOn("node2");

        // Six members, above the threshold: fan-out on read. erin (home node3) is offline.
        var id = (await devices[0].GroupAsync(Create(1, "big", _bob, _carol, _dave, _erin, _frank))).ConversationId;
        await EveryoneSeesSystemAsync(id, 1, online);

        ulong seq = 1;
        foreach (var sender in online)
        {
            await sender.SendAsync(GroupDevice.ToGroup(seq, id, "from " + sender.User));
            Assert.Equal(++seq, (await sender.ExpectAsync<Sent>()).Seq);
        }

        foreach (var device in online)
        {
            var got = new List<string>();
            for (var i = 0; i < online.Length - 1; i++)
            {
                var deliver = await device.NextDeliverAsync();
                Assert.Equal((id, 0UL), (deliver.ConversationId, deliver.InboxSeq)); // from the group's log
                got.Add(deliver.Body.ToStringUtf8());
            }

            Assert.Equal(online.Where(d => d != device).Select(d => "from " + d.User), got);
        }

        Assert.DoesNotContain(_cluster["node2"].Broker.Store.ReadInbox(_bob, 0, 100), e => e.ConversationId == id && e.Seq > 1); // no inbox entries
        Assert.True(_cluster["node2"].Cluster.GroupMetrics.Snapshot().LogPosts >= 1);

        // erin connects at node1: neither her home (node3) nor the owner (node2). The SYSTEM message comes from her
        // inbox at node3, the messages from the log at node2.
        using (var timeout = new CancellationTokenSource(TestDevice.Timeout))
        {
            await _cluster["node2"].Cluster.WhenForwardedAsync("node3", timeout.Token);
        }

        var erin = new GroupDevice(await _cluster["node1"].ConnectAsync(_erin, "phone"), _erin);
        await erin.ExpectAsync<SyncDone>();
        var backlog = new List<Deliver>();
        for (var i = 0; i < online.Length + 1; i++)
        {
            backlog.Add(await erin.NextDeliverAsync());
        }

        Assert.Equal([1UL, 2, 3, 4, 5, 6], backlog.Select(d => d.Seq).Order().ToArray());
        Assert.Equal(online.Select(d => "from " + d.User), backlog.Where(d => d.ContentType != ContentType.System).OrderBy(d => d.Seq).Select(d => d.Body.ToStringUtf8()));
        Assert.True(_cluster["node1"].Cluster.GroupMetrics.Snapshot().LogReads >= 1);

        // Live from here: the owner posts it through erin's home to her gateway.
        await devices[1].SendAsync(GroupDevice.ToGroup(50, id, "live"));
        Assert.Equal(7UL, (await devices[1].ExpectAsync<Sent>()).Seq);
        var live = await erin.NextDeliverAsync();
        Assert.Equal((7UL, "live", 0UL), (live.Seq, live.Body.ToStringUtf8(), live.InboxSeq));
    }

    [Fact]
    public async Task A_member_added_to_a_large_group_while_online_gets_what_follows_and_sync_rereads_the_owner_log()
    {
        var devices = await ConnectFourAsync();
        var (alice, bob) = (devices[0], devices[1]);
        var gina = await GroupDevice.ConnectAsync(_cluster["node1"], _cluster.UserAt("gina", "node3")); // away from home
        PlaceGroupsOn("node2");
        var id = (await alice.GroupAsync(Create(1, "big", _bob, _carol, _dave, _erin))).ConversationId;
        await EveryoneSeesSystemAsync(id, 1, devices);
        await bob.SendAsync(GroupDevice.ToGroup(1, id, "before gina"));
        Assert.Equal(2UL, (await bob.ExpectAsync<Sent>()).Seq);
        Assert.Equal("before gina", (await alice.NextDeliverAsync()).Body.ToStringUtf8());

        var added = await alice.GroupAsync(new GroupRequest { RequestId = 2, AddMembers = new GroupMembers { ConversationId = id, UserIds = { gina.User } } });
        Assert.Equal(3UL, added.Seq);
        Assert.Equal(SystemEvent.Types.Kind.MembersAdded, (await EveryoneSeesSystemAsync(id, 3, gina, alice)).Kind);
        await bob.SendAsync(GroupDevice.ToGroup(2, id, "welcome"));
        Assert.Equal(4UL, (await bob.ExpectAsync<Sent>()).Seq);
        var welcome = await gina.NextDeliverAsync();
        Assert.Equal((id, 4UL, "welcome", 0UL), (welcome.ConversationId, welcome.Seq, welcome.Body.ToStringUtf8(), welcome.InboxSeq));
        Assert.Equal((4UL, "welcome"), (await alice.NextDeliverAsync()) is var live ? (live.Seq, live.Body.ToStringUtf8()) : default);

        // SYNC naming the group from seq 1: the owner checks it and the stream reads the log again from there (the
        // SYSTEM message at 3 is a position only: it came through the inbox).
        await alice.SendAsync(new Sync { RequestId = 7, Conversations = { new ConversationCursor { ConversationId = id, Seq = 1 } } });
        var reread = await alice.NextDeliverAsync();
        Assert.Equal((2UL, "before gina"), (reread.Seq, reread.Body.ToStringUtf8()));
        Assert.Equal((4UL, "welcome"), (await alice.NextDeliverAsync()) is var w ? (w.Seq, w.Body.ToStringUtf8()) : default);
        var done = await alice.ExpectAsync<SyncDone>();
        Assert.Equal((7UL, id, 4UL), (done.RequestId, done.Conversations.Single().ConversationId, done.Conversations.Single().Seq));

        // A SYNC naming a group the user is not in is refused by the owner, through the gateway.
        var frank = await GroupDevice.ConnectAsync(_cluster["node3"], _frank);
        await frank.SendAsync(new Sync { RequestId = 8, Conversations = { new ConversationCursor { ConversationId = id, Seq = 0 } } });
        var refused = await frank.ExpectAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, 8UL), (refused.Reason, refused.RequestId));
    }

    [Fact]
    public async Task One_message_to_a_300_member_group_spread_over_three_nodes_reaches_all_300()
    {
        const int Members = 300;
        var users = Enumerable.Range(0, Members).Select(i => "m" + i).ToArray();
        Assert.All(new[] { "node1", "node2", "node3" }, node => Assert.Contains(users, u => _cluster.Ring.UserHome(u) == node));
        var devices = new GroupDevice[Members];
        for (var i = 0; i < Members; i++)
        {
            devices[i] = await GroupDevice.ConnectAsync(_cluster.Nodes[i % 3], users[i]);
        }

        PlaceGroupsOn("node2");
        var id = (await devices[0].GroupAsync(Create(1, "everyone", users[1..]))).ConversationId;
        await Task.WhenAll(devices.Select(async d => Assert.Equal(1UL, (await d.NextDeliverAsync()).Seq)));

        var clock = Stopwatch.StartNew();
        await devices[0].SendAsync(GroupDevice.ToGroup(1, id, "hello, all 300"));
        Assert.Equal(2UL, (await devices[0].ExpectAsync<Sent>()).Seq);
        var received = await Task.WhenAll(devices.Skip(1).Select(async d => await d.NextDeliverAsync()));
        clock.Stop();

        Assert.All(received, d => Assert.Equal((id, 2UL, "hello, all 300"), (d.ConversationId, d.Seq, d.Body.ToStringUtf8())));
        Assert.Equal(Members - 1, received.Length);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
    }
}
