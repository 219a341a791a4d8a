using ChatBroker.LoadTests.Cluster;

namespace ChatBroker.LoadTests.Checker;

/// <summary>A node of a cluster the harness started, as a <see cref="IFaultableNode"/> (kill -9 and restart on its data and ports).</summary>
public sealed class ClusterFaultNode(ClusterNodeProcess node) : IFaultableNode
{
    public string Name => node.Id;

    public string? ClusterId => node.Id;

    public async Task KillAsync()
    {
        node.Down = true;
        await node.Broker.KillHardAsync().ConfigureAwait(false);
    }

    public async Task StartAsync()
    {
        await node.Broker.RestartAsync().ConfigureAwait(false);
        node.Down = false;
    }

    public void Pause() => node.Broker.Pause();

    public void Resume() => node.Broker.Resume();
}

/// <summary>
/// kill -9 of the cluster's etcd; the heal starts it again on its ports and data. With one member (the default) the
/// whole etcd goes: while it is down the nemesis tries one map change (`cluster join` of a node that is already a
/// member: a no-op when etcd is up) and records whether it was refused, so the history shows that map changes wait
/// for etcd while sends go on. With 3 or 5 members (--etcd-members, --netns) it kills one member (seeded), so a
/// quorum stays and the same map change must go through.
/// </summary>
public sealed class EtcdNemesis(ClusterLauncher cluster, TextWriter log) : INemesis
{
    private readonly List<EtcdProcess> _down = [];

    public string Name => "etcd";

    public async Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken)
    {
        if (_down.Count > 0)
        {
            return new NemesisStep("kill etcd (already down)", "etcd");
        }

        var whole = cluster.Etcd.Members.Count == 1;
        var victims = whole ? cluster.Etcd.Members : [cluster.Etcd.Members[random.Next(cluster.Etcd.Members.Count)]];
        foreach (var m in victims)
        {
            await m.KillHardAsync().ConfigureAwait(false);
            _down.Add(m);
        }

        var member = FirstRunning()?.Id ?? "n1";
        var changed = await cluster.JoinAsync(member, log).ConfigureAwait(false);
        return whole
            ? new NemesisStep($"kill -9 etcd; map change (cluster join {member}) during the outage: {(changed ? "APPLIED (unexpected)" : "refused")}", "etcd")
            : new NemesisStep($"kill -9 etcd member {victims[0].Name} (a quorum left); map change (cluster join {member}) meanwhile: {(changed ? "applied" : "REFUSED (unexpected)")}", "etcd");
    }

    public async Task<string?> HealAsync(CancellationToken cancellationToken)
    {
        if (_down.Count == 0)
        {
            return null;
        }

        foreach (var m in _down)
        {
            await m.RestartAsync().ConfigureAwait(false);
        }

        var names = string.Join(',', _down.Select(m => m.Name));
        _down.Clear();
        return $"restart etcd {names} ({cluster.Etcd.Pids})";
    }

    private ClusterNodeProcess? FirstRunning()
    {
        foreach (var n in cluster.Nodes)
        {
            if (!n.Down && !n.Retired)
            {
                return n;
            }
        }

        return null;
    }
}

/// <summary>
/// A ring change under load: start a new node (cluster.auto_join = false), `cluster join` it, wait until every
/// node's map has it Active, add it to the clients' targets; then `cluster leave` another Active node (seeded
/// pick), wait until it is out of every map, take it out of the targets and stop it (SIGTERM). Each change is
/// recorded as a MAP event, so the checker knows the ring at every moment. The heal does nothing: a ring change
/// is not undone. What moves with a change is the broker's business (range hand-over, docs/cluster.md).
/// </summary>
public sealed class JoinLeaveNemesis(ClusterLauncher cluster, TargetSet targets, HistoryRecorder history, TextWriter log) : INemesis
{
    private static readonly TimeSpan MapTimeout = TimeSpan.FromSeconds(30);

    public string Name => "join-leave";

    public async Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken)
    {
        var joined = await cluster.StartNodeAsync(autoJoin: false).ConfigureAwait(false);
        log.WriteLine($"nemesis: started {joined.Id} pid {joined.Broker.Pid} at {joined.Client}");
        if (!await cluster.JoinAsync(joined.Id, log).ConfigureAwait(false))
        {
            return new NemesisStep($"join {joined.Id} refused", null);
        }

        await cluster.WaitForMapAsync(m => Has(m, joined.Id), MapTimeout).ConfigureAwait(false);
        targets.Add(joined.Client);
        var map = await RecordMapAsync(cluster, history).ConfigureAwait(false);

        var candidates = new List<ClusterNodeProcess>();
        foreach (var n in cluster.Nodes)
        {
            if (n != joined && !n.Retired && !n.Down && map is not null && Has(map, n.Id))
            {
                candidates.Add(n);
            }
        }

        if (candidates.Count == 0)
        {
            return new NemesisStep($"join {joined.Id}; no other node to leave", null);
        }

        var leaving = candidates[random.Next(candidates.Count)];
        if (!await cluster.LeaveAsync(leaving.Id, log).ConfigureAwait(false))
        {
            return new NemesisStep($"join {joined.Id}; leave {leaving.Id} refused", null);
        }

        await cluster.WaitForMapAsync(m => !Contains(m, leaving.Id), MapTimeout).ConfigureAwait(false);
        await RecordMapAsync(cluster, history).ConfigureAwait(false);
        targets.Remove(leaving.Client);
        await cluster.RetireAsync(leaving).ConfigureAwait(false);
        return new NemesisStep($"join {joined.Id} ({joined.Client}), leave {leaving.Id} ({leaving.Client}, then stopped)", null);
    }

    public Task<string?> HealAsync(CancellationToken cancellationToken) => Task.FromResult<string?>(null);

    /// <summary>Records the ring's members (the Active ones of the map a node holds) as a MAP event; returns the map.</summary>
    public static async Task<ClusterMapSnapshot?> RecordMapAsync(ClusterLauncher cluster, HistoryRecorder history)
    {
        if (await cluster.ReadMapAsync().ConfigureAwait(false) is not { } map)
        {
            return null;
        }

        var active = map.Active;
        var nodes = new string[active.Count];
        for (var i = 0; i < nodes.Length; i++)
        {
            nodes[i] = active[i].Id + "=" + active[i].Client;
        }

        history.Record(new HistoryEvent { Op = HistoryEvent.Map, Epoch = map.Epoch, Vnodes = map.VirtualNodes, Nodes = nodes });
        return map;
    }

    private static bool Has(ClusterMapSnapshot map, string id)
    {
        foreach (var m in map.Active)
        {
            if (m.Id == id)
            {
                return true;
            }
        }

        return false;
    }

    private static bool Contains(ClusterMapSnapshot map, string id)
    {
        foreach (var m in map.Members)
        {
            if (m.Id == id)
            {
                return true;
            }
        }

        return false;
    }
}
