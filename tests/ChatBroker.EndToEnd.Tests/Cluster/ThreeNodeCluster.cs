using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using ChatBroker.Broker.Tests.Cluster;
using ChatBroker.Cluster.Ring;
using ChatBroker.Cluster.Tests.Coordination;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using ChatBroker.Tokens;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>
/// Three real <c>chatbroker serve</c> processes (the Host's build output) and a single-member etcd, shared by one
/// test class. Where this process is root and <c>ip netns</c> works, each node runs in a network namespace of its own
/// (<c>scripts/netns-cluster.sh up 3 --root-link</c>: 10.77.0.1–3, as on three machines; etcd in the first, this
/// process on the bridge at 10.77.0.254); otherwise the nodes are child processes on 127.0.0.1 with free ports and
/// etcd comes from <c>scripts/etcd.sh</c>. <see cref="Mode"/> says which, and it is written to the test output. Each
/// node has its own data directory, ports, node id n1–n3 and <c>cluster.auto_join</c>; all share one token secret.
/// Everything started here is stopped (by pid) and removed on dispose, also when the start failed half way.
/// </summary>
public partial class ThreeNodeCluster : IAsyncLifetime
{
    public const int Size = 3;

    /// <summary>The nodes' <c>fanout.write_threshold</c>.</summary>
    public const int FanoutWriteThreshold = 8;

    /// <summary>The xunit collection of every class on this fixture: they run one after another (each class has its
    /// own cluster), since the clusters of one test process would share the namespaces' names and the subnet.</summary>
    public const string Collection = "three-node cluster";

    /// <summary>Bound of every wait on the cluster (starts, map changes, liveness).</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(45);

