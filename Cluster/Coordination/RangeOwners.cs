using System.Collections.Immutable;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// Who serves each range of a map's ring: the one owner lookup for conversations and users' homes (docs/cluster.md,
/// "Failover"). The ring holds every member that owns ranges (Active, Leaving and Failed), so a failure does not move
/// the ring; a range whose ring owner is <see cref="MemberState.Failed"/> is served by its first in-sync replica in
/// ring order (<see cref="HashRing.GetOwners"/>: the next distinct nodes clockwise) that is not Failed itself, and by
/// nobody (index -1: the routing answers SERVER_UNAVAILABLE, reads too) when it has none: a restarted Failed node's store
/// lacks what its replicas acknowledged while they served, so it neither sequences nor answers for the range. Built
/// once per map; a lookup is a binary search and one array read, and allocates nothing.
/// </summary>
public sealed class RangeOwners
{
    private readonly int[]? _serving; // by point index: the node index serving that range; null when no member is Failed
    private readonly bool[] _failed;  // by node index
    private readonly bool[] _serves;  // by node index: serves at least one range

    private RangeOwners(HashRing ring, bool[] failed, int[]? serving)
    {
        Ring = ring;
        _failed = failed;
        _serving = serving;
        _serves = new bool[ring.NodeCount];
        for (var p = 0; p < ring.PointCount; p++)
        {
            if (OwnerIndexOfPoint(p) is var n and >= 0)
            {
                _serves[n] = true;
            }
        }
    }

    /// <summary>The ring of the members that own ranges (Active, Leaving and Failed).</summary>
    public HashRing Ring { get; }

    /// <summary>True when some member is Failed (lookups then go through the serving table).</summary>
    public bool HasFailed => _serving is not null;

    /// <summary>The owners of <paramref name="map"/>'s ranges, or null when no member owns any (no map, only joiners).</summary>
    public static RangeOwners? Create(ClusterMap map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var owning = new List<string>();
        foreach (var m in map.Members)
        {
            if (m.State != MemberState.Joining)
            {
                owning.Add(m.NodeId);
            }
        }

        return owning.Count == 0 ? null : Create(map, HashRing.Create(owning, map.VirtualNodes));
    }

    /// <summary>As <see cref="Create(ClusterMap)"/>, on a ring already built from the map's owning members.</summary>
    public static RangeOwners Create(ClusterMap map, HashRing ring)
    {
        ArgumentNullException.ThrowIfNull(map);
        ArgumentNullException.ThrowIfNull(ring);
        var failed = new bool[ring.NodeCount];
        var any = false;
        foreach (var m in map.Members)
        {
            if (m.State == MemberState.Failed && ring.IndexOf(m.NodeId) is var i and >= 0)
            {
                failed[i] = any = true;
            }
        }

        if (!any)
        {
            return new RangeOwners(ring, failed, null);
        }

        var factor = ReplicaPlacement.EffectiveFactor(map);
        var inSync = new ImmutableArray<string>[ring.NodeCount];
        for (var n = 0; n < ring.NodeCount; n++)
        {
            inSync[n] = failed[n] && ReplicaPlacement.Find(map, ring.Nodes[n]) is { } set ? set.InSync : [];
        }

        var serving = new int[ring.PointCount];
        Span<int> owners = stackalloc int[ClusterMap.MaxReplicationFactor];
        for (var p = 0; p < serving.Length; p++)
        {
            var owner = ring.NodeIndexOfPoint(p);
            serving[p] = owner;
            if (!failed[owner])
            {
                continue;
            }

            serving[p] = -1; // unless an in-sync replica of the range is there to take it

            var found = OwnersFrom(ring, p, owners[..Math.Max(1, factor)]);
            for (var k = 1; k < found; k++)
            {
                if (!failed[owners[k]] && inSync[owner].Contains(ring.Nodes[owners[k]]))
                {
                    serving[p] = owners[k];
                    break;
                }
            }
        }

        return new RangeOwners(ring, failed, serving);
    }

    /// <summary>The node index serving the range <paramref name="hash"/> falls in; -1 when nobody does (its ring owner
    /// and every in-sync replica of it are Failed).</summary>
    public int OwnerIndex(ulong hash)
    {
        var point = Ring.PointIndexOf(hash);
        return _serving is null ? Ring.NodeIndexOfPoint(point) : _serving[point];
    }

