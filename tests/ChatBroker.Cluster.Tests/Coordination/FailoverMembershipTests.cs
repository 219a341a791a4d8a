using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>Marking a member Failed and removing it, as compare-and-set steps over the in-memory coordinator; the lease
/// fence of <see cref="ClusterView"/> on a clock the test moves.</summary>
public sealed class FailoverMembershipTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(15);

    private readonly InMemoryCoordinationStore _store = new();
    private readonly List<IClusterCoordinator> _nodes = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var node in _nodes)
        {
            await node.DisposeAsync();
        }

        _store.Dispose();
    }

    [Fact]
    public async Task Proposers_racing_to_fail_a_dead_member_apply_one_change_with_a_new_epoch()
    {
        var n1 = await StartAsync("n1");
        var n2 = await StartAsync("n2");
        var map = await WriteReplicatedMapAsync(n1, "n1", "n2", "n3");
        bool IsLive(string id) => id != "n3";

        var results = await Task.WhenAll(
            Task.Run(() => new ClusterMembership(n1).FailAsync("n3", IsLive, 5000, Soon())),
            Task.Run(() => new ClusterMembership(n2).FailAsync("n3", IsLive, 6000, Soon())));

        Assert.Single(results, r => r.Status == MapChangeStatus.Applied);
        Assert.Single(results, r => r.Status == MapChangeStatus.Unchanged);
        var stored = await n1.ReadMapAsync(Soon());
        Assert.True(stored.Epoch > map.Epoch);
        Assert.Equal(MemberState.Failed, stored.FindMember("n3")!.State);
        Assert.Contains(stored.FindMember("n3")!.FailedAtMs, new long[] { 5000, 6000 });
        Assert.NotEqual("n3", RangeOwners.Create(stored)!.ConversationOwner(42));
    }

    [Fact]
    public async Task A_live_member_or_one_without_an_in_sync_replica_is_not_failed()
    {
        var n1 = await StartAsync("n1");
        await WriteReplicatedMapAsync(n1, "n1", "n2", "n3");
        Assert.Equal(MapChangeStatus.Refused, (await new ClusterMembership(n1).FailAsync("n3", _ => true, 1, Soon())).Status);

        var notInSync = await n1.ReadMapAsync(Soon());
        foreach (var r in ReplicaPlacement.Find(notInSync, "n3")!.Replicas)
        {
            notInSync = ReplicaPlacement.WithInSync(notInSync, "n3", r, inSync: false)!;
        }

        Assert.True((await n1.TryUpdateMapAsync(notInSync, Soon())).Applied);
        var refused = await new ClusterMembership(n1).FailAsync("n3", id => id != "n3", 1, Soon());
        Assert.Equal(MapChangeStatus.Refused, refused.Status);
        Assert.Contains("no live in-sync replica", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_failed_member_is_removed_only_after_its_timeout_and_joins_and_leaves_wait_meanwhile()
    {
        var n1 = await StartAsync("n1");
        await WriteReplicatedMapAsync(n1, "n1", "n2", "n3");
        var membership = new ClusterMembership(n1);
        Assert.Equal(MapChangeStatus.Applied, (await membership.FailAsync("n3", id => id != "n3", 10_000, Soon())).Status);

        var join = await membership.JoinAsync(Member("n4"), 32, 3, Soon());
        Assert.Equal(MapChangeStatus.Refused, join.Status);
        Assert.Contains("n3 is Failed", join.Message, StringComparison.Ordinal);
        Assert.Equal(MapChangeStatus.Refused, (await membership.JoinAsync(Member("n3"), 32, 3, Soon())).Status);
        Assert.Equal(MapChangeStatus.Refused, (await membership.LeaveAsync("n2", Soon())).Status);

        Assert.Equal(MapChangeStatus.Refused, (await membership.RemoveFailedAsync("n3", failedBeforeMs: 9_999, Soon())).Status);
        var removed = await membership.RemoveFailedAsync("n3", failedBeforeMs: 10_000, Soon());
        Assert.Equal(MapChangeStatus.Applied, removed.Status);
        Assert.Null(removed.Map.FindMember("n3"));
        Assert.Equal(["n1", "n2"], removed.Map.ReplicaSets.Select(s => s.Primary));
        Assert.Equal(MapChangeStatus.Unchanged, (await membership.RemoveFailedAsync("n3", 10_000, Soon())).Status);
    }

    [Fact]
    public void The_fence_closes_margin_before_the_lease_can_expire_counted_from_the_renewal_send_time()
    {
        var clock = new StepClock();
        var view = new ClusterView(clock);
        var margin = TimeSpan.FromSeconds(1);
        Assert.False(view.IsLeaseValid(margin)); // no renewal confirmed yet

        var sent = clock.GetTimestamp();
        clock.Advance(TimeSpan.FromMilliseconds(300)); // the answer took 300 ms: validity still counts from the send
        view.RecordLeaseRenewal(sent, TimeSpan.FromSeconds(5));
        clock.Advance(TimeSpan.FromMilliseconds(3600)); // 3.9 s after the send
        Assert.True(view.IsLeaseValid(margin));
        Assert.Equal(TimeSpan.FromMilliseconds(1100), view.LeaseRemaining);
        clock.Advance(TimeSpan.FromMilliseconds(100)); // 4.0 s: 5 s − 1 s margin
        Assert.False(view.IsLeaseValid(margin));

        view.RecordLeaseRenewal(sent, TimeSpan.FromSeconds(5)); // an old renewal's late answer changes nothing
        Assert.False(view.IsLeaseValid(margin));
        view.RecordLeaseRenewal(clock.GetTimestamp(), TimeSpan.FromSeconds(5));
        Assert.True(view.IsLeaseValid(margin));
    }

    private async Task<ClusterMap> WriteReplicatedMapAsync(IClusterCoordinator writer, params string[] ids)
    {
        var map = ClusterMap.Empty with { VirtualNodes = 32, ReplicationFactor = 3 };
        foreach (var id in ids)
        {
            map = map.WithMember(Member(id));
        }

        map = map with { ReplicaSets = ReplicaPlacement.Derive(map) };
        foreach (var set in map.ReplicaSets)
        {
            foreach (var r in set.Replicas)
            {
                map = ReplicaPlacement.WithInSync(map, set.Primary, r, inSync: true)!;
            }
        }

        var result = await writer.TryUpdateMapAsync(map with { Epoch = (await writer.ReadMapAsync(Soon())).Epoch }, Soon());
        Assert.True(result.Applied, result.Error);
        return result.Map;
    }

    private async Task<IClusterCoordinator> StartAsync(string nodeId)
    {
        var node = new InMemoryCoordinator(_store, new ClusterOptions
        {
            NodeId = nodeId,
            LeaseTtl = ClusterOptions.MinLeaseTtl,
            AdvertiseMesh = $"10.77.0.{nodeId[^1]}:7890",
            AdvertiseClient = $"10.77.0.{nodeId[^1]}:7883",
        });
        _nodes.Add(node);
        await node.StartAsync(Soon());
        return node;
    }

    private static ClusterMember Member(string nodeId) =>
        new(nodeId, $"10.77.0.{nodeId[^1]}:7890", $"10.77.0.{nodeId[^1]}:7883", MemberState.Active);

    private static CancellationToken Soon() => new CancellationTokenSource(Patience).Token;

    /// <summary>A monotonic clock that moves only when told (the fence reads timestamps, not wall time).</summary>
    private sealed class StepClock : TimeProvider
    {
        private long _ticks = TimeSpan.TicksPerDay;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => Interlocked.Read(ref _ticks);

        public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);
    }
}