    private const string Subnet = "10.77.0";
    private readonly IMessageSink _diagnostics;
    private readonly string _netnsName = "cbe" + (Environment.ProcessId % 100_000);
    private readonly string _workDir = Path.Combine(Path.GetTempPath(), "chatbroker-e2e-cluster-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly byte[] _secret = RandomNumberGenerator.GetBytes(32);
    private EtcdFixture? _loopbackEtcd;
    private bool _netnsUp;

    public ThreeNodeCluster(IMessageSink diagnostics)
    {
        _diagnostics = diagnostics;
        Secret = new TokenSecret(_secret);
    }

    /// <summary>How the nodes run: "network namespaces …" or "child processes on 127.0.0.1 …", with the reason.</summary>
    public string Mode { get; private set; } = "";

    public string EtcdEndpoint { get; private set; } = "";

    /// <summary>This cluster's etcd prefix (its own, so nothing else in that etcd is seen).</summary>
    public string Prefix { get; } = "/e2e-" + Guid.NewGuid().ToString("N")[..12];

    public TokenSecret Secret { get; }

    /// <summary>The nodes' <c>cluster.replication_factor</c>: 1 (no replicas) for the routing suites, whose kill test
    /// expects a dead node's ranges to wait for it; <see cref="ClusterReplicationTests"/> runs its own cluster with 3.</summary>
    public virtual int ReplicationFactor => 1;

    public IReadOnlyList<ClusterNodeProcess> Nodes { get; private set; } = [];

    /// <summary>The ring the nodes route by (all three active, the map's vnodes).</summary>
    public HashRing Ring { get; private set; } = null!;

    public ClusterNodeProcess this[string id] => Nodes.Single(n => n.Id == id);

    public async Task InitializeAsync()
    {
        try
        {
            Directory.CreateDirectory(_workDir);
            Mode = await TryNetnsAsync() is { } reason
                ? $"child processes on 127.0.0.1 with distinct ports (no network namespaces: {reason})"
                : $"network namespaces {_netnsName}-1..3 at {Subnet}.1-3 (bridge in {_netnsName}-hub, this process at {Subnet}.254)";
            _diagnostics.OnMessage(new DiagnosticMessage("ThreeNodeCluster: " + Mode));
            await Console.Error.WriteLineAsync("ThreeNodeCluster: " + Mode);

            if (_netnsUp)
            {
                EtcdEndpoint = (await RunAsync("bash", [Script("netns-cluster.sh"), "etcd", "start", "1"], NetnsEnvironment, TimeSpan.FromMinutes(5))).Trim();
            }
            else
            {
                _loopbackEtcd = new EtcdFixture();
                await _loopbackEtcd.InitializeAsync();
                EtcdEndpoint = _loopbackEtcd.Endpoint;
            }

            var nodes = new List<ClusterNodeProcess>();
            for (var i = 1; i <= Size; i++)
            {
                nodes.Add(_netnsUp
                    ? new ClusterNodeProcess($"n{i}", IPAddress.Parse($"{Subnet}.{i}"), 7883, 7890, 8080, Path.Combine(_workDir, $"n{i}"), ["ip", "netns", "exec", $"{_netnsName}-{i}"])
                    : new ClusterNodeProcess($"n{i}", IPAddress.Loopback, FreePort(), FreePort(), 0, Path.Combine(_workDir, $"n{i}"), null));
            }

            Nodes = nodes;
            // The first node writes the map; the others join it, one compare-and-set each, in any order.
            await StartAsync(nodes[0]);
            await Task.WhenAll(nodes.Skip(1).Select(StartAsync));
            foreach (var node in nodes)
            {
                await node.Process!.WaitForLineAsync(AllThreeActive()).WaitAsync(Patience);
                await node.Process.WaitForLineAsync(LiveNodes(Size)).WaitAsync(Patience);
                await WaitReadyAsync(node);
            }

            Ring = HashRing.Create(nodes.Select(n => n.Id), 128);
        }
        catch
        {
            await DisposeAsync();
            throw;
        }
    }

    /// <summary>Starts (or restarts, on the same data directory and ports) one node and waits for its "Ready".</summary>
    public async Task StartAsync(ClusterNodeProcess node)
    {
        Directory.CreateDirectory(node.DataDir);
        string[] args =
        [
            "--set", $"tcp.listen={node.Address}:{node.TcpPort}",
            "--set", $"admin.listen={node.Address}:{node.AdminPort}",
            "--set", "auth.secret=" + Convert.ToBase64String(_secret),
            "--set", "cluster.etcd_endpoints=" + EtcdEndpoint,
            "--set", "cluster.etcd_prefix=" + Prefix,
            "--set", "cluster.node_id=" + node.Id,
            "--set", $"cluster.mesh_listen={node.Address}:{node.MeshPort}",
            "--set", "cluster.auto_join=true",
            // A killed node drops out of the live members within about 2 s; links to a restarted one come back fast.
            "--set", "cluster.lease_ttl=2s",
            "--set", "cluster.mesh_reconnect_max_delay=300ms",
            // Groups of up to 8 members are fanned out on write, larger ones on read: the tests cover both with few devices.
            "--set", "fanout.write_threshold=" + FanoutWriteThreshold.ToString(System.Globalization.CultureInfo.InvariantCulture),
            // Presence changes are published at once, so the tests wait for packets, not for a debounce.
            "--set", "presence.debounce=0s",
            "--set", "cluster.replication_factor=" + ReplicationFactor.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ];
        node.Process = await BrokerProcess.LaunchAsync(
            new BrokerLaunch { DataDir = node.DataDir, Wrapper = node.Wrapper, ReadyTimeout = Patience }, args);
    }

    /// <summary>kill -9 of one node: no shutdown code runs, its lease runs out.</summary>
    public async Task KillAsync(ClusterNodeProcess node)
    {
        var process = node.Process!;
        node.Process = null;
        await process.KillAsync();
        await process.DisposeAsync(); // the data directory is the fixture's and stays
    }

    public string Token(string user, string device) => AccessToken.Issue(Secret, user, device, TimeSpan.FromHours(1), DateTimeOffset.UtcNow);

    /// <summary>A raw device logged in at <paramref name="node"/>.</summary>
    public async Task<RawDevice> LoginAsync(ClusterNodeProcess node, string user, string device, ulong resumeInboxSeq = 0,
        ulong capabilities = (ulong)Capability.Receipts)
    {
        var raw = await RawDevice.ConnectAsync(node.Process!.TcpEndPoint);
        var connack = await raw.LoginAsync(user, device, Token(user, device), resumeInboxSeq, capabilities: capabilities);
        if (connack.Reason != ReasonCode.Success)
        {
            await raw.DisposeAsync();
            throw new InvalidOperationException($"login of {user}/{device} at {node.Id} failed: {connack.Reason} {connack.Message}");
        }

        return raw;
    }

    /// <summary>The first user <paramref name="prefix"/>N whose home is <paramref name="home"/> (and that passes
    /// <paramref name="also"/>).</summary>
    public string UserAt(string prefix, string home, Func<string, bool>? also = null) => RingPlacement.UserAt(Ring, prefix, home, also);

    /// <summary>The owner of the direct conversation of two users, as every node derives it.</summary>
    public string OwnerOfDirect(string a, string b) => Ring.ConversationOwner(Broker.Cluster.ClusterOps.DirectConversationId(a, b));

    /// <summary>The cluster settings for <c>chatbroker cluster …</c> run here.</summary>
    public string[] CliSettings => ["--set", "cluster.etcd_endpoints=" + EtcdEndpoint, "--set", "cluster.etcd_prefix=" + Prefix];

    public static async Task WaitReadyAsync(ClusterNodeProcess node)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        var answer = await http.GetStringAsync($"http://{node.Process!.AdminEndPoint}/readyz");
        Assert.Equal("ready\n", answer);
    }

