using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>The behaviour every <see cref="IClusterCoordinator"/> must have; run against each implementation.</summary>
public abstract class CoordinatorContract : IAsyncLifetime
{
    /// <summary>The shortest lease the settings allow: expiry tests take about this long.</summary>
    private protected static readonly TimeSpan Ttl = ClusterOptions.MinLeaseTtl;

    /// <summary>Generous bound on anything that should happen promptly; a failure here is a hang, not a slow machine.</summary>
    private protected static readonly TimeSpan Patience = TimeSpan.FromSeconds(15);

    private readonly List<IClusterCoordinator> _nodes = [];

    // Each test has its own key prefix, so tests sharing one etcd never see each other's keys.
    private readonly string _prefix = "/cbtest-" + Guid.NewGuid().ToString("N")[..12];

    private protected abstract IReadOnlyList<string> Endpoints { get; }

    private protected abstract IClusterCoordinator CreateCoordinator(ClusterOptions options);

    /// <summary>Stops the node's keepalive and watch without revoking its lease, as kill -9 does.</summary>
    private protected abstract void Crash(IClusterCoordinator node);

    private protected abstract Task MakeStoreUnreachableAsync();

    private protected abstract Task RestoreStoreAsync();

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual async Task DisposeAsync()
    {
        foreach (var node in _nodes)
        {
            await node.DisposeAsync();
        }
    }

    private protected ClusterOptions Options(string nodeId, TimeSpan? ttl = null) => new()
    {
        EtcdEndpoints = Endpoints,
        EtcdPrefix = _prefix,
        NodeId = nodeId,
        LeaseTtl = ttl ?? Ttl,
        EtcdTimeout = TimeSpan.FromSeconds(2),
        AdvertiseMesh = $"10.77.0.{nodeId[^1]}:7890",
        AdvertiseClient = $"10.77.0.{nodeId[^1]}:7883",
    };

    private protected Task<IClusterCoordinator> StartNodeAsync(string nodeId, TimeSpan? ttl = null) => StartNodeAsync(Options(nodeId, ttl));

    private protected async Task<IClusterCoordinator> StartNodeAsync(ClusterOptions options)
    {
        var node = CreateCoordinator(options);
        _nodes.Add(node);
        using var timeout = new CancellationTokenSource(Patience);
        await node.StartAsync(timeout.Token);
        return node;
    }

    private protected static ClusterMember MemberOf(IClusterCoordinator node, MemberState state = MemberState.Active) =>
        new(node.Self.NodeId, node.Self.MeshAddress, node.Self.ClientAddress, state);