    /// <summary>The node index serving the range that ends at point <paramref name="pointIndex"/>.</summary>
    public int OwnerIndexOfPoint(int pointIndex) => _serving is null ? Ring.NodeIndexOfPoint(pointIndex) : _serving[pointIndex];

    /// <summary>The node that sequences and stores <paramref name="conversationId"/> under this map.</summary>
    public string ConversationOwner(ulong conversationId) => NodeOrNobody(OwnerIndex(HashRing.HashConversation(conversationId)));

    /// <summary>The home node of <paramref name="userId"/> under this map.</summary>
    public string UserHome(ReadOnlySpan<char> userId) => NodeOrNobody(OwnerIndex(HashRing.HashUser(userId)));

    /// <summary>The node id at <paramref name="index"/>, or "" for -1 (a range served by nobody).</summary>
    private string NodeOrNobody(int index) => index >= 0 ? Ring.Nodes[index] : "";

    public bool IsFailed(int nodeIndex) => nodeIndex >= 0 && _failed[nodeIndex];

    /// <summary>True when the node serves at least one range (a Failed node serves none):
    /// the nodes an operation over every owner (a group LIST) asks.</summary>
    public bool ServesAny(int nodeIndex) => nodeIndex >= 0 && _serves[nodeIndex];

    /// <summary>True when both give every range to the same node (same ring, same serving).</summary>
    public bool SameServing(RangeOwners other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Ring.PointCount != Ring.PointCount || other.Ring.NodeCount != Ring.NodeCount)
        {
            return false;
        }

        for (var n = 0; n < Ring.NodeCount; n++)
        {
            if (!string.Equals(Ring.Nodes[n], other.Ring.Nodes[n], StringComparison.Ordinal))
            {
                return false;
            }
        }

