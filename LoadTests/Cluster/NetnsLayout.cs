using System.Diagnostics;
using System.Globalization;

namespace ChatBroker.LoadTests.Cluster;

/// <summary>
/// `--netns`: the cluster in network namespaces of scripts/netns-cluster.sh, as on separate machines. The harness
/// started by hand (the outer process) creates namespaces cbload-1..cbload-K, runs a copy of itself in the last one
/// (the "client machine"; the test subnet exists only inside the namespaces) with <see cref="Variable"/> set, and
/// removes them all when that copy ends, also after a failure. In the copy node i runs in cbload-i at 10.77.0.i
/// (client port 7883, mesh 7890, admin 7880) and etcd member j (of --etcd-members M) in the namespace after the
/// client's + j at its address, port 2379: a machine of its own, so a partition can cut a node off from etcd
/// without touching etcd. Each is started through `ip netns exec`, which execs it, so the harness holds its real pid.
/// </summary>
public sealed class NetnsLayout(int clientNamespace, int etcdMembers = 1)
{
    /// <summary>Set in the copy that runs inside the client namespace: "K:M", K the client namespace, M the etcd members.</summary>
    public const string Variable = "CHATBROKER_LOAD_NETNS";

    /// <summary>
    /// CHATBROKER_NETNS_NAME for scripts/netns-cluster.sh: the harness's namespaces are cbload-1.., so they never
    /// collide with the test suite's (cbnet-*) on a shared machine, and its `down` removes only its own.
    /// </summary>
    public const string Name = "cbload";

    /// <summary>Namespaces beyond the first N nodes for nodes the join-leave nemesis starts.</summary>
    public const int SpareNodes = 3;

    public int ClientNamespace { get; } = clientNamespace;

    /// <summary>Members of the run's etcd (1, 3 or 5), each in a namespace of its own.</summary>
    public int EtcdMembers { get; } = etcdMembers;

    /// <summary>The namespace of etcd member <paramref name="member"/> (1-based): after the client's.</summary>
    public int EtcdNamespace(int member) => ClientNamespace + member;

    /// <summary>Every namespace of the run: nodes, spares, the client, etcd.</summary>
    public int Namespaces => ClientNamespace + EtcdMembers;

    /// <summary>Nodes fit in cbload-1 .. cbload-(client − 1).</summary>
    public int MaxNodes => ClientNamespace - 1;

    /// <summary>The layout of this process when it is the copy inside the client namespace; else null.</summary>
    public static NetnsLayout? FromEnvironment()
    {
        var value = Environment.GetEnvironmentVariable(Variable)?.Split(':');
        return value is { Length: 2 }
            && int.TryParse(value[0], NumberStyles.None, CultureInfo.InvariantCulture, out var k) && k > 1
            && int.TryParse(value[1], NumberStyles.None, CultureInfo.InvariantCulture, out var m) && m >= 1
            ? new NetnsLayout(k, m) : null;
    }

    public static string Address(int node) => "10.77.0." + node.ToString(CultureInfo.InvariantCulture);

    public static IReadOnlyList<string> Prefix(int node) => ["ip", "netns", "exec", Name + "-" + node.ToString(CultureInfo.InvariantCulture)];

    /// <summary>
    /// The outer process: namespaces for <paramref name="clusterNodes"/> nodes, spares and the client, the run in
    /// the client namespace, then `netns-cluster.sh down` whatever happened. Returns the run's exit code.
    /// </summary>
    public static async Task<int> RunOutsideAsync(string[] args, int clusterNodes, int etcdMembers)
    {
        if (Environment.UserName != "root" && !string.Equals(Environment.GetEnvironmentVariable("USER"), "root", StringComparison.Ordinal))
        {
            await Console.Error.WriteLineAsync("--netns needs root (ip netns); run it with sudo, or leave --netns out for loopback ports").ConfigureAwait(false);
            return 2;
        }

        if (clusterNodes < 1)
        {
            await Console.Error.WriteLineAsync("--netns needs --cluster N").ConfigureAwait(false);
            return 2;
        }

        var client = clusterNodes + SpareNodes + 1;
        var layout = new NetnsLayout(client, etcdMembers);
        var script = Path.Combine(EtcdProcess.ScriptsDirectory, "netns-cluster.sh");
        var named = ("CHATBROKER_NETNS_NAME", Name);
        if (await RunAsync(script, ["up", layout.Namespaces.ToString(CultureInfo.InvariantCulture)], inherit: true, named).ConfigureAwait(false) != 0)
        {
            await Console.Error.WriteLineAsync($"--netns: scripts/netns-cluster.sh up failed (namespaces {Name}-* of another run may exist: see `ip netns list`)").ConfigureAwait(false);
            return 1;
        }

        try
        {
            var self = Environment.ProcessPath ?? "dotnet";
            var inner = new List<string> { "netns", "exec", Name + "-" + client.ToString(CultureInfo.InvariantCulture), self };
            if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            {
                inner.Add(typeof(NetnsLayout).Assembly.Location);
            }

            inner.AddRange(args);
            Console.WriteLine($"netns: {clusterNodes} nodes in {Name}-1..{clusterNodes} (10.77.0.x), spares for joins up to {Name}-{client - 1}, the harness in {Name}-{client}, etcd ({etcdMembers} member{(etcdMembers == 1 ? "" : "s")}) in {Name}-{layout.EtcdNamespace(1)}..{layout.EtcdNamespace(etcdMembers)}");
            return await RunAsync("ip", inner, inherit: true, environment: (Variable, client.ToString(CultureInfo.InvariantCulture) + ":" + etcdMembers.ToString(CultureInfo.InvariantCulture))).ConfigureAwait(false);
        }
        finally
        {
            await RunAsync(script, ["down"], inherit: true, named).ConfigureAwait(false);
        }
    }

    private static async Task<int> RunAsync(string file, IEnumerable<string> arguments, bool inherit, (string Key, string Value)? environment = null)
    {
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = !inherit, RedirectStandardError = !inherit };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        if (environment is { } e)
        {
            info.Environment[e.Key] = e.Value;
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException("could not start " + file);
        await process.WaitForExitAsync().ConfigureAwait(false);
        return process.ExitCode;
    }
}
