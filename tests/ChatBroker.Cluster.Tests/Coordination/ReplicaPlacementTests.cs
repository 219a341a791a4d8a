using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Cluster.Tests.Coordination;

public sealed class ReplicaPlacementTests
{
    private static ClusterMap MapOf(int factor, params string[] ids)
    {
        var map = ClusterMap.Empty with { ReplicationFactor = factor, VirtualNodes = 32 };
        foreach (var id in ids)
        {
            map = map.WithMember(new ClusterMember(id, id + ":7890", id + ":7883", MemberState.Active));
        }

        return map;
    }

    [Fact]
    public void The_effective_factor_is_at_most_the_members_that_own_ranges()
    {
        Assert.Equal(1, ReplicaPlacement.EffectiveFactor(MapOf(3, "a")));
        Assert.Equal(2, ReplicaPlacement.EffectiveFactor(MapOf(3, "a", "b")));
        Assert.Equal(3, ReplicaPlacement.EffectiveFactor(MapOf(3, "a", "b", "c", "d")));
        var joining = MapOf(3, "a", "b").WithMember(new ClusterMember("c", "c:1", "c:2", MemberState.Joining));
        Assert.Equal(2, ReplicaPlacement.EffectiveFactor(joining));
        Assert.Empty(ReplicaPlacement.Derive(MapOf(1, "a", "b", "c")));
    }

    [Fact]
    public void Every_key_placed_by_the_ring_has_its_replicas_in_its_primarys_set_and_new_replicas_start_out_of_sync()
    {
        var map = MapOf(2, "a", "b", "c", "d", "e");
        var sets = ReplicaPlacement.Derive(map);
        Assert.Equal(["a", "b", "c", "d", "e"], sets.Select(s => s.Primary));
        Assert.All(sets, s => Assert.Empty(s.InSync));
        Assert.All(sets, s => Assert.DoesNotContain(s.Primary, s.Replicas));

        var ring = HashRing.Create(map.Members.Select(m => m.NodeId), map.VirtualNodes);
        Span<int> owners = stackalloc int[2];
        for (ulong id = 1; id <= 2000; id++)
        {
            Assert.Equal(2, ring.GetOwners(HashRing.HashConversation(id), owners));
            var set = ReplicaPlacement.Find(map with { ReplicaSets = sets }, ring.Nodes[owners[0]])!;
            Assert.Contains(ring.Nodes[owners[1]], set.Replicas);
        }
    }

    [Fact]
    public void In_sync_changes_by_map_and_survive_a_new_derivation_only_for_replicas_that_stay()
    {
        var map = MapOf(3, "a", "b", "c");
        map = map with { ReplicaSets = ReplicaPlacement.Derive(map) };
        Assert.False(ReplicaPlacement.IsCurrent(map with { ReplicaSets = [] }));
        Assert.True(ReplicaPlacement.IsCurrent(map));
        Assert.Equal(["b", "c"], ReplicaPlacement.Find(map, "a")!.Replicas.ToArray());

        map = ReplicaPlacement.WithInSync(map, "a", "c", inSync: true)!;
        map = ReplicaPlacement.WithInSync(map, "a", "b", inSync: true)!;
        Assert.Equal(["b", "c"], ReplicaPlacement.Find(map, "a")!.InSync.ToArray());
        Assert.True(ReplicaPlacement.IsCurrent(map)); // derivation keeps what is in sync
        Assert.Null(ReplicaPlacement.WithInSync(map, "a", "z", inSync: true));

        var dropped = ReplicaPlacement.WithInSync(map, "a", "b", inSync: false)!;
        Assert.Equal(["c"], ReplicaPlacement.Find(dropped, "a")!.InSync.ToArray());
        Assert.Equal(["b", "c"], ReplicaPlacement.Find(dropped, "a")!.Replicas.ToArray());
        Assert.Null(dropped.Validate());

        // A fourth member: a's replicas that stay keep their status, a new replica of a starts out of sync.
        var grown = dropped.WithMember(new ClusterMember("d", "d:1", "d:2", MemberState.Active));
        var a = ReplicaPlacement.Derive(grown).Single(s => s.Primary == "a");
        Assert.All(a.InSync, r => Assert.Equal("c", r));
        Assert.DoesNotContain("d", a.InSync);
    }
}
