using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Tests.Core;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Cluster;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Ring;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// Fencing (docs/cluster.md, "Failover"): a primary whose ranges can fail over acknowledges only while its lease is
/// certainly alive for the safety margin more, measured on its own clock from the send time of its last confirmed
/// renewal. The node's clock is a <see cref="ManualClock"/>, and the coordination store is made unreachable so the
/// lease cannot be renewed.
/// </summary>
public sealed class FencingTests
{
    [Fact]
    public async Task A_primary_that_cannot_renew_its_lease_stops_acknowledging_margin_before_it_can_expire()
    {
        var clock = new ManualClock();
        using var coordination = new InMemoryCoordinationStore();
        await using var broker = new SessionHarness(store: new InMemoryChatStore());
        await using var node = new ClusterNode("node1", broker.Context.Chat, broker.Context.Directory,
            new ClusterRoutingOptions { LeaseSafetyMargin = TimeSpan.FromSeconds(1), RetryAfter = TimeSpan.FromMilliseconds(300) });
        node.UseSignals(broker.Context.Presence, broker.Context.Typing, broker.Context.Keys);
        await using var coordinator = new InMemoryCoordinator(coordination, new ClusterOptions
        {
            NodeId = "node1",
            AdvertiseMesh = "127.0.0.1:9",
            LeaseTtl = TimeSpan.FromSeconds(5),
            Time = clock,
        });
        await coordinator.StartAsync(CancellationToken.None); // the registration's grant counts as the first renewal

        // Two members; node1's ranges have an in-sync replica (node2, never started), so they could fail over.
        var map = ClusterMap.Empty with { VirtualNodes = 16, ReplicationFactor = 2 };
        map = map.WithMember(new ClusterMember("node1", "127.0.0.1:9", "", MemberState.Active))
            .WithMember(new ClusterMember("node2", "127.0.0.1:9", "", MemberState.Active));
        map = ReplicaPlacement.WithInSync(map with { ReplicaSets = ReplicaPlacement.Derive(map) }, "node1", "node2", inSync: true)!;
        var written = await coordinator.TryUpdateMapAsync(map, CancellationToken.None);
        Assert.True(written.Applied, written.Error);
        node.Start(coordinator.View);
        using (var timeout = new CancellationTokenSource(TestDevice.Timeout))
        {
            await node.WaitForEpochAsync((ulong)written.Map.Epoch, timeout.Token);
        }

        // node2 is never started: the replication tap the node installed for the map's sets would wait for it. The test
        // stands in for it with a tap that acknowledges every batch at once (what an in-sync replica does).
        broker.Store.SetReplicationTap(new AcknowledgingTap());
        var ring = HashRing.Create(["node1", "node2"], 16);
        var aliceId = RingPlacement.UserAt(ring, "alice", "node1");
        var bobId = RingPlacement.UserAt(ring, "bob", "node1", b => ring.ConversationOwner(ClusterOps.DirectConversationId(aliceId, b)) == "node1");
        var alice = await broker.ConnectAsync(aliceId, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, bobId, "one"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        var group = ChatStore.FirstDrawnGroupId;
        while (ring.ConversationOwner(group) != "node1")
        {
            group++;
        }

        var create = new GroupRequest { RequestId = 1, Create = new GroupCreate { Title = "team" } };
        create.Create.MemberUserIds.Add("erin"); // a group of users not connected here: nothing is delivered to alice
        Assert.Equal(ReasonCode.Success, (await broker.Context.Groups.HandleOwnedAsync("dave", create, 65536, group, CancellationToken.None)).Error);

        // etcd is out of reach: no renewal from now on. 3.9 s after the last one the lease is still certain for 1 s more.
        coordination.SetReachable(false);
        clock.Advance(TimeSpan.FromMilliseconds(3900));
        Assert.True(coordinator.View.IsLeaseValid(TimeSpan.FromSeconds(1)));
        await alice.SendAsync(TestDevice.Text(2, bobId, "two"));
        Assert.Equal(2UL, (await alice.ExpectAsync<Sent>()).Seq);

        // 4 s: within the margin of the TTL. Nothing more is written or acknowledged; the device may retry.
        clock.Advance(TimeSpan.FromMilliseconds(100));
        await alice.SendAsync(TestDevice.Text(3, bobId, "three"));
        var error = await alice.ExpectAsync<Error>();
        Assert.Equal((ReasonCode.ServerUnavailable, 3UL, 300UL), (error.Reason, error.RequestId, error.RetryAfterMs));
        await alice.SendAsync(TestDevice.Text(2, bobId, "two"));
        Assert.Equal(ReasonCode.ServerUnavailable, (await alice.ExpectAsync<Error>()).Reason); // not even a duplicate's SENT
        Assert.Equal(2, node.Failover.Fenced);
        var conversation = ClusterOps.DirectConversationId(aliceId, bobId);
        Assert.Equal(2UL, broker.Store.GetLastSeq(conversation));

        // A group change is fenced the same way: neither made nor acknowledged.
        var add = new GroupRequest { RequestId = 2, AddMembers = new GroupMembers { ConversationId = group } };
        add.AddMembers.UserIds.Add("carol");
        var refused = await broker.Context.Groups.HandleAsync("dave", add, 65536, CancellationToken.None);
        Assert.Equal(ReasonCode.ServerUnavailable, refused.Error);
        Assert.Null(broker.Store.GetMember(group, "carol"));

        // So are key uploads (and fetches, which take a one-time prekey) at the user's home.
        var upload = new KeysUpload
        {
            RequestId = 5,
            IdentityKey = ByteString.CopyFrom(1, 2, 3),
            SignedPrekey = new SignedPrekey { KeyId = 1, PublicKey = ByteString.CopyFrom(4), Signature = ByteString.CopyFrom(5) },
        };
        await alice.SendAsync(upload);
        Assert.Equal((ReasonCode.ServerUnavailable, 5UL), ((await alice.ExpectAsync<Error>()).Reason, 5UL));
        Assert.Null(broker.Store.GetPrekeyBundle(aliceId, "phone"));
        Assert.Equal(4, node.Failover.Fenced);

        // A renewal etcd confirms (sent now) opens the fence again; the retries resolve to one message each.
        coordination.SetReachable(true);
        coordinator.View.RecordLeaseRenewal(clock.GetTimestamp(), TimeSpan.FromSeconds(5));
        await alice.SendAsync(TestDevice.Text(3, bobId, "three"));
        Assert.Equal(3UL, (await alice.ExpectAsync<Sent>()).Seq);
        await alice.SendAsync(TestDevice.Text(2, bobId, "two"));
        Assert.Equal(2UL, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(3UL, broker.Store.GetLastSeq(conversation));
        Assert.Equal(ReasonCode.Success, (await broker.Context.Groups.HandleAsync("dave", add, 65536, CancellationToken.None)).Error);
        Assert.NotNull(broker.Store.GetMember(group, "carol"));
        await alice.SendAsync(upload);
        Assert.Equal(5UL, (await alice.ExpectAsync<KeysUploaded>()).RequestId);
        Assert.NotNull(broker.Store.GetPrekeyBundle(aliceId, "phone"));
    }

    [Fact]
    public async Task Without_an_in_sync_replica_nothing_can_fail_over_and_the_node_keeps_serving_without_etcd()
    {
        var clock = new ManualClock();
        using var coordination = new InMemoryCoordinationStore();
        await using var broker = new SessionHarness(store: new InMemoryChatStore());
        await using var node = new ClusterNode("node1", broker.Context.Chat, broker.Context.Directory);
        await using var coordinator = new InMemoryCoordinator(coordination, new ClusterOptions
        {
            NodeId = "node1",
            AdvertiseMesh = "127.0.0.1:9",
            LeaseTtl = TimeSpan.FromSeconds(5),
            Time = clock,
        });
        await coordinator.StartAsync(CancellationToken.None);
        var written = await coordinator.TryUpdateMapAsync(ClusterMap.Empty.WithMember(new ClusterMember("node1", "127.0.0.1:9", "", MemberState.Active)), CancellationToken.None);
        node.Start(coordinator.View);
        using (var timeout = new CancellationTokenSource(TestDevice.Timeout))
        {
            await node.WaitForEpochAsync((ulong)written.Map.Epoch, timeout.Token);
        }

        var alice = await broker.ConnectAsync("alice", "phone");
        await alice.ExpectAsync<SyncDone>();
        coordination.SetReachable(false);
        clock.Advance(TimeSpan.FromSeconds(30));
        Assert.False(coordinator.View.IsLeaseValid(TimeSpan.Zero));
        await alice.SendAsync(TestDevice.Text(1, "bob", "still served"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(0, node.Failover.Fenced);
    }

    [Fact]
    public async Task Connack_names_the_client_addresses_of_the_members_that_serve_clients()
    {
        using var coordination = new InMemoryCoordinationStore();
        await using var broker = new SessionHarness(store: new InMemoryChatStore());
        await using var node = new ClusterNode("node1", broker.Context.Chat, broker.Context.Directory);
        await using var coordinator = new InMemoryCoordinator(coordination, new ClusterOptions { NodeId = "node1", AdvertiseMesh = "127.0.0.1:9" });
        await coordinator.StartAsync(CancellationToken.None);
        var map = ClusterMap.Empty
            .WithMember(new ClusterMember("node1", "127.0.0.1:9", "10.77.0.1:7883", MemberState.Active))
            .WithMember(new ClusterMember("node2", "127.0.0.1:9", "10.77.0.2:7883", MemberState.Joining))
            .WithMember(new ClusterMember("node3", "127.0.0.1:9", "10.77.0.3:7883", MemberState.Failed, 1))
            .WithMember(new ClusterMember("node4", "127.0.0.1:9", "", MemberState.Active));
        var written = await coordinator.TryUpdateMapAsync(map, CancellationToken.None);
        node.Start(coordinator.View);
        using (var timeout = new CancellationTokenSource(TestDevice.Timeout))
        {
            await node.WaitForEpochAsync((ulong)written.Map.Epoch, timeout.Token);
        }

        var device = broker.Open();
        await device.SendAsync(broker.ConnectPacket("alice", "phone"));
        var connack = await device.ExpectAsync<Connack>();
        Assert.Equal(ReasonCode.Success, connack.Reason);
        Assert.Equal(["10.77.0.1:7883", "10.77.0.2:7883"], connack.ClusterNodes);
    }

    /// <summary>An in-sync replica that has every batch at once.</summary>
    private sealed class AcknowledgingTap : IReplicationTap
    {
        public void OnCommitted(CommittedBatch batch) => batch.Complete();
    }
}
