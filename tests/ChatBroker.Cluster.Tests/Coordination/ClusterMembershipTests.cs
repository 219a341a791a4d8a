using System.Collections.Immutable;
using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>Bootstrap, join and leave as compare-and-set steps on the map, over the in-memory coordinator.</summary>
public sealed class ClusterMembershipTests : IAsyncLifetime
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
    public async Task The_first_node_writes_the_first_map_with_itself_active_and_later_ones_find_it()
    {
        var n1 = await StartAsync("n1");
        var n2 = await StartAsync("n2");

        var first = await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 64, 1, Soon());
        var second = await new ClusterMembership(n2).BootstrapAsync(Member("n2"), 32, 1, Soon());

        Assert.Equal(MapChangeStatus.Applied, first.Status);
        Assert.Equal([("n1", MemberState.Active)], States(first.Map));
        Assert.Equal(64, first.Map.VirtualNodes);
        Assert.Equal(MapChangeStatus.Unchanged, second.Status);
        Assert.Equal(first.Map.Epoch, second.Map.Epoch);
        Assert.Contains("exists", second.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Nodes_bootstrapping_together_write_exactly_one_first_map()
    {
        var nodes = new[] { await StartAsync("n1"), await StartAsync("n2"), await StartAsync("n3") };

        var results = await Task.WhenAll(nodes.Select(n => Task.Run(() => new ClusterMembership(n).BootstrapAsync(Member(n.Self.NodeId), 128, 1, Soon()))));

        Assert.Single(results, r => r.Status == MapChangeStatus.Applied);
        Assert.Equal(2, results.Count(r => r.Status == MapChangeStatus.Unchanged));
        var map = await nodes[0].ReadMapAsync(Soon());
        Assert.Single(map.Members);
        Assert.Equal(MemberState.Active, map.Members[0].State);
    }

    [Fact]
    public async Task Join_lists_the_node_as_joining_then_makes_it_active()
    {
        var n1 = await StartAsync("n1");
        await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        var recording = new InterferingCoordinator(await StartAsync("n2"));

        var joined = await new ClusterMembership(recording).JoinAsync(Member("n2"), 128, 1, Soon());

        Assert.Equal(MapChangeStatus.Applied, joined.Status);
        Assert.Equal(2, recording.Proposed.Count);
        Assert.Equal([("n1", MemberState.Active), ("n2", MemberState.Joining)], States(recording.Proposed[0]));
        Assert.Equal([("n1", MemberState.Active), ("n2", MemberState.Active)], States(recording.Proposed[1]));
        Assert.Equal([("n1", MemberState.Active), ("n2", MemberState.Active)], States(joined.Map));
        await WaitUntilAsync(n1.View, v => v.Epoch == joined.Map.Epoch);
    }

    [Fact]
    public async Task Join_of_an_active_member_writes_nothing_and_join_of_changed_addresses_updates_them()
    {
        var n1 = await StartAsync("n1");
        var boot = await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        var recording = new InterferingCoordinator(n1);
        var membership = new ClusterMembership(recording);

        var again = await membership.JoinAsync(Member("n1"), 128, 1, Soon());
        Assert.Equal(MapChangeStatus.Unchanged, again.Status);
        Assert.Empty(recording.Proposed);
        Assert.Equal(boot.Map.Epoch, again.Map.Epoch);

        var moved = await membership.JoinAsync(Member("n1") with { MeshAddress = "10.77.0.9:7890" }, 128, 1, Soon());
        Assert.Equal(MapChangeStatus.Applied, moved.Status);
        Assert.Equal("10.77.0.9:7890", moved.Map.FindMember("n1")!.MeshAddress);
        Assert.Equal(MemberState.Active, moved.Map.FindMember("n1")!.State);
    }

    [Fact]
    public async Task Join_on_a_cluster_without_a_map_writes_the_first_map()
    {
        var n1 = await StartAsync("n1");

        var joined = await new ClusterMembership(n1).JoinAsync(Member("n1"), 16, 2, Soon());

        Assert.Equal(MapChangeStatus.Applied, joined.Status);
        Assert.Equal([("n1", MemberState.Active)], States(joined.Map));
        Assert.Equal((16, 2), (joined.Map.VirtualNodes, joined.Map.ReplicationFactor));
    }

    [Fact]
    public async Task Leave_marks_the_member_leaving_then_removes_it_and_every_node_sees_the_new_epoch()
    {
        var n1 = await StartAsync("n1");
        var n2 = await StartAsync("n2");
        await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        var joined = await new ClusterMembership(n2).JoinAsync(Member("n2"), 128, 1, Soon());
        var recording = new InterferingCoordinator(n1);

        var left = await new ClusterMembership(recording).LeaveAsync("n2", Soon());

        Assert.Equal(MapChangeStatus.Applied, left.Status);
        Assert.Equal([("n1", MemberState.Active), ("n2", MemberState.Leaving)], States(recording.Proposed[0]));
        Assert.Equal([("n1", MemberState.Active)], States(recording.Proposed[1]));
        Assert.True(left.Map.Epoch > joined.Map.Epoch);
        await WaitUntilAsync(n2.View, v => v.Epoch == left.Map.Epoch);
        Assert.Null(n2.View.Map.FindMember("n2"));
    }

    [Fact]
    public async Task Leave_of_an_unknown_node_or_of_the_last_member_is_refused_with_the_reason()
    {
        var n1 = await StartAsync("n1");
        var boot = await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        var membership = new ClusterMembership(n1);

        var unknown = await membership.LeaveAsync("n7", Soon());
        var last = await membership.LeaveAsync("n1", Soon());

        Assert.Equal(MapChangeStatus.Refused, unknown.Status);
        Assert.Contains("n7 is not a member; the members are n1", unknown.Message, StringComparison.Ordinal);
        Assert.Equal(MapChangeStatus.Refused, last.Status);
        Assert.Contains("last member", last.Message, StringComparison.Ordinal);
        Assert.Equal(boot.Map.Epoch, (await n1.ReadMapAsync(Soon())).Epoch);
    }

    [Fact]
    public async Task A_change_that_loses_a_race_is_decided_again_on_the_new_map_and_keeps_the_other_change()
    {
        var n1 = await StartAsync("n1");
        await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        var n3 = await StartAsync("n3");
        // Before n2's first compare-and-set, n3 joins: n2's change was derived from a map that is gone.
        var racing = new InterferingCoordinator(await StartAsync("n2"), async attempt =>
        {
            if (attempt == 1)
            {
                Assert.Equal(MapChangeStatus.Applied, (await new ClusterMembership(n3).JoinAsync(Member("n3"), 128, 1, Soon())).Status);
            }
        });

        var joined = await new ClusterMembership(racing).JoinAsync(Member("n2"), 128, 1, Soon());

        Assert.Equal(MapChangeStatus.Applied, joined.Status);
        Assert.Equal(3, racing.Proposed.Count); // lost once, then Joining, then Active
        Assert.Equal([("n1", MemberState.Active), ("n2", MemberState.Active), ("n3", MemberState.Active)], States(joined.Map));
    }

    [Fact]
    public async Task A_change_that_keeps_losing_is_refused_after_the_bound()
    {
        var n1 = await StartAsync("n1");
        await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        var other = new ClusterMembership(n1);
        var bump = 0;
        // Before every attempt another change wins (n1's mesh address keeps moving).
        var losing = new InterferingCoordinator(await StartAsync("n2"), async _ =>
            await other.JoinAsync(Member("n1") with { MeshAddress = $"10.77.0.1:{7000 + ++bump}" }, 128, 1, Soon()));

        var refused = await new ClusterMembership(losing) { MaxAttempts = 3 }.JoinAsync(Member("n2"), 128, 1, Soon());

        Assert.Equal(MapChangeStatus.Refused, refused.Status);
        Assert.Equal(3, losing.Proposed.Count);
        Assert.Contains("changed under it 3 times", refused.Message, StringComparison.Ordinal);
        Assert.Null((await n1.ReadMapAsync(Soon())).FindMember("n2"));
    }

    [Fact]
    public async Task Changes_are_refused_while_the_store_is_unreachable_and_go_through_when_it_is_back()
    {
        var n1 = await StartAsync("n1");
        var n2 = await StartAsync("n2");
        var boot = await new ClusterMembership(n1).BootstrapAsync(Member("n1"), 128, 1, Soon());
        await WaitUntilAsync(n2.View, v => v.Epoch == boot.Map.Epoch);

        _store.SetReachable(false);
        var refused = await new ClusterMembership(n2).JoinAsync(Member("n2"), 128, 1, Soon());

        Assert.Equal(MapChangeStatus.Unavailable, refused.Status);
        Assert.Contains("unreachable", refused.Message, StringComparison.Ordinal);
        Assert.Equal(boot.Map.Epoch, refused.Map.Epoch); // the node keeps the map it has
        Assert.True(n2.View.HasMap);
        Assert.False(n2.View.HasCurrentMap);

        _store.SetReachable(true);
        var joined = await new ClusterMembership(n2).JoinAsync(Member("n2"), 128, 1, Soon());
        Assert.Equal(MapChangeStatus.Applied, joined.Status);
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

    private static (string, MemberState)[] States(ClusterMap map) => [.. map.Members.Select(m => (m.NodeId, m.State))];

    private static CancellationToken Soon() => new CancellationTokenSource(Patience).Token;

    private static async Task WaitUntilAsync(ClusterView view, Func<ClusterView, bool> condition)
    {
        using var timeout = new CancellationTokenSource(Patience);
        while (true)
        {
            var changed = view.WaitForChangeAsync(timeout.Token);
            if (condition(view))
            {
                return;
            }

            await changed;
        }
    }

    /// <summary>Passes everything to a real coordinator; records each proposed map and runs a step before it is sent.</summary>
    private sealed class InterferingCoordinator(IClusterCoordinator inner, Func<int, Task>? beforeProposal = null) : IClusterCoordinator
    {
        public List<ClusterMap> Proposed { get; } = [];

        public NodeRegistration Self => inner.Self;

        public ClusterView View => inner.View;

        public Task StartAsync(CancellationToken cancellationToken) => inner.StartAsync(cancellationToken);

        public Task<ClusterMap> ReadMapAsync(CancellationToken cancellationToken) => inner.ReadMapAsync(cancellationToken);

        public Task<ImmutableArray<NodeRegistration>> ReadLiveMembersAsync(CancellationToken cancellationToken) => inner.ReadLiveMembersAsync(cancellationToken);

        public async Task<MapUpdateResult> TryUpdateMapAsync(ClusterMap proposed, CancellationToken cancellationToken)
        {
            Proposed.Add(proposed);
            if (beforeProposal is not null)
            {
                await beforeProposal(Proposed.Count);
            }

            return await inner.TryUpdateMapAsync(proposed, cancellationToken);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask; // the inner coordinator is disposed by the test
    }
}

public sealed class EtcdCoordinatorOptionsTests
{
    [Fact]
    public async Task The_shortest_etcd_timeout_the_settings_allow_makes_a_coordinator()
    {
        // cluster.etcd_timeout may be 100 ms; the HTTP/2 ping period under it may not be under 1 s.
        await using var coordinator = new EtcdCoordinator(new ClusterOptions
        {
            EtcdEndpoints = ["http://127.0.0.1:1"],
            EtcdTimeout = TimeSpan.FromMilliseconds(100),
        });

        var e = await Assert.ThrowsAsync<ClusterCoordinationException>(() => coordinator.ReadMapAsync(CancellationToken.None));
        Assert.Contains("is unreachable", e.Message, StringComparison.Ordinal);
    }
}
