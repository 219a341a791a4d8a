using System.Collections.Immutable;

namespace ChatBroker.Cluster.Coordination;

/// <summary>Where a member is in its life in the cluster; only the map's compare-and-set moves it.</summary>
public enum MemberState
{
    /// <summary>Listed, not yet owning anything: ranges are being handed to it.</summary>
    Joining,

    /// <summary>Owns its ranges of the ring.</summary>
    Active,

    /// <summary>Still listed while its ranges are handed to the others.</summary>
    Leaving,

    /// <summary>Its lease ran out and its ranges are served by their first in-sync replicas (docs/cluster.md,
    /// "Failover"). It keeps its place on the ring, so the ring does not move; it serves nothing until it is
    /// removed (after <c>cluster.failed_node_timeout</c>) and joins again.</summary>
    Failed,
}

/// <summary>A member of the cluster map: the node's id and where the others and the clients reach it.
/// <paramref name="FailedAtMs"/>: when a <see cref="MemberState.Failed"/> member was marked so (unix ms, the
/// proposer's clock), 0 otherwise; the failed-node timeout counts from it.</summary>
public sealed record ClusterMember(string NodeId, string MeshAddress, string ClientAddress, MemberState State, long FailedAtMs = 0);

/// <summary>
/// Who holds one range of the ring (issue 16: replication). Empty in a cluster without replication, where
/// the ring alone names the owner. <see cref="Range"/> is named by the ring (its vnode token); the map only
/// stores it, so the ring can change how it names ranges without a new map format.
/// </summary>
public sealed record ReplicaSet(string Range, string Primary, ImmutableArray<string> Replicas, ImmutableArray<string> InSync);

/// <summary>
/// The cluster map: the members, the ring's parameters and (later) the replica sets, at one epoch.
/// The epoch is etcd's modification revision of the map key, so it grows with every change, is the same on
/// every node that has this map, and a change is a compare-and-set on it: derive the next map from this one
/// with <c>with { … }</c> and hand it to <see cref="IClusterCoordinator.TryUpdateMapAsync"/>, which applies
/// it only if the stored map still has this epoch.
/// </summary>
public sealed record ClusterMap
{
    /// <summary>Most virtual nodes per member: bounds the ring's memory (members × vnodes tokens).</summary>
    public const int MaxVirtualNodes = 4096;

    public const int MaxReplicationFactor = 5;

    /// <summary>The map before anyone wrote one: no members, epoch 0.</summary>
    public static ClusterMap Empty { get; } = new();

    /// <summary>etcd's mod revision of the map key; 0 when no map was ever written.</summary>
    public long Epoch { get; init; }

    /// <summary>Members sorted by id.</summary>
    public ImmutableArray<ClusterMember> Members { get; init; } = [];

    /// <summary>Virtual nodes per member on the consistent-hash ring.</summary>
    public int VirtualNodes { get; init; } = 128;

    /// <summary>Copies of each range (1 = no replicas). Used from issue 16 on.</summary>
    public int ReplicationFactor { get; init; } = 1;

    public ImmutableArray<ReplicaSet> ReplicaSets { get; init; } = [];

    public ClusterMember? FindMember(string nodeId)
    {
        foreach (var m in Members)
        {
            if (string.Equals(m.NodeId, nodeId, StringComparison.Ordinal))
            {
                return m;
            }
        }

        return null;
    }

    /// <summary>This map with <paramref name="member"/> added or replacing the member of the same id.</summary>
    public ClusterMap WithMember(ClusterMember member)
    {
        var builder = ImmutableArray.CreateBuilder<ClusterMember>(Members.Length + 1);
        foreach (var m in Members)
        {
            if (!string.Equals(m.NodeId, member.NodeId, StringComparison.Ordinal))
            {
                builder.Add(m);
            }
        }

        builder.Add(member);
        builder.Sort(static (a, b) => string.CompareOrdinal(a.NodeId, b.NodeId));
        return this with { Members = builder.ToImmutable() };
    }

    /// <summary>This map without <paramref name="nodeId"/>: not a member, and in no replica set (its own set is gone, and
    /// it is taken out of the others' replicas and in-sync lists), so the map stays valid.</summary>
    public ClusterMap WithoutMember(string nodeId)
    {
        var builder = ImmutableArray.CreateBuilder<ClusterMember>(Members.Length);
        foreach (var m in Members)
        {
            if (!string.Equals(m.NodeId, nodeId, StringComparison.Ordinal))
            {
                builder.Add(m);
            }
        }

        var sets = ImmutableArray.CreateBuilder<ReplicaSet>(ReplicaSets.Length);
        foreach (var set in ReplicaSets)
        {
            if (!string.Equals(set.Primary, nodeId, StringComparison.Ordinal))
            {
                sets.Add(set with { Replicas = Without(set.Replicas, nodeId), InSync = Without(set.InSync, nodeId) });
            }
        }

        return this with { Members = builder.ToImmutable(), ReplicaSets = sets.ToImmutable() };
    }

    private static ImmutableArray<string> Without(ImmutableArray<string> ids, string nodeId) =>
        ids.IndexOf(nodeId, StringComparer.Ordinal) < 0 ? ids : ids.Remove(nodeId, StringComparer.Ordinal);

    /// <summary>Why this map may not be stored, or null when it may.</summary>
    public string? Validate()
    {
        if (VirtualNodes is < 1 or > MaxVirtualNodes)
        {
            return $"virtual nodes must be 1 to {MaxVirtualNodes}, got {VirtualNodes}";
        }

        if (ReplicationFactor is < 1 or > MaxReplicationFactor)
        {
            return $"replication factor must be 1 to {MaxReplicationFactor}, got {ReplicationFactor}";
        }

        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var m in Members)
        {
            if (!NodeRegistration.IsValidNodeId(m.NodeId))
            {
                return $"member id \"{m.NodeId}\" is not valid (1 to 64 of a-z A-Z 0-9 . _ -)";
            }

            if (!ids.Add(m.NodeId))
            {
                return $"member \"{m.NodeId}\" is listed twice";
            }

            if (!Enum.IsDefined(m.State))
            {
                return $"member \"{m.NodeId}\" has an unknown state {(int)m.State}";
            }
        }

        foreach (var r in ReplicaSets)
        {
            if (!ids.Contains(r.Primary))
            {
                return $"replica set {r.Range} names primary \"{r.Primary}\", which is not a member";
            }
        }

        return null;
    }
}

/// <summary>What a live node publishes under its lease: its id and addresses.</summary>
public sealed record NodeRegistration(string NodeId, string MeshAddress, string ClientAddress)
{
    /// <summary>Node ids become etcd keys and log fields: keep them short and plain.</summary>
    public static bool IsValidNodeId(string? id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > 64)
        {
            return false;
        }

        foreach (var c in id)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
            {
                return false;
            }
        }

        return true;
    }
}