        for (var p = 0; p < Ring.PointCount; p++)
        {
            if (OwnerIndexOfPoint(p) != other.OwnerIndexOfPoint(p))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// True when marking <paramref name="nodeId"/> Failed in <paramref name="map"/> gives at least one of its ranges to
    /// a replica: the member is Active, nothing is moving (no member Joining or Leaving: a hand-over works on the ring
    /// owners, see docs/cluster.md), and some replica of one of its ranges is in its set's in-sync list, not Failed and
    /// live by <paramref name="isLive"/>.
    /// </summary>
    public static bool CanFailOver(ClusterMap map, string nodeId, Func<string, bool> isLive)
    {
        ArgumentNullException.ThrowIfNull(map);
        ArgumentNullException.ThrowIfNull(isLive);
        foreach (var m in map.Members)
        {
            if (m.State is MemberState.Joining or MemberState.Leaving)
            {
                return false;
            }
        }

        if (map.FindMember(nodeId) is not { State: MemberState.Active } || ReplicaPlacement.Find(map, nodeId) is not { } set)
        {
            return false;
        }

        foreach (var replica in set.InSync)
        {
            if (map.FindMember(replica) is { State: MemberState.Active } && isLive(replica))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// The map with <paramref name="nodeId"/> taken off the ring for good (the failed-node timeout), or null when that
    /// would give some range to a node that does not hold its data: removing a member gives each of its ranges to the
    /// next node clockwise, so every range must already be served by that node (its first replica was in sync), and
    /// the serving of every other range must not change. The replica sets are derived anew; a primary that took over
    /// ranges of the removed node keeps in sync only the replicas that were in sync for both (the others catch up).
    /// </summary>
    public static ClusterMap? WithoutFailed(ClusterMap map, string nodeId)
    {
        ArgumentNullException.ThrowIfNull(map);
        if (map.FindMember(nodeId) is not { State: MemberState.Failed } || Create(map) is not { } before)
        {
            return null;
        }

        var removed = map.WithoutMember(nodeId);
        if (Create(removed) is not { } after)
        {
            return null;
        }

        var gone = before.Ring.IndexOf(nodeId);
        var takers = new HashSet<string>(StringComparer.Ordinal);
        for (var p = 0; p < before.Ring.PointCount; p++)
        {
            var served = before.OwnerIndexOfPoint(p);
            if (served < 0 || served == gone)
            {
                return null; // a range of the failed node has no in-sync replica: it would lose its data
            }

            var nextIndex = after.OwnerIndex(before.Ring.PointAt(p));
            if (nextIndex < 0)
            {
                return null;
            }

            var next = after.Ring.Nodes[nextIndex];
            if (!string.Equals(next, before.Ring.Nodes[served], StringComparison.Ordinal))
            {
                return null;
            }

            if (before.Ring.NodeIndexOfPoint(p) == gone)
            {
                takers.Add(next);
            }
        }

        var failedSet = ReplicaPlacement.Find(map, nodeId);
        var derived = ReplicaPlacement.Derive(removed).ToBuilder();
        for (var i = 0; i < derived.Count; i++)
        {
            if (takers.Contains(derived[i].Primary))
            {
                var kept = ImmutableArray.CreateBuilder<string>();
                foreach (var r in derived[i].InSync)
                {
                    if (failedSet is not null && failedSet.InSync.Contains(r))
                    {
                        kept.Add(r);
                    }
                }

                derived[i] = derived[i] with { InSync = kept.ToImmutable() };
            }
        }

        // Replication ships a record to its range's replicas only (the next distinct nodes clockwise), so a replica is
        // in sync for a primary's ranges it replicated. Without the failed node a range may get a replica it never had
        // (the next node along moves up): that replica must catch up before it counts as in sync. Every old range lies
        // inside one new range (the new ring's points are the old ones minus the failed node's), so checking each old
        // range finds them.
        var uncovered = new HashSet<(string Primary, string Replica)>();
        var factorBefore = Math.Max(1, ReplicaPlacement.EffectiveFactor(map));
        var factorAfter = Math.Max(1, ReplicaPlacement.EffectiveFactor(removed));
        Span<int> oldChain = stackalloc int[ClusterMap.MaxReplicationFactor];
        Span<int> newChain = stackalloc int[ClusterMap.MaxReplicationFactor];
        for (var q = 0; q < before.Ring.PointCount; q++)
        {
            var hash = before.Ring.PointAt(q);
            var oldSet = ReplicaPlacement.Find(map, before.Ring.Nodes[before.Ring.NodeIndexOfPoint(q)]);
            var server = before.Ring.Nodes[before.OwnerIndexOfPoint(q)];
            var oldFound = before.Ring.GetOwners(hash, oldChain[..factorBefore]);
            var newFound = after.Ring.GetOwners(hash, newChain[..factorAfter]);
            for (var k = 1; k < newFound; k++)
            {
                var replica = after.Ring.Nodes[newChain[k]];
                var had = string.Equals(replica, server, StringComparison.Ordinal);
                for (var j = 1; j < oldFound && !had; j++)
                {
                    had = string.Equals(before.Ring.Nodes[oldChain[j]], replica, StringComparison.Ordinal) && oldSet is not null && oldSet.InSync.Contains(replica);
                }

                if (!had)
                {
                    uncovered.Add((after.Ring.Nodes[newChain[0]], replica));
                }
            }
        }

        for (var i = 0; i < derived.Count; i++)
        {
            var set = derived[i];
            var kept = ImmutableArray.CreateBuilder<string>();
            foreach (var r in set.InSync)
            {
                if (!uncovered.Contains((set.Primary, r)))
                {
                    kept.Add(r);
                }
            }

            derived[i] = set with { InSync = kept.ToImmutable() };
        }

        return removed with { ReplicaSets = derived.ToImmutable() };
    }

    /// <summary>The first distinct node indexes clockwise from point <paramref name="point"/> (its owner first).</summary>
    private static int OwnersFrom(HashRing ring, int point, Span<int> destination)
    {
        var wanted = Math.Min(destination.Length, ring.NodeCount);
        var found = 0;
        for (var step = 0; step < ring.PointCount && found < wanted; step++)
        {
            var node = ring.NodeIndexOfPoint((point + step) % ring.PointCount);
            if (destination[..found].IndexOf(node) < 0)
            {
                destination[found++] = node;
            }
        }

        return found;
    }
}
