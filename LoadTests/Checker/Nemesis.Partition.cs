using System.Diagnostics;
using System.Globalization;
using ChatBroker.LoadTests.Cluster;

namespace ChatBroker.LoadTests.Checker;

/// <summary>
/// Network cuts between the namespaces of a --netns run (scripts/netns-cluster.sh: one "machine" per node, per etcd
/// member, and one for the clients). A cut from A to B gives A a permanent neighbour entry for B's address with a
/// MAC nobody has, so A's packets to B go nowhere: silently, as on a real partition (no RST, no ICMP; connects time
/// out, established connections stall). Cutting both directions makes the partition; healing deletes the entries
/// and ARP finds the real neighbour again. The clients' namespace is never cut: devices keep reaching every node, so
/// a node cut off from its peers and etcd still has clients sending to it (the case fencing is for).
/// (Checked here: this kernel has neither iptables nor tc's drop action; neighbour entries need only iproute2.)
/// </summary>
public sealed class NetworkCuts(TextWriter log)
{
    private const string NowhereMac = "02:de:ad:be:ef:01";
    private readonly List<(int From, int To)> _cuts = [];

    public int Count => _cuts.Count;

    /// <summary>Cuts every namespace of <paramref name="a"/> from every one of <paramref name="b"/>, both ways.</summary>
    public async Task CutAsync(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        foreach (var x in a)
        {
            foreach (var y in b)
            {
                await CutOneAsync(x, y).ConfigureAwait(false);
                await CutOneAsync(y, x).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Removes every cut; returns how many there were.</summary>
    public async Task<int> HealAsync()
    {
        var n = _cuts.Count;
        foreach (var (from, to) in _cuts)
        {
            await IpAsync(["-n", Ns(from), "neigh", "del", NetnsLayout.Address(to), "dev", "eth0"]).ConfigureAwait(false);
        }

        _cuts.Clear();
        return n;
    }

    private async Task CutOneAsync(int from, int to)
    {
        if (from == to || _cuts.Contains((from, to)))
        {
            return;
        }

        if (await IpAsync(["-n", Ns(from), "neigh", "replace", NetnsLayout.Address(to), "lladdr", NowhereMac, "dev", "eth0", "nud", "permanent"]).ConfigureAwait(false))
        {
            _cuts.Add((from, to));
        }
    }

    private static string Ns(int index) => NetnsLayout.Name + "-" + index.ToString(CultureInfo.InvariantCulture);

    private async Task<bool> IpAsync(string[] arguments)
    {
        var info = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        using var ip = Process.Start(info) ?? throw new InvalidOperationException("could not run ip");
        var error = await ip.StandardError.ReadToEndAsync().ConfigureAwait(false);
        await ip.WaitForExitAsync().ConfigureAwait(false);
        if (ip.ExitCode != 0)
        {
            log.WriteLine($"nemesis: ip {string.Join(' ', arguments)} failed: {error.Trim()}");
        }

        return ip.ExitCode == 0;
    }
}

/// <summary>
/// Partitions (--netns): each fault either isolates one node from every other node and every etcd member (its
/// clients still reach it), or splits the nodes into a minority of 1..⌊(N−1)/2⌋ nodes, with the etcd members a
/// quorum can spare, and the majority with the rest. The heal removes every cut.
/// </summary>
public sealed class PartitionNemesis(ClusterLauncher cluster, TextWriter log) : INemesis
{
    private readonly NetworkCuts _cuts = new(log);

    public string Name => "partition";

    public async Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken)
    {
        var nodes = ClusterNemesisNodes.Running(cluster);
        var etcd = cluster.Etcd.Members.Select(m => m.Namespace!.Value).ToList();
        if (nodes.Count < 2)
        {
            return new NemesisStep("partition: fewer than 2 nodes running", null);
        }

        if (random.Next(2) == 0)
        {
            var x = nodes[random.Next(nodes.Count)];
            var rest = nodes.Where(n => n != x).Select(n => n.Namespace!.Value).Concat(etcd).ToList();
            await _cuts.CutAsync([x.Namespace!.Value], rest).ConfigureAwait(false);
            return new NemesisStep($"partition: {x.Id} cut off from the other nodes and etcd (its clients still reach it)", x.Id);
        }

        var shuffled = nodes.OrderBy(_ => random.Next()).ToList();
        var minoritySize = 1 + random.Next(Math.Max(1, (nodes.Count - 1) / 2));
        var minority = shuffled.Take(minoritySize).ToList();
        var majority = shuffled.Skip(minoritySize).ToList();
        var etcdMinority = etcd.OrderBy(_ => random.Next()).Take(cluster.Etcd.Tolerates).ToList();
        var etcdMajority = etcd.Except(etcdMinority).ToList();
        await _cuts.CutAsync([.. minority.Select(n => n.Namespace!.Value), .. etcdMinority], [.. majority.Select(n => n.Namespace!.Value), .. etcdMajority]).ConfigureAwait(false);
        string Names(IEnumerable<ClusterNodeProcess> ns, IEnumerable<int> es) =>
            string.Join(',', ns.Select(n => n.Id).Concat(es.Select(e => "etcd@" + NetnsLayout.Address(e))));
        return new NemesisStep($"partition: {{{Names(minority, etcdMinority)}}} | {{{Names(majority, etcdMajority)}}}", string.Join(',', minority.Select(n => n.Id)));
    }

    public async Task<string?> HealAsync(CancellationToken cancellationToken) =>
        await _cuts.HealAsync().ConfigureAwait(false) is var n && n > 0 ? $"heal partition ({n} cuts removed)" : null;
}

/// <summary>
/// All faults mixed (the Cluster II run): each fault hits <c>concurrency</c> distinct running nodes, each with a
/// seeded pick of kill -9 (restarted at the heal), SIGSTOP (SIGCONT at the heal) or, with --netns, a cut from the
/// other nodes and etcd; and, when etcd has members to spare (--etcd-members 3 or 5), a quarter of the faults also
/// kill -9 one etcd member. Faults last a seeded 0.5–8 s unless --nemesis-hold says otherwise, so some outlast the
/// lease (failover) and some do not.
/// </summary>
public sealed class MixNemesis(ClusterLauncher cluster, int concurrency, TextWriter log) : INemesis
{
    private readonly NetworkCuts _cuts = new(log);
    private readonly List<ClusterNodeProcess> _killed = [];
    private readonly List<ClusterNodeProcess> _paused = [];
    private readonly List<EtcdProcess> _etcdKilled = [];

    public string Name => concurrency == 1 ? "mix" : $"mix ×{concurrency}";

    public TimeSpan DefaultHold(Random random) => TimeSpan.FromMilliseconds(500 + random.Next(7500));

    public async Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken)
    {
        var nodes = ClusterNemesisNodes.Running(cluster).OrderBy(_ => random.Next()).Take(concurrency).ToList();
        var what = new List<string>();
        var killed = new List<string>();
        var kinds = cluster.Netns is null ? 2 : 3;
        foreach (var node in nodes)
        {
            switch (random.Next(kinds))
            {
                case 0:
                    node.Down = true;
                    await node.Broker.KillHardAsync().ConfigureAwait(false);
                    _killed.Add(node);
                    killed.Add(node.Id);
                    what.Add("kill -9 " + node.Id);
                    break;
                case 1:
                    node.Broker.Pause();
                    _paused.Add(node);
                    what.Add("SIGSTOP " + node.Id);
                    break;
                default:
                    var others = ClusterNemesisNodes.Running(cluster).Where(n => n != node).Select(n => n.Namespace!.Value)
                        .Concat(cluster.Etcd.Members.Select(m => m.Namespace!.Value)).ToList();
                    await _cuts.CutAsync([node.Namespace!.Value], others).ConfigureAwait(false);
                    what.Add("cut " + node.Id + " off from the other nodes and etcd");
                    break;
            }
        }

        if (cluster.Etcd.Tolerates > 0 && _etcdKilled.Count == 0 && random.Next(4) == 0)
        {
            var member = cluster.Etcd.Members[random.Next(cluster.Etcd.Members.Count)];
            await member.KillHardAsync().ConfigureAwait(false);
            _etcdKilled.Add(member);
            what.Add("kill -9 etcd member " + member.Name);
        }

        return new NemesisStep(string.Join("; ", what), string.Join(',', nodes.Select(n => n.Id)), killed.Count > 0 ? [.. killed] : null);
    }

    public async Task<string?> HealAsync(CancellationToken cancellationToken)
    {
        var what = new List<string>();
        if (await _cuts.HealAsync().ConfigureAwait(false) is > 0 and var cuts)
        {
            what.Add($"heal {cuts} cuts");
        }

        foreach (var node in _paused)
        {
            node.Broker.Resume();
            what.Add("SIGCONT " + node.Id);
        }

        _paused.Clear();
        foreach (var member in _etcdKilled)
        {
            await member.RestartAsync().ConfigureAwait(false);
            what.Add("restart etcd member " + member.Name);
        }

        _etcdKilled.Clear();
        foreach (var node in _killed)
        {
            await node.Broker.RestartAsync().ConfigureAwait(false);
            node.Down = false;
            what.Add("restart " + node.Id);
        }

        _killed.Clear();
        return what.Count > 0 ? string.Join("; ", what) : null;
    }
}

internal static class ClusterNemesisNodes
{
    /// <summary>The nodes that are up and not retired, in start order.</summary>
    public static List<ClusterNodeProcess> Running(ClusterLauncher cluster) => cluster.Nodes.Where(n => !n.Down && !n.Retired).ToList();
}
