using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace ChatBroker.LoadTests.Cluster;

/// <summary>One node of a cluster run: its id (n1, n2, …), the broker process and whether the harness has it down.</summary>
public sealed class ClusterNodeProcess(string id, BrokerLauncher broker)
{
    public string Id { get; } = id;

    public BrokerLauncher Broker { get; } = broker;

    public IPEndPoint Client => Broker.TcpEndPoint;

    /// <summary>Killed by a nemesis and not restarted yet, or stopped for good after leaving the cluster.</summary>
    public bool Down { get; set; }

    /// <summary>Left the cluster map and stopped: not a target any more.</summary>
    public bool Retired { get; set; }

    /// <summary>With --netns: the namespace (cbload-i) the node runs in; null on 127.0.0.1.</summary>
    public int? Namespace { get; init; }
}

/// <summary>
/// A cluster on this machine: etcd (<see cref="EtcdCluster"/>: one member on 127.0.0.1, or members in namespaces of their own) and N
/// `chatbroker serve` processes (<see cref="BrokerLauncher"/>) with distinct loopback ports, one token secret and
/// their own data directories; node i is "n{i}". The first node writes the map, each later one joins it
/// (cluster.auto_join); <see cref="StartAsync"/> returns once every node's map has all N Active.
/// <see cref="DisposeAsync"/> stops every node and etcd by pid, also after a failure.
/// </summary>
public sealed class ClusterLauncher : IAsyncDisposable
{
    // Short, so that a node restarted after kill -9 finds its old registration gone soon (it waits up to one TTL).
    private const string LeaseTtl = "2s";

    private static readonly TimeSpan FormationTimeout = TimeSpan.FromSeconds(60);

