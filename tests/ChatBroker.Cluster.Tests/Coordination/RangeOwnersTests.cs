using System.Collections.Immutable;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>Failover in the map: who serves a range (<see cref="RangeOwners"/>), marking a member Failed, removing it.</summary>
public sealed class RangeOwnersTests
{
    private const int Keys = 4000;

    private static ClusterMap MapOf(int factor, params string[] ids)
    {
        var map = ClusterMap.Empty with { ReplicationFactor = factor, VirtualNodes = 32, Epoch = 7 };
        foreach (var id in ids)
        {
            map = map.WithMember(new ClusterMember(id, id + ":7890", id + ":7883", MemberState.Active));
        }

        return map with { ReplicaSets = ReplicaPlacement.Derive(map) };
    }

    /// <summary>The map with every replica of every set in sync.</summary>
    private static ClusterMap AllInSync(ClusterMap map)
    {
        foreach (var set in map.ReplicaSets)
        {
            foreach (var replica in set.Replicas)
            {
                map = ReplicaPlacement.WithInSync(map, set.Primary, replica, inSync: true)!;
            }
        }

        return map;
    }

    private static ClusterMap Failed(ClusterMap map, string id, long atMs = 1000) =>
        map.WithMember(map.FindMember(id)! with { State = MemberState.Failed, FailedAtMs = atMs });

    private static HashRing RingOf(ClusterMap map) => HashRing.Create(map.Members.Select(m => m.NodeId), map.VirtualNodes);

    [Fact]
    public void Without_a_failed_member_every_key_is_served_by_its_ring_owner()
    {
        var map = AllInSync(MapOf(3, "a", "b", "c", "d"));
        var owners = RangeOwners.Create(map)!;
        var ring = RingOf(map);
        Assert.False(owners.HasFailed);
        for (ulong id = 1; id <= Keys; id++)
        {
            Assert.Equal(ring.ConversationOwner(id), owners.ConversationOwner(id));
            Assert.Equal(ring.UserHome($"u{id}"), owners.UserHome($"u{id}"));
        }
    }

    [Fact]
    public void A_failed_members_ranges_go_to_their_first_in_sync_replica_in_ring_order_and_nothing_else_moves()
    {
        var healthy = AllInSync(MapOf(3, "a", "b", "c", "d", "e"));
        // c's set: only one replica in sync, so some of c's ranges skip their first replica.
        var cSet = ReplicaPlacement.Find(healthy, "c")!;
        var onlyInSync = cSet.Replicas[^1];
        var map = healthy;
        foreach (var r in cSet.Replicas)
        {
            map = ReplicaPlacement.WithInSync(map, "c", r, inSync: r == onlyInSync)!;
        }

        map = Failed(map, "c");
        var owners = RangeOwners.Create(map)!;
        var ring = RingOf(map);
        Assert.True(owners.HasFailed);
        Assert.Equal(ring.Nodes, owners.Ring.Nodes); // the ring does not move
        Span<int> chain = stackalloc int[3];
        int skipped = 0, stayed = 0;
        for (ulong id = 1; id <= Keys; id++)
        {
            var hash = HashRing.HashConversation(id);
            ring.GetOwners(hash, chain);
            var expected = ring.Nodes[chain[0]];
            if (expected == "c")
            {
                expected = ring.Nodes[chain[1]] == onlyInSync ? onlyInSync : ring.Nodes[chain[2]] == onlyInSync ? onlyInSync : "";
                skipped += ring.Nodes[chain[2]] == onlyInSync ? 1 : 0;
                stayed += expected == "" ? 1 : 0;
            }

            Assert.Equal(expected, owners.ConversationOwner(id));
        }

        Assert.True(skipped > 0, "no range of c had its in-sync replica second");
        Assert.True(stayed > 0, "every range of c had the in-sync replica among its replicas");
        Assert.False(owners.ServesAny(ring.IndexOf("c"))); // ranges without an in-sync replica are served by nobody (unavailable), never by the Failed c
    }

    [Fact]
    public void A_failed_replica_is_skipped_and_a_member_whose_ranges_all_moved_serves_nothing()
    {
        var map = Failed(Failed(AllInSync(MapOf(3, "a", "b", "c", "d", "e")), "b"), "c");
        var owners = RangeOwners.Create(map)!;
        var ring = RingOf(map);
        for (ulong id = 1; id <= Keys; id++)
        {
            Assert.NotEqual("b", owners.ConversationOwner(id));
            Assert.NotEqual("c", owners.ConversationOwner(id));
        }

        Assert.False(owners.ServesAny(ring.IndexOf("c")));
        Assert.True(owners.ServesAny(ring.IndexOf("a")));
    }