    public async Task DisposeAsync()
    {
        foreach (var node in Nodes)
        {
            if (node.Process is { } process)
            {
                await process.DisposeAsync(); // kills it (by pid) if it still runs
            }
        }

        if (_loopbackEtcd is not null)
        {
            await _loopbackEtcd.DisposeAsync();
        }

        if (_netnsUp)
        {
            // Stops etcd by pid, kills whatever still runs in the namespaces, removes them and the root link.
            await RunAsync("bash", [Script("netns-cluster.sh"), "down"], NetnsEnvironment, TimeSpan.FromMinutes(1));
            _netnsUp = false;
        }

        try
        {
            Directory.Delete(_workDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Brings the namespaces up; null when it did, else why not (then the nodes run on loopback).</summary>
    private async Task<string?> TryNetnsAsync()
    {
        if (Environment.GetEnvironmentVariable("CHATBROKER_E2E_NO_NETNS") == "1")
        {
            return "CHATBROKER_E2E_NO_NETNS=1";
        }

        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
        {
            return "not root";
        }

        try
        {
            await RunAsync("bash", [Script("netns-cluster.sh"), "up", Size.ToString(System.Globalization.CultureInfo.InvariantCulture), "--root-link"], NetnsEnvironment, TimeSpan.FromMinutes(1));
            _netnsUp = true;
            return null;
        }
        catch (InvalidOperationException e)
        {
            // Half-made namespaces are removed before falling back.
            try
            {
                await RunAsync("bash", [Script("netns-cluster.sh"), "down"], NetnsEnvironment, TimeSpan.FromMinutes(1));
            }
            catch (InvalidOperationException)
            {
            }

            return e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? e.Message;
        }
    }

    private Dictionary<string, string> NetnsEnvironment => new()
    {
        ["CHATBROKER_NETNS_NAME"] = _netnsName,
        ["CHATBROKER_NETNS_STATE"] = Path.Combine(_workDir, "netns"),
    };

    private static async Task<string> RunAsync(string file, string[] args, IDictionary<string, string> environment, TimeSpan timeout)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        foreach (var (k, v) in environment)
        {
            info.Environment[k] = v;
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException("could not start " + file);
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException($"{string.Join(' ', args)} did not finish within {timeout}");
        }

        return process.ExitCode == 0
            ? await stdout
            : throw new InvalidOperationException($"{string.Join(' ', args)} failed (exit {process.ExitCode}):\n{await stderr}");
    }

    private static string Script(string name) => Path.Combine(EtcdFixture.RepositoryRoot(), "scripts", name);

    /// <summary>A loopback port nobody listens on now (the advertised mesh and client addresses need real ports).</summary>
    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>The log line of a node that has the map with all three nodes active.</summary>
    [GeneratedRegex(@"Cluster map epoch \d+: (?=.*\bn1 Active\b)(?=.*\bn2 Active\b)(?=.*\bn3 Active\b)")]
    public static partial Regex AllThreeActive();

    /// <summary>The log line of a node that sees <paramref name="count"/> live nodes.</summary>
    public static Regex LiveNodes(int count) => new($@"Cluster live nodes \({count}\): ", RegexOptions.CultureInvariant);
}

[CollectionDefinition(ThreeNodeCluster.Collection)]
public sealed class ThreeNodeClusterCollection;

/// <summary>One node of <see cref="ThreeNodeCluster"/>: where it runs and, while it runs, its process.</summary>
public sealed class ClusterNodeProcess(string id, IPAddress address, int tcpPort, int meshPort, int adminPort, string dataDir, IReadOnlyList<string>? wrapper)
{
    public string Id { get; } = id;
    public IPAddress Address { get; } = address;
    public int TcpPort { get; } = tcpPort;
    public int MeshPort { get; } = meshPort;
    public int AdminPort { get; } = adminPort;
    public string DataDir { get; } = dataDir;

    /// <summary><c>ip netns exec NS</c> in namespace mode.</summary>
    public IReadOnlyList<string>? Wrapper { get; } = wrapper;

    public BrokerProcess? Process { get; set; }
}