    private readonly List<ClusterNodeProcess> _nodes = [];
    private readonly Lock _nodesLock = new();
    private readonly string _durability;
    private readonly IReadOnlyList<string> _extraSettings;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(5) };
    private int _nextNode;

    private readonly NetnsLayout? _netns;

    private ClusterLauncher(EtcdCluster etcd, string secretBase64, string durability, IReadOnlyList<string> extraSettings, NetnsLayout? netns)
    {
        _netns = netns;
        Etcd = etcd;
        SecretBase64 = secretBase64;
        _durability = durability;
        _extraSettings = extraSettings;
    }

    public EtcdCluster Etcd { get; }

    /// <summary>The namespaces of a --netns run; null on 127.0.0.1.</summary>
    public NetnsLayout? Netns => _netns;

    /// <summary>Where the nodes run, for reports: "127.0.0.1" or "network namespaces".</summary>
    public string Placement => _netns is null ? "on 127.0.0.1" : "in network namespaces (one per node, scripts/netns-cluster.sh)";

    public string SecretBase64 { get; }

    /// <summary>Every node started so far, retired ones included, in start order.</summary>
    public IReadOnlyList<ClusterNodeProcess> Nodes
    {
        get
        {
            lock (_nodesLock)
            {
                return [.. _nodes];
            }
        }
    }

    /// <summary>
    /// Starts etcd and <paramref name="nodes"/> nodes: on 127.0.0.1, or in the network namespaces of
    /// <paramref name="netns"/> (<see cref="NetnsLayout"/>; this process then runs in the client namespace).
    /// </summary>
    public static async Task<ClusterLauncher> StartAsync(int nodes, string durability, IReadOnlyList<string> extraSettings, TextWriter log, NetnsLayout? netns = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nodes, 1);
        if (netns is not null && nodes > netns.MaxNodes)
        {
            throw new ArgumentOutOfRangeException(nameof(nodes), $"{nodes} nodes do not fit the {netns.MaxNodes} node namespaces");
        }

        var etcd = await EtcdCluster.StartAsync(netns).ConfigureAwait(false);
        log.WriteLine($"cluster: etcd {etcd.Pids} at {etcd.Endpoint}{(netns is null ? "" : $" (namespaces {string.Join(',', etcd.Members.Select(m => NetnsLayout.Name + "-" + m.Namespace))})")}");
        var cluster = new ClusterLauncher(etcd, Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)), durability, extraSettings, netns);
        try
        {
            for (var i = 0; i < nodes; i++)
            {
                // One after another: each join is a compare-and-set on the map the previous one wrote.
                var node = await cluster.StartNodeAsync(autoJoin: true).ConfigureAwait(false);
                log.WriteLine($"cluster: {node.Id} pid {node.Broker.Pid} at {node.Client}, admin {node.Broker.AdminUri}");
            }

            var map = await cluster.WaitForMapAsync(m => m.Active.Count == nodes, FormationTimeout).ConfigureAwait(false);
            log.WriteLine($"cluster: map epoch {map.Epoch}, {map.Active.Count} Active members, vnodes {map.VirtualNodes}");
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Starts node n{next} on fresh loopback ports. With <paramref name="autoJoin"/> false it only registers as
    /// live and waits for `cluster join` (<see cref="JoinAsync"/>).
    /// </summary>
    public async Task<ClusterNodeProcess> StartNodeAsync(bool autoJoin)
    {
        var index = Interlocked.Increment(ref _nextNode);
        var id = "n" + index.ToString(CultureInfo.InvariantCulture);
        var settings = new List<string>
        {
            "node.name=" + id,
            "cluster.node_id=" + id,
            "cluster.etcd_endpoints=" + Etcd.Endpoint,
            "cluster.lease_ttl=" + LeaseTtl,
            "cluster.auto_join=" + (autoJoin ? "true" : "false"),
        };
        IReadOnlyList<string>? prefix = null;
        if (_netns is null)
        {
            // Fixed ports, not 0: the map carries the addresses, and a restarted node must come back on them.
            settings.Add("tcp.listen=127.0.0.1:" + FreePort().ToString(CultureInfo.InvariantCulture));
            settings.Add("cluster.mesh_listen=127.0.0.1:" + FreePort().ToString(CultureInfo.InvariantCulture));
        }
        else
        {
            if (index > _netns.MaxNodes)
            {
                throw new InvalidOperationException($"no namespace left for node {id}: --netns made {_netns.MaxNodes} node namespaces");
            }

            // Its own "machine": the node's address, the default ports.
            var address = NetnsLayout.Address(index);
            settings.Add("tcp.listen=" + address + ":7883");
            settings.Add("cluster.mesh_listen=" + address + ":7890");
            settings.Add("admin.listen=" + address + ":7880");
            prefix = NetnsLayout.Prefix(index);
        }

        settings.AddRange(_extraSettings);
        var broker = await BrokerLauncher.StartAsync(_durability, settings, SecretBase64, prefix).ConfigureAwait(false);
        var node = new ClusterNodeProcess(id, broker) { Namespace = _netns is null ? null : index };
        lock (_nodesLock)
        {
            _nodes.Add(node);
        }

        return node;
    }

    /// <summary>`chatbroker cluster join --node ID`; true when it exited 0. The output goes to <paramref name="log"/>.</summary>
    public Task<bool> JoinAsync(string nodeId, TextWriter log) => RunClusterCommandAsync(log, "join", "--node", nodeId);

    /// <summary>`chatbroker cluster leave --node ID`; true when it exited 0.</summary>
    public Task<bool> LeaveAsync(string nodeId, TextWriter log) => RunClusterCommandAsync(log, "leave", "--node", nodeId);

    /// <summary>The map as a running node holds it (its admin endpoint's /cluster); null when no node answers.</summary>
    public async Task<ClusterMapSnapshot?> ReadMapAsync()
    {
        foreach (var node in Nodes)
        {
            if (node.Down || node.Broker.AdminUri is null)
            {
                continue;
            }

            try
            {
                var json = await _http.GetStringAsync(new Uri(node.Broker.AdminUri, "/cluster")).ConfigureAwait(false);
                return ClusterMapSnapshot.Parse(json);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException)
            {
            }
        }

        return null;
    }

    /// <summary>Until every running node's map satisfies <paramref name="done"/> (bounded by <paramref name="timeout"/>).</summary>
    public async Task<ClusterMapSnapshot> WaitForMapAsync(Func<ClusterMapSnapshot, bool> done, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        ClusterMapSnapshot? last = null;
        while (clock.Elapsed < timeout)
        {
            var all = true;
            foreach (var node in Nodes)
            {
                if (node.Down || node.Broker.AdminUri is null)
                {
                    continue;
                }

                try
                {
                    last = ClusterMapSnapshot.Parse(await _http.GetStringAsync(new Uri(node.Broker.AdminUri, "/cluster")).ConfigureAwait(false));
                    all &= done(last);
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException)
                {
                    all = false;
                }
            }

            if (all && last is not null)
            {
                return last;
            }

            await Task.Delay(100).ConfigureAwait(false); // polling a child process's endpoint, not a test's wait
        }

        throw new TimeoutException($"the cluster map did not reach the expected state within {timeout.TotalSeconds:0} s; last seen: epoch {last?.Epoch}, " +
            string.Join(", ", last?.Members.Select(m => m.Id + " " + m.State) ?? []));
    }

    /// <summary>Sum of every running node's metrics (the same names on every node: CPU, memory, messages).</summary>
    public async Task<BrokerMetricsSample?> ScrapeAsync()
    {
        var sum = new Dictionary<string, double>();
        var any = false;
        foreach (var node in Nodes)
        {
            if (node.Down)
            {
                continue;
            }

            if (await node.Broker.ScrapeAsync().ConfigureAwait(false) is { } sample)
            {
                any = true;
                foreach (var (k, v) in sample.All)
                {
                    sum[k] = sum.GetValueOrDefault(k) + v;
                }
            }
        }

        return any ? new BrokerMetricsSample(sum) : null;
    }

    /// <summary>Stops a node that left the map (SIGTERM, then its data directory goes); it stays in <see cref="Nodes"/> as retired.</summary>
    public async Task RetireAsync(ClusterNodeProcess node)
    {
        node.Retired = true;
        node.Down = true;
        await node.Broker.DisposeAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        var stops = new List<Task>();
        foreach (var node in Nodes)
        {
            if (!node.Retired)
            {
                stops.Add(node.Broker.DisposeAsync().AsTask());
            }
        }

        try
        {
            await Task.WhenAll(stops).ConfigureAwait(false);
        }
        finally
        {
            await Etcd.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task<bool> RunClusterCommandAsync(TextWriter log, params string[] arguments)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            // No broker.toml of the working directory may leak in: the settings are all on the command line.
            WorkingDirectory = Path.GetTempPath(),
        };
        info.ArgumentList.Add(BrokerLauncher.BrokerDll);
        info.ArgumentList.Add("cluster");
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        info.ArgumentList.Add("--set");
        info.ArgumentList.Add("cluster.etcd_endpoints=" + Etcd.Endpoint);
        using var cli = Process.Start(info) ?? throw new InvalidOperationException("could not start dotnet");
        var stdout = cli.StandardOutput.ReadToEndAsync();
        var stderr = cli.StandardError.ReadToEndAsync();
        try
        {
            await cli.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            cli.Kill(entireProcessTree: true);
            log.WriteLine($"cluster {string.Join(' ', arguments)}: no answer within 60 s, killed");
            return false;
        }

        var output = ((await stdout.ConfigureAwait(false)) + (await stderr.ConfigureAwait(false))).Trim().ReplaceLineEndings(" | ");
        log.WriteLine($"cluster {string.Join(' ', arguments)}: exit {cli.ExitCode}: {output}");
        return cli.ExitCode == 0;
    }

    /// <summary>A loopback port free now (the OS's pick for port 0); the broker's bind is the final check.</summary>
    private static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }
}