    /// <summary>Waits on the view's change signal (no polling) until the condition holds.</summary>
    private protected static async Task WaitUntilAsync(ClusterView view, Func<ClusterView, bool> condition, TimeSpan? within = null)
    {
        using var timeout = new CancellationTokenSource(within ?? Patience);
        while (true)
        {
            var changed = view.WaitForChangeAsync(timeout.Token);
            if (condition(view))
            {
                return;
            }

            try
            {
                await changed;
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"the condition did not hold within {(within ?? Patience).TotalSeconds} s (map epoch {view.Epoch}, members [{string.Join(", ", view.LiveMembers.Select(m => m.NodeId))}], connected {view.HasCurrentMap}, last error: {view.LastError})");
            }
        }
    }

    private static CancellationToken Soon() => new CancellationTokenSource(Patience).Token;

    [Fact]
    public async Task A_started_node_is_a_live_member_with_its_addresses_and_has_the_empty_map()
    {
        var n1 = await StartNodeAsync("n1");

        Assert.True(n1.View.HasCurrentMap);
        Assert.Equal(0, n1.View.Epoch);
        Assert.Empty(n1.View.Map.Members);
        var self = Assert.Single(n1.View.LiveMembers);
        Assert.Equal(new NodeRegistration("n1", "10.77.0.1:7890", "10.77.0.1:7883"), self);
        Assert.Null(n1.View.DisconnectedSince);
    }

    [Fact]
    public async Task A_coordinator_that_is_not_started_reads_the_map_and_the_live_members_and_changes_the_map()
    {
        // What `chatbroker cluster status|join|leave` do: no registration, no lease, no watch.
        var n1 = await StartNodeAsync("n1");
        var tool = CreateCoordinator(Options("tool"));
        _nodes.Add(tool);

        var live = await tool.ReadLiveMembersAsync(Soon());
        var applied = await tool.TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(n1)), Soon());

        Assert.Equal(["n1"], live.Select(m => m.NodeId));
        Assert.True(applied.Applied, applied.Error);
        Assert.Equal(applied.Map.Epoch, (await tool.ReadMapAsync(Soon())).Epoch);
        await WaitUntilAsync(n1.View, v => v.Epoch == applied.Map.Epoch);
    }

    [Fact]
    public async Task The_first_map_is_written_on_epoch_zero_and_only_once()
    {
        var n1 = await StartNodeAsync("n1");
        var n2 = await StartNodeAsync("n2");

        var first = await n1.TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(n1)), Soon());
        var second = await n2.TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(n2)), Soon());

        Assert.Equal(MapUpdateStatus.Applied, first.Status);
        Assert.True(first.Map.Epoch > 0);
        Assert.Equal(MapUpdateStatus.Conflict, second.Status);
        Assert.Equal(first.Map.Epoch, second.Map.Epoch);
        Assert.Equal(["n1"], second.Map.Members.Select(m => m.NodeId));
        Assert.Contains($"epoch {first.Map.Epoch}", second.Error, StringComparison.Ordinal);
        var read = await n2.ReadMapAsync(Soon());
        Assert.Equal(first.Map.Epoch, read.Epoch);
    }

    [Fact]
    public async Task A_change_made_on_a_stale_epoch_is_refused_with_the_current_map()
    {
        var n1 = await StartNodeAsync("n1");
        var n2 = await StartNodeAsync("n2");
        var v1 = (await n1.TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(n1)), Soon())).Map;
        var v2 = await n2.TryUpdateMapAsync(v1.WithMember(MemberOf(n2, MemberState.Joining)), Soon());
        Assert.True(v2.Applied);

        var stale = await n1.TryUpdateMapAsync(v1 with { VirtualNodes = 7 }, Soon());

        Assert.Equal(MapUpdateStatus.Conflict, stale.Status);
        Assert.Equal(v2.Map.Epoch, stale.Map.Epoch);
        Assert.Equal(128, stale.Map.VirtualNodes);
        Assert.Equal(MemberState.Joining, stale.Map.FindMember("n2")!.State);
        Assert.Equal(v2.Map.Epoch, n1.View.Epoch); // the conflict brought n1's view up to date
    }

    [Fact]
    public async Task Of_concurrent_changes_on_one_epoch_exactly_one_is_applied()
    {
        var nodes = new[] { await StartNodeAsync("n1"), await StartNodeAsync("n2"), await StartNodeAsync("n3") };
        var baseMap = (await nodes[0].TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(nodes[0])), Soon())).Map;

        var results = await Task.WhenAll(nodes.Select(n => n.TryUpdateMapAsync(baseMap.WithMember(MemberOf(n, MemberState.Leaving)), Soon())));

        var winner = Assert.Single(results, r => r.Applied);
        Assert.All(results.Where(r => !r.Applied), r =>
        {
            Assert.Equal(MapUpdateStatus.Conflict, r.Status);
            Assert.True(r.Map.Epoch >= winner.Map.Epoch);
        });
        Assert.True(winner.Map.Epoch > baseMap.Epoch);
    }

    [Fact]
    public async Task Every_node_gets_a_new_map_through_its_watch()
    {
        var n1 = await StartNodeAsync("n1");
        var n2 = await StartNodeAsync("n2");
        var n3 = await StartNodeAsync("n3");
        using var cts = new CancellationTokenSource(Patience);
        await using var watch2 = n2.View.WatchMapAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        await using var watch3 = n3.View.WatchMapAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.True(await watch2.MoveNextAsync());
        Assert.Equal(0, watch2.Current.Epoch); // the current map first

        var applied = await n1.TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(n1)).WithMember(MemberOf(n2)), cts.Token);

        Assert.True(await watch2.MoveNextAsync());
        Assert.Equal(applied.Map.Epoch, watch2.Current.Epoch);
        Assert.Equal(["n1", "n2"], watch2.Current.Members.Select(m => m.NodeId));
        Assert.Equal(MemberOf(n2), watch2.Current.FindMember("n2"));
        while (await watch3.MoveNextAsync() && watch3.Current.Epoch < applied.Map.Epoch)
        {
        }

        Assert.Equal(applied.Map.Epoch, watch3.Current.Epoch);
        Assert.Equal(applied.Map.Epoch, n3.View.Epoch);
    }

    [Fact]
    public async Task Epochs_grow_with_every_change_and_a_map_keeps_every_field()
    {
        var n1 = await StartNodeAsync("n1");
        var n2 = await StartNodeAsync("n2");
        var map = ClusterMap.Empty;
        var epochs = new List<long>();
        foreach (var state in new[] { MemberState.Joining, MemberState.Active, MemberState.Leaving })
        {
            var r = await n1.TryUpdateMapAsync(map.WithMember(new ClusterMember("n" + (epochs.Count + 1), "m:1", "c:2", state)), Soon());
            Assert.True(r.Applied, r.Error);
            map = r.Map;
            epochs.Add(map.Epoch);
        }

        var full = await n1.TryUpdateMapAsync(map with
        {
            VirtualNodes = 64,
            ReplicationFactor = 3,
            ReplicaSets = [new ReplicaSet("r-17", "n2", ["n3", "n1"], ["n3"])],
        }, Soon());
        epochs.Add(full.Map.Epoch);

        Assert.Equal(epochs.Order(), epochs);
        Assert.Equal(epochs.Count, epochs.Distinct().Count());
        await WaitUntilAsync(n2.View, v => v.Epoch == full.Map.Epoch);
        var seen = n2.View.Map;
        Assert.Equal(map.Members.ToArray(), seen.Members.ToArray());
        Assert.Equal([MemberState.Joining, MemberState.Active, MemberState.Leaving], seen.Members.Select(m => m.State));
        Assert.Equal((64, 3), (seen.VirtualNodes, seen.ReplicationFactor));
        var set = Assert.Single(seen.ReplicaSets);
        Assert.Equal(("r-17", "n2"), (set.Range, set.Primary));
        Assert.Equal(["n3", "n1"], set.Replicas.ToArray());
        Assert.Equal(["n3"], set.InSync.ToArray());
    }

    [Fact]
    public async Task A_map_the_validation_refuses_never_reaches_the_store()
    {
        var n1 = await StartNodeAsync("n1");

        await Assert.ThrowsAsync<ArgumentException>(() => n1.TryUpdateMapAsync(ClusterMap.Empty with { ReplicationFactor = 6 }, Soon()));
        await Assert.ThrowsAsync<ArgumentException>(() => n1.TryUpdateMapAsync(ClusterMap.Empty with
        {
            Members = [MemberOf(n1), MemberOf(n1, MemberState.Leaving)],
        }, Soon()));
        Assert.Equal(0, (await n1.ReadMapAsync(Soon())).Epoch);
    }

    [Fact]
    public async Task A_node_that_leaves_is_removed_from_the_members_at_once()
    {
        // A long TTL, so a removal within it can only come from the revoke, not from expiry.
        var n1 = await StartNodeAsync("n1", TimeSpan.FromSeconds(30));
        var n2 = await StartNodeAsync("n2", TimeSpan.FromSeconds(30));
        await WaitUntilAsync(n1.View, v => v.LiveMembers.Length == 2);

        await n2.DisposeAsync();

        await WaitUntilAsync(n1.View, v => v.LiveMembers.Length == 1, TimeSpan.FromSeconds(10));
        Assert.Equal("n1", n1.View.LiveMembers[0].NodeId);
    }

    [Fact]
    public async Task A_node_that_stops_renewing_its_lease_drops_out_while_a_live_one_stays()
    {
        var n1 = await StartNodeAsync("n1");
        var n2 = await StartNodeAsync("n2");
        await WaitUntilAsync(n1.View, v => v.LiveMembers.Length == 2);
        var crashedAt = DateTimeOffset.UtcNow;

        Crash(n2);

        await WaitUntilAsync(n1.View, v => v.LiveMembers.Length == 1);
        // Not before its TTL ran out (it was renewed up to a third of a TTL before the crash)...
        Assert.True(DateTimeOffset.UtcNow - crashedAt >= Ttl * 2 / 3, $"n2 dropped out after {(DateTimeOffset.UtcNow - crashedAt).TotalMilliseconds} ms");
        // ...while n1, alive for longer than one TTL by now, stayed through its keepalive.
        Assert.Equal("n1", n1.View.LiveMembers[0].NodeId);
    }

    [Fact]
    public async Task A_second_node_with_the_id_of_a_live_node_is_refused()
    {
        await StartNodeAsync("n1");

        var e = await Assert.ThrowsAsync<ClusterCoordinationException>(() => StartNodeAsync("n1"));

        Assert.Contains("registered", e.Message, StringComparison.Ordinal);
        Assert.Contains("n1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_restarted_node_takes_its_id_back_once_its_crashed_registration_expires()
    {
        var watcher = await StartNodeAsync("n9");
        var before = await StartNodeAsync("n1");
        Crash(before);

        var after = await StartNodeAsync("n1");

        Assert.Equal(["n1", "n9"], after.View.LiveMembers.Select(m => m.NodeId));
        await WaitUntilAsync(watcher.View, v => v.LiveMembers.Length == 2);
    }

    [Fact]
    public async Task Without_the_store_a_node_keeps_its_map_and_refuses_changes_until_it_is_back()
    {
        var n1 = await StartNodeAsync("n1");
        var n2 = await StartNodeAsync("n2");
        var map = (await n1.TryUpdateMapAsync(ClusterMap.Empty.WithMember(MemberOf(n1)), Soon())).Map;
        await WaitUntilAsync(n2.View, v => v.Epoch == map.Epoch);

        await MakeStoreUnreachableAsync();
        await WaitUntilAsync(n1.View, v => !v.HasCurrentMap);

        Assert.True(n1.View.HasMap);
        Assert.Equal(map.Epoch, n1.View.Epoch);
        Assert.NotNull(n1.View.DisconnectedSince);
        var refused = await n1.TryUpdateMapAsync(map.WithMember(MemberOf(n2)), Soon());
        Assert.Equal(MapUpdateStatus.Unavailable, refused.Status);
        Assert.Contains("refused", refused.Error, StringComparison.Ordinal);
        Assert.Equal(map.Epoch, refused.Map.Epoch);
        Assert.Equal(map.Epoch, n1.View.Epoch);

        await RestoreStoreAsync();
        await WaitUntilAsync(n1.View, v => v.HasCurrentMap);
        Assert.Null(n1.View.DisconnectedSince);
        var applied = await n1.TryUpdateMapAsync(map.WithMember(MemberOf(n2)), Soon());
        Assert.True(applied.Applied, applied.Error);
        await WaitUntilAsync(n2.View, v => v.Epoch == applied.Map.Epoch && v.HasCurrentMap);
        await WaitUntilAsync(n1.View, v => v.LiveMembers.Length == 2); // the leases survived the outage
    }
}

public sealed class InMemoryCoordinatorTests : CoordinatorContract
{
    private readonly InMemoryCoordinationStore _store = new();

    private protected override IReadOnlyList<string> Endpoints => [];

    private protected override IClusterCoordinator CreateCoordinator(ClusterOptions options) => new InMemoryCoordinator(_store, options);

    private protected override void Crash(IClusterCoordinator node) => ((InMemoryCoordinator)node).StopAsIfCrashed();

    private protected override Task MakeStoreUnreachableAsync()
    {
        _store.SetReachable(false);
        return Task.CompletedTask;
    }

    private protected override Task RestoreStoreAsync()
    {
        _store.SetReachable(true);
        return Task.CompletedTask;
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        _store.Dispose();
    }
}

public sealed class EtcdCoordinatorTests(EtcdFixture etcd) : CoordinatorContract, IClassFixture<EtcdFixture>
{
    private bool _stopped;

    private protected override IReadOnlyList<string> Endpoints => [etcd.Endpoint];

    private protected override IClusterCoordinator CreateCoordinator(ClusterOptions options) => new EtcdCoordinator(options);

    private protected override void Crash(IClusterCoordinator node) => ((EtcdCoordinator)node).StopAsIfCrashed();

    private protected override async Task MakeStoreUnreachableAsync()
    {
        _stopped = true;
        await etcd.StopAsync();
    }

    private protected override async Task RestoreStoreAsync()
    {
        await etcd.RestartAsync();
        _stopped = false;
    }

    public override async Task DisposeAsync()
    {
        if (_frozen)
        {
            etcd.Freeze(resume: true);
        }

        if (_stopped)
        {
            await etcd.RestartAsync(); // leave it running for the next test of the class
        }

        await base.DisposeAsync();
    }

    private bool _frozen;

    [Fact]
    public async Task A_member_that_goes_silent_costs_the_node_neither_its_lease_nor_its_watch()
    {
        // A partition that cuts one etcd member off sends no reset: its connections still look open. The node's calls
        // go to one member at a time (its first one by id), here a relay to etcd that goes silent; every call after the
        // first that fails must go to the other member, fast enough that a lease of the minimum TTL (2 s, renewed every
        // 0.67 s, each answer awaited 0.33 s) never lapses. Before, one channel spread the calls over both members and
        // kept sending some of each renewal's retries to the silent one (checker seed 324: two nodes lost their leases
        // that way).
        await using var relay = SilenceableRelay.Start(etcd.Endpoint);
        var id = Enumerable.Range(1, 99).Select(i => $"r{i}").First(n => EtcdCoordinator.FirstMember(n, 2) == 0);
        var options = Options(id);
        options.EtcdEndpoints = [relay.Endpoint, etcd.Endpoint];
        var node = await StartNodeAsync(options);
        var observer = await StartNodeAsync("o1");
        await WaitUntilAsync(observer.View, v => v.LiveMembers.Any(m => m.NodeId == id));
        Assert.True(relay.Connections > 0, "the node did not start on the relay: the test would not test the switch");

        relay.Silence();
        var silenced = System.Diagnostics.Stopwatch.StartNew();
        var switchesBefore = node.View.MemberSwitches;

        // For three TTLs the observer must never see the node's registration go (it goes when the lease lapses).
        using (var watch = new CancellationTokenSource(Ttl * 3))
        {
            while (true)
            {
                var changed = observer.View.WaitForChangeAsync(watch.Token);
                Assert.True(observer.View.LiveMembers.Any(m => m.NodeId == id),
                    $"the node's registration went {silenced.ElapsedMilliseconds} ms after the silence (lease lapsed); its last error: {node.View.LastError}");
                try
                {
                    await changed;
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }

        Assert.True(node.View.MemberSwitches > switchesBefore, "the node never left the silent member");
        Assert.True(node.View.IsLeaseValid(TimeSpan.Zero), $"lease lapsed; last error: {node.View.LastError}");
        await WaitUntilAsync(node.View, v => v.HasCurrentMap); // the watch is on the answering member
    }

    [Fact]
    public async Task A_silent_etcd_is_noticed_within_two_heartbeats_and_the_watch_comes_back_when_it_answers()
    {
        // A partition sends no reset: the watch must notice silence itself. Its heartbeat is the smaller of
        // etcd_timeout (2 s here) and a third of the TTL (2 s): a progress request after 0.67 s of quiet, and
        // the disconnect after another 0.67 s without an answer. HTTP/2 pings alone took ping delay + ping timeout
        // (2 s + 2 s before they were raised to 5 s + 5 s to stop etcd's too_many_pings GOAWAYs).
        var n1 = await StartNodeAsync("n1");
        await WaitUntilAsync(n1.View, v => v.HasCurrentMap);

        _frozen = true;
        etcd.Freeze(resume: false);
        var frozenAt = System.Diagnostics.Stopwatch.StartNew();
        await WaitUntilAsync(n1.View, v => !v.HasCurrentMap, TimeSpan.FromSeconds(10));
        Assert.True(frozenAt.Elapsed < TimeSpan.FromSeconds(4), $"noticed after {frozenAt.Elapsed.TotalMilliseconds:0} ms");

        etcd.Freeze(resume: true);
        _frozen = false;
        await WaitUntilAsync(n1.View, v => v.HasCurrentMap);
    }
}
