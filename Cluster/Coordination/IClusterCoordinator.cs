namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// Membership and the cluster map, kept in a coordination store (etcd; in memory for unit tests).
/// <para>
/// A node starts it once: it registers the node under a lease that it keeps alive, reads the map and the
/// live members, and from then on watches both. <see cref="View"/> is the node's cached copy, read on the
/// hot path without a round trip. The map changes only through <see cref="TryUpdateMapAsync"/>, a
/// compare-and-set on its epoch; every node learns the new map through its watch and acts on it only then.
/// </para>
/// <para>
/// If the store is unreachable the view keeps the last map (<see cref="ClusterView.HasCurrentMap"/> turns
/// false, <see cref="ClusterView.DisconnectedSince"/> says since when) and map changes are refused with
/// <see cref="MapUpdateStatus.Unavailable"/>; when it is back the view catches up by itself.
/// </para>
/// </summary>
public interface IClusterCoordinator : IAsyncDisposable
{
    /// <summary>This node's registration (id and advertised addresses).</summary>
    NodeRegistration Self { get; }

    /// <summary>The cached map and membership; updated by the watch, never by a round trip of its own.</summary>
    ClusterView View { get; }

    /// <summary>
    /// Registers this node under a new lease (waiting up to one lease TTL for a previous registration of the
    /// same id to expire, as after a crash and quick restart), loads the map and the members, and starts
    /// the keepalive and the watch. Throws <see cref="ClusterCoordinationException"/> when the store cannot
    /// be reached or the id stays registered by another live node.
    /// </summary>
    Task StartAsync(CancellationToken cancellationToken);

    /// <summary>Reads the map from the store (linearizable), updates the view with it, and returns it.</summary>
    Task<ClusterMap> ReadMapAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Reads the nodes that hold a live lease now (linearizable), sorted by id. Like <see cref="ReadMapAsync"/>
    /// and <see cref="TryUpdateMapAsync"/> it works without <see cref="StartAsync"/>, so a tool that is no
    /// node (<c>chatbroker cluster status</c>) can use a coordinator without registering.
    /// </summary>
    Task<System.Collections.Immutable.ImmutableArray<NodeRegistration>> ReadLiveMembersAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Stores <paramref name="proposed"/> if the stored map's epoch is still <c>proposed.Epoch</c>
    /// (0: no map stored yet). Returns the stored map with its new epoch, or on conflict the map that is
    /// stored now, or <see cref="MapUpdateStatus.Unavailable"/> when the store cannot be reached (then the
    /// change may or may not have been applied when the answer was lost; the watch tells).
    /// Throws <see cref="ArgumentException"/> for a map that <see cref="ClusterMap.Validate"/> refuses.
    /// </summary>
    Task<MapUpdateResult> TryUpdateMapAsync(ClusterMap proposed, CancellationToken cancellationToken);
}

public enum MapUpdateStatus
{
    Applied,
    Conflict,
    Unavailable,
}

/// <summary>
/// The answer to a compare-and-set of the map. <see cref="Map"/> is the new map when applied, the map stored
/// now on a conflict, and the node's cached map when the store was unavailable.
/// </summary>
public readonly record struct MapUpdateResult(MapUpdateStatus Status, ClusterMap Map, string? Error)
{
    public bool Applied => Status == MapUpdateStatus.Applied;
}

/// <summary>The coordination store refused or could not be reached for something a node cannot do without.</summary>
public sealed class ClusterCoordinationException : Exception
{
    public ClusterCoordinationException(string message)
        : base(message)
    {
    }

    public ClusterCoordinationException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
