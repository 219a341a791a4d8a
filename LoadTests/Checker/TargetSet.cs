using System.Net;

namespace ChatBroker.LoadTests.Checker;

/// <summary>
/// The nodes the checker's devices connect to; each connection picks one with the device's seeded random. The
/// join-leave nemesis changes it while the run goes on (a joined node is added, a node that left is removed),
/// as a client's server list would follow the cluster.
/// </summary>
public sealed class TargetSet
{
    private volatile IPEndPoint[] _targets;

    public TargetSet(IEnumerable<IPEndPoint> targets)
    {
        _targets = [.. targets];
        if (_targets.Length == 0)
        {
            throw new ArgumentException("at least one target", nameof(targets));
        }
    }

    public IReadOnlyList<IPEndPoint> Current => _targets;

    public IPEndPoint Pick(Random random)
    {
        var targets = _targets; // one snapshot: a concurrent change cannot move the bound under the index
        return targets[random.Next(targets.Length)];
    }

    public void Add(IPEndPoint target) => _targets = [.. _targets, target];

    /// <summary>Removes <paramref name="target"/> unless it is the last one.</summary>
    public void Remove(IPEndPoint target)
    {
        var left = Array.FindAll(_targets, t => !t.Equals(target));
        if (left.Length > 0)
        {
            _targets = left;
        }
    }
}
