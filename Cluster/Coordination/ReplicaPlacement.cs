using System.Collections.Immutable;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// The replica sets a map's ring gives (docs/cluster.md, "Replication"). A range's primary is its ring owner and its
/// replicas are the next distinct nodes clockwise (<see cref="HashRing.GetOwners"/>). Sets are kept per primary
/// (<see cref="ReplicaSet.Range"/> = <c>node:&lt;id&gt;</c>): all of one primary's ranges reach a replica over one mesh
/// stream, so a replica falls behind (and catches up) for all of them at once, and the map holds one in-sync list
/// per primary instead of one per vnode.
/// </summary>
public static class ReplicaPlacement
{
    public const string RangePrefix = "node:";

    /// <summary>Copies of each range under <paramref name="map"/>: its factor, at most the members that own ranges
    /// (Active and Leaving). With factor 3: one node has no replicas, two nodes two copies, three and more three.</summary>
    public static int EffectiveFactor(ClusterMap map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var owning = 0;
        foreach (var m in map.Members)
        {
            if (m.State != MemberState.Joining)
            {
                owning++;
            }
        }

        return Math.Min(map.ReplicationFactor, owning);
    }

    /// <summary>
    /// The replica sets of <paramref name="map"/>'s ring, one per primary, sorted by primary. A replica keeps its place
    /// in the in-sync list only if <paramref name="map"/>'s set of the same primary already had it in sync; every new
    /// replica starts out of sync (it has none of the primary's data until it caught up). Empty with factor 1.
    /// </summary>
    public static ImmutableArray<ReplicaSet> Derive(ClusterMap map)
    {
        var factor = EffectiveFactor(map);
        if (factor <= 1)
        {
            return [];
        }

        var owning = new List<string>();
        foreach (var m in map.Members)
        {
            if (m.State != MemberState.Joining)
            {
                owning.Add(m.NodeId);
            }
        }

        var ring = HashRing.Create(owning, map.VirtualNodes);
        var replicas = new SortedSet<string>[ring.NodeCount];
        for (var i = 0; i < replicas.Length; i++)
        {
            replicas[i] = new SortedSet<string>(StringComparer.Ordinal);
        }

        Span<int> owners = stackalloc int[ClusterMap.MaxReplicationFactor];
        for (var p = 0; p < ring.PointCount; p++)
        {
            var found = ring.GetOwners(ring.PointAt(p), owners[..factor]);
            for (var k = 1; k < found; k++)
            {
                replicas[owners[0]].Add(ring.Nodes[owners[k]]);
            }
        }

        var sets = ImmutableArray.CreateBuilder<ReplicaSet>(ring.NodeCount);
        for (var i = 0; i < ring.NodeCount; i++)
        {
            var primary = ring.Nodes[i];
            var previous = Find(map, primary);
            var inSync = ImmutableArray.CreateBuilder<string>();
            foreach (var r in replicas[i])
            {
                if (previous is not null && previous.InSync.Contains(r))
                {
                    inSync.Add(r);
                }
            }

            sets.Add(new ReplicaSet(RangePrefix + primary, primary, [.. replicas[i]], inSync.ToImmutable()));
        }

        return sets.MoveToImmutable();
    }

    /// <summary>The set of <paramref name="primary"/>'s ranges in <paramref name="map"/>, or null.</summary>
    public static ReplicaSet? Find(ClusterMap map, string primary)
    {
        ArgumentNullException.ThrowIfNull(map);
        foreach (var set in map.ReplicaSets)
        {
            if (string.Equals(set.Primary, primary, StringComparison.Ordinal))
            {
                return set;
            }
        }

        return null;
    }

    /// <summary>True when the map's sets are what its ring gives (a primary writes them by compare-and-set when not).</summary>
    public static bool IsCurrent(ClusterMap map)
    {
        var derived = Derive(map);
        if (derived.Length != map.ReplicaSets.Length)
        {
            return false;
        }

        for (var i = 0; i < derived.Length; i++)
        {
            var stored = Find(map, derived[i].Primary);
            if (stored is null || !stored.Replicas.SequenceEqual(derived[i].Replicas) || !stored.InSync.SequenceEqual(derived[i].InSync))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The map with <paramref name="replica"/> added to (or removed from) the in-sync list of
    /// <paramref name="primary"/>'s set: the change a primary proposes by compare-and-set after a replica caught up
    /// (or fell behind). Null when the set does not list it as a replica.</summary>
    public static ClusterMap? WithInSync(ClusterMap map, string primary, string replica, bool inSync)
    {
        ArgumentNullException.ThrowIfNull(map);
        var sets = map.ReplicaSets.ToBuilder();
        for (var i = 0; i < sets.Count; i++)
        {
            var set = sets[i];
            if (!string.Equals(set.Primary, primary, StringComparison.Ordinal))
            {
                continue;
            }

            if (!set.Replicas.Contains(replica))
            {
                return null;
            }

            var list = new List<string>();
            foreach (var r in set.Replicas)
            {
                // Kept in the replicas' order, so two maps with the same members compare equal.
                if (string.Equals(r, replica, StringComparison.Ordinal) ? inSync : set.InSync.Contains(r))
                {
                    list.Add(r);
                }
            }

            sets[i] = set with { InSync = [.. list] };
            return map with { ReplicaSets = sets.ToImmutable() };
        }

        return null;
    }
}