    [Fact]
    public void Failed_state_and_its_time_survive_the_stored_form()
    {
        var map = Failed(AllInSync(MapOf(2, "a", "b", "c")), "b", atMs: 1_765_000_000_123);
        var decoded = ClusterMapCodec.DecodeMap(ClusterMapCodec.EncodeMap(map), 9);
        Assert.Equal(new ClusterMember("b", "b:7890", "b:7883", MemberState.Failed, 1_765_000_000_123), decoded.FindMember("b"));
        Assert.Equal(new ClusterMember("a", "a:7890", "a:7883", MemberState.Active), decoded.FindMember("a"));
        Assert.DoesNotContain("failed_at_ms\":0", System.Text.Encoding.UTF8.GetString(ClusterMapCodec.EncodeMap(map)), StringComparison.Ordinal);
    }

    [Fact]
    public void Failover_needs_an_active_member_with_a_live_in_sync_replica_and_nothing_moving()
    {
        var map = AllInSync(MapOf(3, "a", "b", "c", "d"));
        Assert.True(RangeOwners.CanFailOver(map, "a", _ => true));
        Assert.False(RangeOwners.CanFailOver(map, "a", id => id == "a")); // no replica live
        Assert.False(RangeOwners.CanFailOver(MapOf(3, "a", "b", "c", "d"), "a", _ => true)); // none in sync
        Assert.False(RangeOwners.CanFailOver(MapOf(1, "a", "b", "c"), "a", _ => true)); // no replicas at all
        Assert.False(RangeOwners.CanFailOver(Failed(map, "a"), "a", _ => true)); // already Failed
        var joining = map.WithMember(new ClusterMember("e", "e:1", "e:2", MemberState.Joining));
        Assert.False(RangeOwners.CanFailOver(joining, "a", _ => true));
    }

    [Fact]
    public void Removal_gives_each_range_to_the_node_that_served_it_and_keeps_in_sync_only_what_was_in_sync_for_both()
    {
        var map = Failed(AllInSync(MapOf(2, "a", "b", "c", "d")), "b");
        var during = RangeOwners.Create(map)!;
        var removed = RangeOwners.WithoutFailed(map, "b");
        Assert.NotNull(removed);
        Assert.Null(removed.Validate());
        Assert.Null(removed.FindMember("b"));
        Assert.Null(ReplicaPlacement.Find(removed, "b"));
        var after = RangeOwners.Create(removed)!;
        for (ulong id = 1; id <= Keys; id++)
        {
            Assert.Equal(during.ConversationOwner(id), after.ConversationOwner(id));
        }

        // A primary that took ranges of b keeps in sync only replicas that were in sync for b too.
        var bInSync = ReplicaPlacement.Find(map, "b")!.InSync;
        var ring = RingOf(map);
        var takers = Enumerable.Range(1, Keys).Select(i => (ulong)i)
            .Where(id => ring.ConversationOwner(id) == "b").Select(during.ConversationOwner).ToHashSet();
        Assert.NotEmpty(takers);
        foreach (var set in removed.ReplicaSets)
        {
            Assert.All(set.InSync, r => Assert.Contains(r, set.Replicas));
            if (takers.Contains(set.Primary))
            {
                Assert.All(set.InSync, r => Assert.Contains(r, bInSync));
            }
        }
    }

    [Fact]
    public void Removal_is_refused_while_a_range_would_go_to_a_node_that_is_not_in_sync()
    {
        var healthy = AllInSync(MapOf(3, "a", "b", "c", "d"));
        var bSet = ReplicaPlacement.Find(healthy, "b")!;
        var map = healthy;
        foreach (var r in bSet.Replicas.Skip(1))
        {
            map = ReplicaPlacement.WithInSync(map, "b", r, inSync: false)!;
        }

        // Only b's first replica (by id) is in sync: a range whose next node is another one would get no data.
        Assert.Null(RangeOwners.WithoutFailed(Failed(map, "b"), "b"));
        Assert.Null(RangeOwners.WithoutFailed(map, "b")); // not Failed
        Assert.NotNull(RangeOwners.WithoutFailed(Failed(healthy, "b"), "b"));
    }
}
