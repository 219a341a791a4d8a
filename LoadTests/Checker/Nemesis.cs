namespace ChatBroker.LoadTests.Checker;

/// <summary>
/// A fault injector. <see cref="FaultAsync"/> breaks something (chosen with the run's seeded random) and
/// <see cref="HealAsync"/> undoes whatever is broken; after the last heal everything is back as at the start.
/// <see cref="KillNemesis"/> and <see cref="PauseNemesis"/> work on the single broker the harness started or on
/// the nodes of a cluster it started (Nemesis.Cluster.cs: those nodes, <see cref="EtcdNemesis"/>,
/// <see cref="JoinLeaveNemesis"/>); partitions in network namespaces would implement the same two methods.
/// </summary>
public interface INemesis
{
    string Name { get; }

    /// <summary>Injects one fault; returns what it did and the node it hit (a cluster node id, "etcd"), for the history.</summary>
    Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken);

    /// <summary>Undoes the faults in force (a no-op when none); returns what it did, or null when there was nothing.</summary>
    Task<string?> HealAsync(CancellationToken cancellationToken);

    /// <summary>How long a fault lasts when --nemesis-hold is not given: a seeded 0.2–1.5 s.</summary>
    TimeSpan DefaultHold(Random random) => TimeSpan.FromMilliseconds(200 + random.Next(1300));
}

/// <summary>
/// What a fault did (for the history's NEMESIS event), the nodes it hit (cluster node ids, comma-separated; null on a
/// single node) and the nodes it killed with kill -9 (for the recovery times, <see cref="RecoveryTally"/>).
/// </summary>
public readonly record struct NemesisStep(string What, string? Node, string[]? Killed = null);

/// <summary>A node the nemesis can hurt: the single broker the harness started, later each node of a cluster.</summary>
public interface IFaultableNode
{
    string Name { get; }

    /// <summary>The node's id in the cluster map; null for a single broker.</summary>
    string? ClusterId { get; }

    Task KillAsync();

    Task StartAsync();

    void Pause();

    void Resume();
}

/// <summary>The broker the harness started, as a <see cref="IFaultableNode"/>.</summary>
public sealed class LocalBrokerNode(BrokerLauncher broker) : IFaultableNode
{
    public string Name => broker.TcpEndPoint.ToString();

    public string? ClusterId => null;

    public Task KillAsync() => broker.KillHardAsync();

    public Task StartAsync() => broker.RestartAsync();

    public void Pause() => broker.Pause();

    public void Resume() => broker.Resume();
}

public sealed class NoNemesis : INemesis
{
    public string Name => "none";

    public Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken) => Task.FromResult(new NemesisStep("none", null));

    public Task<string?> HealAsync(CancellationToken cancellationToken) => Task.FromResult<string?>(null);
}

/// <summary>kill -9 of one node (picked by the seeded random); the heal restarts it on its data directory and ports.</summary>
public sealed class KillNemesis(IReadOnlyList<IFaultableNode> nodes) : INemesis
{
    private readonly List<IFaultableNode> _down = [];

    public string Name => "kill";

    public async Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken)
    {
        var node = nodes[random.Next(nodes.Count)];
        if (_down.Contains(node))
        {
            return new NemesisStep("kill " + node.Name + " (already down)", node.ClusterId);
        }

        await node.KillAsync().ConfigureAwait(false);
        _down.Add(node);
        return new NemesisStep("kill -9 " + node.Name, node.ClusterId, node.ClusterId is { } id ? [id] : null);
    }

    public async Task<string?> HealAsync(CancellationToken cancellationToken)
    {
        if (_down.Count == 0)
        {
            return null;
        }

        var names = new List<string>();
        foreach (var node in _down)
        {
            await node.StartAsync().ConfigureAwait(false);
            names.Add(node.Name);
        }

        _down.Clear();
        return "restart " + string.Join(',', names);
    }
}

/// <summary>SIGSTOP of one node; the heal sends SIGCONT.</summary>
public sealed class PauseNemesis(IReadOnlyList<IFaultableNode> nodes) : INemesis
{
    private readonly List<IFaultableNode> _paused = [];

    public string Name => "pause";

    public Task<NemesisStep> FaultAsync(Random random, CancellationToken cancellationToken)
    {
        var node = nodes[random.Next(nodes.Count)];
        if (!_paused.Contains(node))
        {
            node.Pause();
            _paused.Add(node);
        }

        return Task.FromResult(new NemesisStep("SIGSTOP " + node.Name, node.ClusterId));
    }

    public Task<string?> HealAsync(CancellationToken cancellationToken)
    {
        if (_paused.Count == 0)
        {
            return Task.FromResult<string?>(null);
        }

        var names = new List<string>();
        foreach (var node in _paused)
        {
            node.Resume();
            names.Add(node.Name);
        }

        _paused.Clear();
        return Task.FromResult<string?>("SIGCONT " + string.Join(',', names));
    }
}

/// <summary>
/// Runs a nemesis on a seeded schedule: every interval (± 50 %, from the seed) a fault, held for a seeded
/// 0.2–1.5 s (or a fixed hold), then the heal, at most <c>maxFaults</c> times (0 = until the run stops); at the end a last heal, so
/// the final reads see a whole system.
/// </summary>
public static class NemesisSchedule
{
    public static async Task<int> RunAsync(INemesis nemesis, TimeSpan interval, Random random, HistoryRecorder history, int maxFaults, TimeSpan? hold, CancellationToken stop)
    {
        var faults = 0;
        try
        {
            while (true)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(interval.TotalMilliseconds * (0.5 + random.NextDouble())), stop).ConfigureAwait(false);
                var step = await nemesis.FaultAsync(random, stop).ConfigureAwait(false);
                faults++;
                history.Record(new HistoryEvent { Op = HistoryEvent.Nemesis, Reason = step.What, Node = step.Node, Killed = step.Killed });
                Console.WriteLine($"nemesis: {step.What}");
                await Task.Delay(hold ?? nemesis.DefaultHold(random), stop).ConfigureAwait(false);
                await HealAsync(nemesis, history, CancellationToken.None).ConfigureAwait(false);
                if (maxFaults > 0 && faults >= maxFaults)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }

        await HealAsync(nemesis, history, CancellationToken.None).ConfigureAwait(false);
        return faults;
    }

    private static async Task HealAsync(INemesis nemesis, HistoryRecorder history, CancellationToken cancellationToken)
    {
        if (await nemesis.HealAsync(cancellationToken).ConfigureAwait(false) is { } healed)
        {
            history.Record(new HistoryEvent { Op = HistoryEvent.Nemesis, Reason = healed });
            Console.WriteLine($"nemesis: {healed}");
        }
    }
}
