using System.Globalization;
using System.Net;
using System.Net.Http;
using System.Text.Json;
using System.Text.RegularExpressions;
using ChatBroker.Cluster.Tests.Coordination;
using ChatBroker.Host.Tests.Infrastructure;

namespace ChatBroker.Host.Tests;

/// <summary>
/// Two real broker processes (child processes on 127.0.0.1, ports 0, own data dirs) against one real etcd,
/// and the <c>chatbroker cluster</c> commands run as processes against the same etcd. Each test has its own
/// etcd prefix, so the tests of the class share the etcd without seeing each other's keys. The nodes' log
/// lines ("Cluster map epoch …", "Cluster live nodes …") are the signals the tests wait on.
/// </summary>
public sealed partial class ClusterProcessTests(EtcdFixture etcd) : IClassFixture<EtcdFixture>, IAsyncLifetime
{
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private readonly string _prefix = "/hosttest-" + Guid.NewGuid().ToString("N")[..12];
    private readonly List<BrokerProcess> _nodes = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var node in _nodes)
        {
            await node.DisposeAsync();
        }
    }

    [Fact]
    public async Task Two_nodes_on_one_etcd_become_members_are_ready_and_cluster_status_lists_both()
    {
        var (a, b) = await StartTwoNodesAsync();

        foreach (var node in new[] { a, b })
        {
            Assert.Equal("ready\n", await Http.GetStringAsync(Admin(node, "/readyz")));
            using var view = await ClusterAsync(node);
            var root = view.RootElement;
            Assert.True(root.GetProperty("has_current_map").GetBoolean());
            Assert.Equal(["a:Active:True", "b:Active:True"], Members(root));
            Assert.Equal(["a", "b"], root.GetProperty("live_members").EnumerateArray().Select(m => m.GetProperty("id").GetString()));
            var metrics = await Http.GetStringAsync(Admin(node, "/metrics"));
            // The map may move on between the two reads (the replica sets are written after the joins).
            var epochLine = metrics.Split('\n').Single(l => l.StartsWith("chatbroker_cluster_epoch{node=\"node1\"} ", StringComparison.Ordinal));
            Assert.True(long.Parse(epochLine[(epochLine.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture) >= root.GetProperty("epoch").GetInt64(), epochLine);
            Assert.Contains("chatbroker_cluster_members{node=\"node1\"} 2", metrics, StringComparison.Ordinal);
            Assert.Contains("chatbroker_cluster_etcd_connected{node=\"node1\"} 1", metrics, StringComparison.Ordinal);
            // The routing layer and both ends of the mesh are wired and exported.
            Assert.Contains("chatbroker_cluster_sends_forwarded_total{node=\"node1\"} 0", metrics, StringComparison.Ordinal);
            Assert.Contains("chatbroker_mesh_sent_messages_total{node=\"node1\"}", metrics, StringComparison.Ordinal);
            Assert.Contains("chatbroker_mesh_received_messages_total{node=\"node1\"}", metrics, StringComparison.Ordinal);
            Assert.Contains("chatbroker_mesh_queued_bytes{node=\"node1\"}", metrics, StringComparison.Ordinal);
        }

        // Each node serves the mesh on its cluster.mesh_listen before it registers.
        Assert.Contains("Cluster mesh on http://127.0.0.1:17891", a.Output, StringComparison.Ordinal);
        Assert.Contains("Cluster mesh on http://127.0.0.1:17892", b.Output, StringComparison.Ordinal);

        var (exit, stdout, stderr) = await CliAsync("cluster", "status");
        Assert.True(exit == 0, stderr);
        Assert.Matches(@"cluster map epoch \d+ .*: 2 members, 2 live; vnodes 128, replication factor 3", stdout);
        Assert.Matches(@"(?m)^a\s+Active\s+yes\s+127\.0\.0\.1:17891\s", stdout);
        Assert.Matches(@"(?m)^b\s+Active\s+yes\s+127\.0\.0\.1:17892\s", stdout);

        (exit, stdout, stderr) = await CliAsync("cluster", "status", "--json");
        Assert.True(exit == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        Assert.Equal(["a:Active:True", "b:Active:True"], Members(json.RootElement));
    }

    [Fact]
    public async Task Cluster_leave_removes_the_node_every_node_sees_the_new_epoch_and_a_stopped_node_leaves_the_live_members_at_once()
    {
        var (a, b) = await StartTwoNodesAsync();

        var (exit, stdout, stderr) = await CliAsync("cluster", "leave", "--node", "b");
        Assert.True(exit == 0, stderr);
        Assert.Contains("b marked Leaving", stdout, StringComparison.Ordinal);
        Assert.Contains("b left the cluster, its ranges handed over", stdout, StringComparison.Ordinal);
        var epoch = long.Parse(EpochInMessage().Matches(stdout)[^1].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);

        foreach (var node in new[] { a, b })
        {
            await node.WaitForLineAsync(new Regex($@"Cluster map epoch {epoch}: a Active \([^)]*\)$")).WaitAsync(Patience);
            using var view = await ClusterAsync(node);
            Assert.Equal(epoch, view.RootElement.GetProperty("epoch").GetInt64());
            Assert.Equal(["a:Active:True"], Members(view.RootElement));
        }

        (exit, _, stderr) = await CliAsync("cluster", "leave", "--node", "zz");
        Assert.Equal(1, exit);
        Assert.Contains("zz is not a member; the members are a", stderr, StringComparison.Ordinal);

        // A clean stop revokes the lease: b is gone from the live members long before its 60 s TTL.
        b.SendSignal(BrokerProcess.SigTerm);
        Assert.Equal(0, await b.WaitForExitAsync(Patience));
        await a.WaitForLineAsync(new Regex(@"Cluster live nodes \(1\): a$")).WaitAsync(Patience);
        (exit, stdout, stderr) = await CliAsync("cluster", "status");
        Assert.True(exit == 0, stderr);
        Assert.Contains("1 members, 1 live", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_etcd_down_join_is_refused_and_the_nodes_keep_serving_with_their_map()
    {
        var (a, b) = await StartTwoNodesAsync();
        await etcd.StopAsync();
        long epoch = -1; // the map the nodes had when etcd went (with replication the map moves on after the joins)
        try
        {
            var (exit, _, stderr) = await CliAsync("cluster", "join", "--node", "c", "--set", "cluster.etcd_timeout=500ms");
            Assert.Equal(1, exit);
            Assert.Contains("chatbroker cluster join: refused, nothing changed:", stderr, StringComparison.Ordinal);
            Assert.Contains("is unreachable", stderr, StringComparison.Ordinal);

            foreach (var node in new[] { a, b })
            {
                var line = await node.WaitForLineAsync(new Regex(@"Cluster: etcd unreachable .* serving with the map of epoch (\d+)")).WaitAsync(Patience);
                var seen = long.Parse(line.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
                Assert.True(epoch < 0 || epoch == seen, $"the nodes serve with different maps: {epoch} and {seen}");
                epoch = seen;
                Assert.Equal("ok\n", await Http.GetStringAsync(Admin(node, "/healthz")));
                Assert.Equal("ready\n", await Http.GetStringAsync(Admin(node, "/readyz"))); // a stale map keeps the node ready
                using var view = await ClusterAsync(node);
                var root = view.RootElement;
                Assert.Equal(epoch, root.GetProperty("epoch").GetInt64());
                Assert.True(root.GetProperty("has_map").GetBoolean());
                Assert.False(root.GetProperty("has_current_map").GetBoolean());
                Assert.Equal(JsonValueKind.String, root.GetProperty("disconnected_since").ValueKind);
                Assert.Equal(["a:Active:True", "b:Active:True"], Members(root));
                Assert.Contains("chatbroker_cluster_etcd_connected{node=\"node1\"} 0", await Http.GetStringAsync(Admin(node, "/metrics")), StringComparison.Ordinal);
            }
        }
        finally
        {
            await etcd.RestartAsync();
        }

        await a.WaitForLineAsync(new Regex(@"Cluster: etcd reachable again; map epoch " + epoch)).WaitAsync(Patience);
    }

    private async Task<(BrokerProcess A, BrokerProcess B)> StartTwoNodesAsync()
    {
        var a = await StartNodeAsync("a", 17891);
        var b = await StartNodeAsync("b", 17892);
        // b joined after a was ready: a learns it through its watch.
        await a.WaitForLineAsync(BothActive()).WaitAsync(Patience);
        await a.WaitForLineAsync(new Regex(@"Cluster live nodes \(2\): a, b$")).WaitAsync(Patience);
        await b.WaitForLineAsync(BothActive()).WaitAsync(Patience);
        await b.WaitForLineAsync(new Regex(@"Cluster live nodes \(2\): a, b$")).WaitAsync(Patience);
        return (a, b);
    }

    private async Task<BrokerProcess> StartNodeAsync(string nodeId, int meshPort)
    {
        // The mesh needs a fixed port (the other nodes dial the advertised address); mesh_listen is advertised.
        var node = await BrokerProcess.StartAsync(null, [.. ClusterSettings(), "--set", "cluster.node_id=" + nodeId,
            "--set", $"cluster.mesh_listen=127.0.0.1:{meshPort}", "--set", "cluster.lease_ttl=60s"]);
        _nodes.Add(node);
        return node;
    }

    private string[] ClusterSettings() => ["--set", "cluster.etcd_endpoints=" + etcd.Endpoint, "--set", "cluster.etcd_prefix=" + _prefix];

    private Task<(int ExitCode, string StdOut, string StdErr)> CliAsync(params string[] args) =>
        BrokerProcess.RunCliAsync([.. args, .. ClusterSettings()]);

    private static string Admin(BrokerProcess node, string path) => $"http://{node.AdminEndPoint}{path}";

    private static async Task<JsonDocument> ClusterAsync(BrokerProcess node)
    {
        using var response = await Http.GetAsync(Admin(node, "/cluster"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync());
    }

    private static string[] Members(JsonElement root) =>
        [.. root.GetProperty("members").EnumerateArray().Select(m => $"{m.GetProperty("id").GetString()}:{m.GetProperty("state").GetString()}:{m.GetProperty("live").GetBoolean()}")];

    [GeneratedRegex(@"Cluster map epoch \d+: a Active \([^)]*\), b Active \([^)]*\)$")]
    private static partial Regex BothActive();

    [GeneratedRegex(@"\(epoch (\d+)\)")]
    private static partial Regex EpochInMessage();
}

/// <summary>A single node (no etcd endpoints) has no cluster: the endpoint and the commands say so.</summary>
public sealed class SingleNodeClusterTests
{
    [Fact]
    public async Task A_single_node_has_no_cluster_endpoint_and_the_cluster_commands_say_no_cluster_is_configured()
    {
        await using var broker = await BrokerProcess.StartAsync();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };

        using var response = await http.GetAsync($"http://{broker.AdminEndPoint}/cluster");
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Contains("cluster.etcd_endpoints is empty", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.DoesNotContain("chatbroker_cluster_", await http.GetStringAsync($"http://{broker.AdminEndPoint}/metrics"), StringComparison.Ordinal);
        Assert.DoesNotContain("Cluster", broker.Output, StringComparison.Ordinal);

        foreach (var command in new[] { "status", "join", "leave" })
        {
            var (exit, _, stderr) = await BrokerProcess.RunCliAsync(["cluster", command]);
            Assert.Equal(2, exit);
            Assert.Contains($"chatbroker cluster {command}: no cluster configured: cluster.etcd_endpoints is empty", stderr, StringComparison.Ordinal);
        }
    }
}

/// <summary>Readiness in cluster mode, and a node that cannot reach etcd at start.</summary>
public sealed class ClusterReadinessTests
{
    [Fact]
    public async Task A_started_node_is_not_ready_until_it_has_the_cluster_map()
    {
        using var store = new ChatBroker.Cluster.Coordination.InMemoryCoordinationStore();
        await using var coordinator = new ChatBroker.Cluster.Coordination.InMemoryCoordinator(store, new ChatBroker.Cluster.ClusterOptions { NodeId = "a" });
        var readiness = new Readiness(coordinator.View);
        Assert.Equal("starting", readiness.NotReadyReason);

        readiness.MarkStarted();
        Assert.Equal("no cluster map yet", readiness.NotReadyReason);
        Assert.False(readiness.IsReady);

        await coordinator.StartAsync(CancellationToken.None); // reads the map
        Assert.True(readiness.IsReady);

        store.SetReachable(false); // a stale map keeps the node ready: it serves with the map it has
        Assert.False(coordinator.View.HasCurrentMap);
        Assert.True(readiness.IsReady);

        readiness.MarkStopping();
        Assert.Equal("shutting down", readiness.NotReadyReason);
        store.SetReachable(true);
    }

    [Fact]
    public async Task Serve_with_an_unreachable_etcd_exits_1_and_names_it()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (exit, _, stderr) = await BrokerProcess.RunCliAsync(
                ["serve", "--set", "node.data_dir=" + dataDir, "--set", "tcp.listen=127.0.0.1:0", "--set", "admin.listen=127.0.0.1:0",
                 "--set", "cluster.etcd_endpoints=http://127.0.0.1:1", "--set", "cluster.etcd_timeout=300ms"]);

            Assert.Equal(1, exit);
            Assert.Contains("chatbroker: cannot start: cluster: cannot register node \"node1\": etcd (http://127.0.0.1:1) is unreachable", stderr, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
