using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>
/// Replication's changes of the map (docs/cluster.md, "Replication"), as compare-and-set steps over the in-memory
/// coordinator: writing the sets the ring gives, moving a replica in and out of an in-sync list, and what a member's
/// removal does to the sets.
/// </summary>
public sealed class ReplicationMembershipTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(15);

    private readonly InMemoryCoordinationStore _store = new();
    private InMemoryCoordinator _n1 = null!;

    public async Task InitializeAsync()
    {
        _n1 = new InMemoryCoordinator(_store, new ClusterOptions { NodeId = "n1", LeaseTtl = ClusterOptions.MinLeaseTtl, AdvertiseMesh = "10.77.0.1:7890" });
        await _n1.StartAsync(Soon());
    }

    public async Task DisposeAsync()
    {
        await _n1.DisposeAsync();
        _store.Dispose();
    }

    [Fact]
    public async Task The_sets_the_ring_gives_are_written_once_and_every_new_replica_starts_out_of_sync()
    {
        await WriteAsync(Map("n1", "n2", "n3"));
        var membership = new ClusterMembership(_n1);

        var written = await membership.WriteReplicaSetsAsync(Soon());
        Assert.Equal(MapChangeStatus.Applied, written.Status);
        Assert.Equal(["n1", "n2", "n3"], written.Map.ReplicaSets.Select(s => s.Primary));
        Assert.All(written.Map.ReplicaSets, s => Assert.Equal(2, s.Replicas.Length));
        Assert.All(written.Map.ReplicaSets, s => Assert.Empty(s.InSync));
        Assert.True(ReplicaPlacement.IsCurrent(written.Map));

        Assert.Equal(MapChangeStatus.Unchanged, (await membership.WriteReplicaSetsAsync(Soon())).Status);
    }

    [Fact]
    public async Task The_sets_wait_while_a_member_is_joining_or_leaving()
    {
        await WriteAsync(Map("n1", "n2").WithMember(Member("n3") with { State = MemberState.Joining }));
        var result = await new ClusterMembership(_n1).WriteReplicaSetsAsync(Soon());
        Assert.Equal(MapChangeStatus.Unchanged, result.Status);
        Assert.Empty(result.Map.ReplicaSets);
    }

    [Fact]
    public async Task A_replica_moves_in_and_out_of_the_in_sync_list_only_by_compare_and_set_of_a_serving_member()
    {
        await WriteAsync(Map("n1", "n2", "n3"));
        var membership = new ClusterMembership(_n1);
        await membership.WriteReplicaSetsAsync(Soon());

        var added = await membership.SetInSyncAsync("n1", "n2", inSync: true, "n1", null, Soon());
        Assert.Equal(MapChangeStatus.Applied, added.Status);
        Assert.Equal(["n2"], ReplicaPlacement.Find(added.Map, "n1")!.InSync.ToArray());
        Assert.Equal(MapChangeStatus.Unchanged, (await membership.SetInSyncAsync("n1", "n2", inSync: true, "n1", null, Soon())).Status);

        // An add is valid only on the ring the catch-up copied.
        var stale = await membership.SetInSyncAsync("n1", "n3", inSync: true, "n1", _ => false, Soon());
        Assert.Equal(MapChangeStatus.Refused, stale.Status);
        Assert.Equal(["n2"], ReplicaPlacement.Find(stale.Map, "n1")!.InSync.ToArray());

        // A node not listed as a replica, and a proposer that is Failed in the stored map, change nothing.
        Assert.Equal(MapChangeStatus.Refused, (await membership.SetInSyncAsync("n1", "n9", inSync: true, "n1", null, Soon())).Status);
        var map = await _n1.ReadMapAsync(Soon());
        await WriteAsync(map.WithMember(map.FindMember("n1")! with { State = MemberState.Failed, FailedAtMs = 1 }));
        var fenced = await membership.SetInSyncAsync("n1", "n2", inSync: false, "n1", null, Soon());
        Assert.Equal(MapChangeStatus.Refused, fenced.Status);
        Assert.Equal(["n2"], ReplicaPlacement.Find(fenced.Map, "n1")!.InSync.ToArray());

        // n2 is the failed node's last live in-sync replica: it serves its ranges, and out of the list they would have no
        // server (seed 343 on f325191). It stays, however it lags.
        var last = await membership.SetInSyncAsync("n1", "n2", inSync: false, "n3", null, Soon());
        Assert.Equal(MapChangeStatus.Refused, last.Status);
        Assert.Contains("last live in-sync replica", last.Message);
        Assert.Equal(["n2"], ReplicaPlacement.Find(last.Map, "n1")!.InSync.ToArray());

        // With n3 in sync too, a member serving the failed node's ranges takes a lagging replica out: n3 takes its ranges.
        map = await _n1.ReadMapAsync(Soon());
        await WriteAsync(ReplicaPlacement.WithInSync(map, "n1", "n3", inSync: true)!);
        var removed = await membership.SetInSyncAsync("n1", "n2", inSync: false, "n3", null, Soon());
        Assert.Equal(MapChangeStatus.Applied, removed.Status);
        Assert.Equal(["n3"], ReplicaPlacement.Find(removed.Map, "n1")!.InSync.ToArray());
        Assert.Equal(MapChangeStatus.Refused, (await membership.SetInSyncAsync("n1", "n3", inSync: false, "n2", null, Soon())).Status);
    }

    [Fact]
    public void A_member_taken_out_of_the_map_is_in_no_replica_set()
    {
        var map = Map("n1", "n2", "n3") with { ReplicaSets = [] };
        map = map with { ReplicaSets = ReplicaPlacement.Derive(map) };
        map = ReplicaPlacement.WithInSync(map, "n1", "n3", inSync: true)!;

        var without = map.WithoutMember("n3");
        Assert.Null(without.Validate());
        Assert.DoesNotContain(without.ReplicaSets, s => s.Primary == "n3");
        Assert.All(without.ReplicaSets, s => Assert.DoesNotContain("n3", s.Replicas));
        Assert.All(without.ReplicaSets, s => Assert.DoesNotContain("n3", s.InSync));
    }

    [Fact]
    public async Task A_leave_that_completes_resets_every_in_sync_list_since_the_moved_ranges_were_not_replicated()
    {
        var map = Map("n1", "n2", "n3");
        map = map with { ReplicaSets = ReplicaPlacement.Derive(map) };
        foreach (var set in map.ReplicaSets)
        {
            foreach (var r in set.Replicas)
            {
                map = ReplicaPlacement.WithInSync(map, set.Primary, r, inSync: true)!;
            }
        }

        var written = await WriteAsync(map.WithMember(Member("n3") with { State = MemberState.Leaving }));
        var done = await new ClusterMembership(_n1) { HandOverRanges = true }.CompleteAsync("n3", written.Epoch, Soon());
        Assert.Equal(MapChangeStatus.Applied, done.Status);
        Assert.Null(done.Map.FindMember("n3"));
        Assert.Empty(done.Map.ReplicaSets); // written again by the first member, every replica out of sync until it caught up
    }

    [Fact]
    public void Removing_a_failed_member_keeps_a_replica_in_sync_only_where_it_already_replicated_the_range()
    {
        var map = Map("n1", "n2", "n3", "n4") with { ReplicationFactor = 2 };
        map = map with { ReplicaSets = ReplicaPlacement.Derive(map) };
        foreach (var set in map.ReplicaSets)
        {
            foreach (var r in set.Replicas)
            {
                map = ReplicaPlacement.WithInSync(map, set.Primary, r, inSync: true)!;
            }
        }

        map = map.WithMember(Member("n4") with { State = MemberState.Failed, FailedAtMs = 1 });
        var removed = RangeOwners.WithoutFailed(map, "n4");
        Assert.NotNull(removed);

        var before = HashRing.Create(["n1", "n2", "n3", "n4"], 32);
        var after = HashRing.Create(["n1", "n2", "n3"], 32);
        var oldChain = new int[2];
        var newChain = new int[2];
        var moved = 0;
        for (var q = 0; q < before.PointCount; q++)
        {
            before.GetOwners(before.PointAt(q), oldChain);
            after.GetOwners(before.PointAt(q), newChain);
            var (primary, replica) = (after.Nodes[newChain[0]], after.Nodes[newChain[1]]);
            var wasReplica = before.Nodes[oldChain[1]] == replica;
            var servedIt = before.Nodes[oldChain[0]] == replica || (before.Nodes[oldChain[0]] == "n4" && before.Nodes[oldChain[1]] == replica);
            if (!wasReplica && !servedIt)
            {
                // A range whose replica moved up to a node that never had it: that node is not in sync for the primary.
                moved++;
                Assert.DoesNotContain(replica, ReplicaPlacement.Find(removed!, primary)!.InSync);
            }
        }

        Assert.True(moved > 0, "the ring gave no range a new replica; pick another layout");
    }

    private static ClusterMap Map(params string[] ids)
    {
        var map = ClusterMap.Empty with { VirtualNodes = 32, ReplicationFactor = 3 };
        foreach (var id in ids)
        {
            map = map.WithMember(Member(id));
        }

        return map;
    }

    private async Task<ClusterMap> WriteAsync(ClusterMap map)
    {
        var result = await _n1.TryUpdateMapAsync(map with { Epoch = (await _n1.ReadMapAsync(Soon())).Epoch }, Soon());
        Assert.True(result.Applied, result.Error);
        return result.Map;
    }

    private static ClusterMember Member(string nodeId) =>
        new(nodeId, $"10.77.0.{nodeId[^1]}:7890", $"10.77.0.{nodeId[^1]}:7883", MemberState.Active);

    private static CancellationToken Soon() => new CancellationTokenSource(Patience).Token;
}
