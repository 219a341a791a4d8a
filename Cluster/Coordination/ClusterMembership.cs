namespace ChatBroker.Cluster.Coordination;

/// <summary>How a membership change ended.</summary>
public enum MapChangeStatus
{
    /// <summary>The change was stored by compare-and-set; <see cref="MapChangeResult.Map"/> has the new epoch.</summary>
    Applied,

    /// <summary>The map already said what the change asked for; nothing was written.</summary>
    Unchanged,

    /// <summary>The change makes no sense on the stored map (unknown node, the last member, …), or it kept conflicting.</summary>
    Refused,

    /// <summary>The store could not be reached: nothing was changed (or, if only the answer was lost, the watch will tell).</summary>
    Unavailable,
}

/// <summary>The outcome of a membership change: the map it ended on and a sentence for the operator.</summary>
public readonly record struct MapChangeResult(MapChangeStatus Status, ClusterMap Map, string Message)
{
    public bool Succeeded => Status is MapChangeStatus.Applied or MapChangeStatus.Unchanged;
}

/// <summary>
/// The membership changes of the cluster map, on nothing but <see cref="IClusterCoordinator"/>: the first map,
/// a join (Joining, then Active) and a leave (Leaving, then removed). Every step is one compare-and-set on the
/// map it was derived from; on a conflict (another change won) the step is decided again on the map stored now,
/// at most <see cref="MaxAttempts"/> times. While the store is unreachable nothing changes and the answer says so.
/// <para>
/// With <see cref="HandOverRanges"/> (a cluster whose nodes move data: the broker's) a join stops at Joining and a
/// leave at Leaving: the member itself then has its ranges handed over and takes the second step with
/// <see cref="CompleteAsync"/> (or, if the hand-over fails, any node undoes the first with <see cref="AbortAsync"/>).
/// Without it a member becomes Active right after Joining and is removed right after Leaving, and no data moves.
/// </para>
/// </summary>
public sealed class ClusterMembership
{
    /// <summary>
    /// A conflict means another change was applied in between, so a retry makes progress; eight in a row means
    /// the map is changing faster than this caller can follow, and the operator should look before retrying.
    /// </summary>
    public const int DefaultMaxAttempts = 8;

    private readonly IClusterCoordinator _coordinator;
    private readonly ClusterMetrics? _metrics;

    public ClusterMembership(IClusterCoordinator coordinator, ClusterMetrics? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(coordinator);
        _coordinator = coordinator;
        _metrics = metrics;
    }

    /// <summary>Compare-and-set attempts per step before a change is refused as contended.</summary>
    public int MaxAttempts { get; init; } = DefaultMaxAttempts;

    /// <summary>Stop after the first step of a join or leave: the member's node hands its ranges over and takes the
    /// second step itself (docs/cluster.md, "Ring changes").</summary>
    public bool HandOverRanges { get; init; }

    /// <summary>
    /// Writes the first map, with <paramref name="self"/> Active, if there is none yet (a compare-and-set on
    /// epoch 0, so of nodes starting together exactly one writes it). Unchanged when a map exists.
    /// </summary>
    public Task<MapChangeResult> BootstrapAsync(ClusterMember self, int virtualNodes, int replicationFactor, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(self);
        return ChangeAsync("create the cluster map", map => map.Epoch == 0
            ? Change(FirstMap(self, virtualNodes, replicationFactor), $"created the cluster map with {self.NodeId} as its first member")
            : Keep(MapChangeStatus.Unchanged, $"the cluster map exists (epoch {map.Epoch})"), cancellationToken);
    }

    /// <summary>
    /// Adds <paramref name="member"/>: listed as Joining, then Active. With no map yet it writes the first map
    /// with the member Active. A member already Active is unchanged (its addresses are updated if they changed);
    /// one left Joining by an interrupted join is made Active; a Leaving member is refused until its leave ends.
    /// </summary>
    public async Task<MapChangeResult> JoinAsync(ClusterMember member, int virtualNodes, int replicationFactor, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(member);
        var id = member.NodeId;
        var listed = await ChangeAsync($"join {id}", map =>
        {
            if (map.Epoch == 0)
            {
                return Change(FirstMap(member with { State = MemberState.Active }, virtualNodes, replicationFactor),
                    $"created the cluster map with {id} as its first member");
            }

            var current = map.FindMember(id);
            return current switch
            {
                null when FailedMember(map) is { } failed => Keep(MapChangeStatus.Refused,
                    $"{failed} is Failed: a join waits until it is removed (cluster.failed_node_timeout), since a hand-over needs every member"),
                null => Change(map.WithMember(member with { State = MemberState.Joining }), $"{id} listed as Joining"),
                { State: MemberState.Leaving } => Keep(MapChangeStatus.Refused, $"{id} is leaving the cluster; let `cluster leave` finish, then join again"),
                { State: MemberState.Failed } => Keep(MapChangeStatus.Refused,
                    $"{id} is Failed: its ranges are served by its replicas and its store may hold writes that were never acknowledged; it is removed after cluster.failed_node_timeout, then it can join again (with an empty data directory)"),
                _ when SameAddresses(current, member) => Keep(MapChangeStatus.Unchanged, $"{id} is already a member ({current.State})"),
                _ => Change(map.WithMember(member with { State = current.State }), $"{id}'s addresses updated to mesh {member.MeshAddress}, client {member.ClientAddress}"),
            };
        }, cancellationToken).ConfigureAwait(false);

        if (!listed.Succeeded || listed.Map.FindMember(id) is not { State: MemberState.Joining })
        {
            return listed;
        }

        if (HandOverRanges)
        {
            return listed with { Message = $"{listed.Message}; its ranges are being handed to it, then it turns Active" };
        }

        // Range hand-over goes here: the ranges the new ring gives the member are streamed to it before it
        // turns Active. Until then it owns its ranges from the next map on, without their old data.
        var active = await ChangeAsync($"make {id} Active", map => map.FindMember(id) switch
        {
            null => Keep(MapChangeStatus.Refused, $"{id} was removed from the map while joining"),
            { State: MemberState.Joining } m => Change(map.WithMember(m with { State = MemberState.Active }), $"{id} joined: Active"),
            { State: var state } => Keep(MapChangeStatus.Unchanged, $"{id} is {state}"),
        }, cancellationToken).ConfigureAwait(false);
        return active.Status == MapChangeStatus.Unchanged && listed.Status == MapChangeStatus.Applied
            ? active with { Status = MapChangeStatus.Applied }
            : active;
    }

    /// <summary>
    /// Removes the member: marked Leaving, then taken out of the map. Refused for a node that is not a member
    /// and for the last member that is not leaving (its ranges would have no owner).
    /// </summary>
    public async Task<MapChangeResult> LeaveAsync(string nodeId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(nodeId);
        var marked = await ChangeAsync($"leave {nodeId}", map =>
        {
            var current = map.FindMember(nodeId);
            if (current is null)
            {
                return Keep(MapChangeStatus.Refused, map.Members.IsEmpty
                    ? $"{nodeId} is not a member: the cluster map has no members"
                    : $"{nodeId} is not a member; the members are {MemberList(map)}");
            }

            if (current.State == MemberState.Leaving)
            {
                return Keep(MapChangeStatus.Unchanged, $"{nodeId} is already Leaving");
            }

            if (FailedMember(map) is { } failed)
            {
                return Keep(MapChangeStatus.Refused, $"{failed} is Failed: a leave waits until it is removed (cluster.failed_node_timeout), since a hand-over needs every member");
            }

            var others = 0;
            foreach (var m in map.Members)
            {
                others += m.NodeId != nodeId && m.State != MemberState.Leaving ? 1 : 0;
            }

            return others == 0
                ? Keep(MapChangeStatus.Refused, $"{nodeId} is the last member; its conversations and users would have no owner")
                : Change(map.WithMember(current with { State = MemberState.Leaving }), $"{nodeId} marked Leaving");
        }, cancellationToken).ConfigureAwait(false);

        if (!marked.Succeeded)
        {
            return marked;
        }

        if (HandOverRanges)
        {
            return marked with { Message = $"{marked.Message}; its ranges are being handed to the other members, then it is removed" };
        }

        // Range hand-over goes here: the member's ranges are streamed to their new owners before it is removed.
        var removed = await ChangeAsync($"remove {nodeId}", map => map.FindMember(nodeId) switch
        {
            null => Keep(MapChangeStatus.Unchanged, $"{nodeId} is no longer a member"),
            { State: MemberState.Leaving } => Change(map.WithoutMember(nodeId) with { ReplicaSets = [] }, $"{nodeId} left the cluster"),
            { State: var state } => Keep(MapChangeStatus.Refused, $"{nodeId} became {state} again while leaving (a join ran at the same time)"),
        }, cancellationToken).ConfigureAwait(false);
        return removed.Status == MapChangeStatus.Unchanged && marked.Status == MapChangeStatus.Applied
            ? removed with { Status = MapChangeStatus.Applied }
            : removed;
    }

    /// <summary>
    /// The second step of a join or leave after its ranges were handed over under the map of <paramref name="epoch"/>:
    /// a Joining member becomes Active, a Leaving member is removed. Refused when the map is no longer that epoch
    /// (the hand-over was for another ring; the member runs it again on the new map).
    /// </summary>
    public Task<MapChangeResult> CompleteAsync(string nodeId, long epoch, CancellationToken cancellationToken) =>
        ChangeAsync($"complete the hand-over of {nodeId}", map => map.FindMember(nodeId) switch
        {
            _ when map.Epoch != epoch => Keep(MapChangeStatus.Refused, $"the map moved on to epoch {map.Epoch} during the hand-over of {nodeId} (epoch {epoch})"),
            { State: MemberState.Joining } m => Change(map.WithMember(m with { State = MemberState.Active }), $"{nodeId} joined: Active"),
            // The ranges it handed over were written at their new owners by an import, which is not replicated: no
            // replica is in sync any more until it has caught up again (docs/cluster.md, "Replication").
            { State: MemberState.Leaving } => Change(map.WithoutMember(nodeId) with { ReplicaSets = [] }, $"{nodeId} left the cluster"),
            null => Keep(MapChangeStatus.Unchanged, $"{nodeId} is not a member"),
            { State: var state } => Keep(MapChangeStatus.Unchanged, $"{nodeId} is {state}"),
        }, cancellationToken);

    /// <summary>
    /// Undoes the first step of a join or leave whose hand-over cannot finish (the member died, or it failed too
    /// often): a Joining member is taken out of the map, a Leaving one is Active again. Nothing was deleted
    /// anywhere, so the old owners still have everything. Only on the map of <paramref name="epoch"/>.
    /// </summary>
    public Task<MapChangeResult> AbortAsync(string nodeId, long epoch, string reason, CancellationToken cancellationToken) =>
        ChangeAsync($"abort the hand-over of {nodeId}", map => map.FindMember(nodeId) switch
        {
            _ when map.Epoch != epoch => Keep(MapChangeStatus.Refused, $"the map moved on to epoch {map.Epoch}"),
            { State: MemberState.Joining } => Change(map.WithoutMember(nodeId), $"join of {nodeId} aborted ({reason}): removed"),
            { State: MemberState.Leaving } m => Change(map.WithMember(m with { State = MemberState.Active }), $"leave of {nodeId} aborted ({reason}): Active again"),
            _ => Keep(MapChangeStatus.Unchanged, $"{nodeId} is not moving"),
        }, cancellationToken);

    /// <summary>
    /// Failover (docs/cluster.md, "Failover"): marks <paramref name="nodeId"/> Failed, so that each of its ranges is
    /// served by its first in-sync replica (<see cref="RangeOwners"/>), when it is not live by
    /// <paramref name="isLive"/> and <see cref="RangeOwners.CanFailOver"/> allows it on the stored map.
    /// <paramref name="nowMs"/> (unix ms) is stored as the member's <see cref="ClusterMember.FailedAtMs"/>.
    /// </summary>
    public Task<MapChangeResult> FailAsync(string nodeId, Func<string, bool> isLive, long nowMs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(isLive);
        return ChangeAsync($"fail over {nodeId}", map => map.FindMember(nodeId) switch
        {
            null => Keep(MapChangeStatus.Unchanged, $"{nodeId} is not a member"),
            { State: MemberState.Failed } => Keep(MapChangeStatus.Unchanged, $"{nodeId} is already Failed"),
            _ when isLive(nodeId) => Keep(MapChangeStatus.Refused, $"{nodeId} is live"),
            { } m when RangeOwners.CanFailOver(map, nodeId, isLive) =>
                Change(map.WithMember(m with { State = MemberState.Failed, FailedAtMs = nowMs }), $"{nodeId} marked Failed: its ranges are served by its in-sync replicas"),
            _ => Keep(MapChangeStatus.Refused, $"{nodeId} has no live in-sync replica (or a member is joining or leaving): its ranges stay unavailable until it is back"),
        }, cancellationToken);
    }

    /// <summary>
    /// Takes a member that has been Failed since before <paramref name="failedBeforeMs"/> (unix ms) off the ring for good
    /// (<see cref="RangeOwners.WithoutFailed"/>); refused while that would give a range to a node without its data.
    /// </summary>
    public Task<MapChangeResult> RemoveFailedAsync(string nodeId, long failedBeforeMs, CancellationToken cancellationToken) =>
        ChangeAsync($"remove failed {nodeId}", map => map.FindMember(nodeId) switch
        {
            null => Keep(MapChangeStatus.Unchanged, $"{nodeId} is not a member"),
            { State: not MemberState.Failed } m => Keep(MapChangeStatus.Refused, $"{nodeId} is {m.State}, not Failed"),
            { FailedAtMs: var at } when at > failedBeforeMs => Keep(MapChangeStatus.Refused, $"{nodeId} failed too recently"),
            _ => RangeOwners.WithoutFailed(map, nodeId) is { } next
                ? Change(next, $"{nodeId} removed after being Failed for longer than the failed-node timeout; its ranges' new replicas catch up")
                : Keep(MapChangeStatus.Refused, $"{nodeId} cannot be removed yet: a range of it would go to a node that is not in sync"),
        }, cancellationToken);

    /// <summary>
    /// Replication (docs/cluster.md, "Replication"): writes the replica sets the map's ring gives
    /// (<see cref="ReplicaPlacement.Derive"/>) when the stored sets are not those; not while a member is Joining or
    /// Leaving (the hand-over completes on the epoch it ran on, and its last step resets the sets anyway).
    /// </summary>
    public Task<MapChangeResult> WriteReplicaSetsAsync(CancellationToken cancellationToken) =>
        ChangeAsync("write the replica sets", map =>
        {
            if (map.Epoch == 0)
            {
                return Keep(MapChangeStatus.Unchanged, "no map yet");
            }

            if (Moving(map) is { } moving)
            {
                return Keep(MapChangeStatus.Unchanged, $"{moving} is moving: the sets wait");
            }

            return ReplicaPlacement.IsCurrent(map)
                ? Keep(MapChangeStatus.Unchanged, "the replica sets are current")
                : Change(map with { ReplicaSets = ReplicaPlacement.Derive(map) }, "replica sets written");
        }, cancellationToken);

    /// <summary>
    /// Replication: adds <paramref name="replica"/> to (or removes it from) the in-sync list of
    /// <paramref name="primary"/>'s set, proposed by <paramref name="proposer"/> (the node that serves those ranges).
    /// Decided on the stored map: refused when the proposer is Failed or not a member there (a node that was failed
    /// over must not change the sets of ranges it no longer serves), when the set does not list the replica, or when
    /// <paramref name="stillValid"/> rejects the stored map (an add is only valid on the ring the catch-up copied).
    /// </summary>
    public Task<MapChangeResult> SetInSyncAsync(string primary, string replica, bool inSync, string proposer, Func<ClusterMap, bool>? stillValid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(primary);
        ArgumentNullException.ThrowIfNull(replica);
        ArgumentNullException.ThrowIfNull(proposer);
        var what = inSync ? $"add {replica} to the in-sync replicas of {primary}" : $"remove {replica} from the in-sync replicas of {primary}";
        return ChangeAsync(what, map =>
        {
            if (map.FindMember(proposer) is not { State: not MemberState.Failed })
            {
                return Keep(MapChangeStatus.Refused, $"{what}: refused, {proposer} is not a serving member of the stored map (epoch {map.Epoch})");
            }

            if (ReplicaPlacement.Find(map, primary) is not { } set || !set.Replicas.Contains(replica))
            {
                return Keep(MapChangeStatus.Refused, $"{what}: refused, the stored map (epoch {map.Epoch}) does not list {replica} as a replica of {primary}");
            }

            if (set.InSync.Contains(replica) == inSync)
            {
                return Keep(MapChangeStatus.Unchanged, $"{replica} is already {(inSync ? "in sync" : "out of sync")} for {primary}");
            }

            if (stillValid is not null && !stillValid(map))
            {
                return Keep(MapChangeStatus.Refused, $"{what}: refused, the ring changed since the catch-up began (epoch {map.Epoch})");
            }

            var next = ReplicaPlacement.WithInSync(map, primary, replica, inSync)!;
            if (!inSync && map.FindMember(primary) is { State: MemberState.Failed } && UnservedPoints(next) > UnservedPoints(map))
            {
                // The replica serves ranges of the failed primary that no other live in-sync replica could take: taken out,
                // they would have no server until an operator acts. A replica that lags keeps them; the batches waiting
                // for it wait (and end if its lease ends: a Failed member is waited for by nobody).
                return Keep(MapChangeStatus.Refused, $"{what}: refused, {primary} is Failed and {replica} is the last live in-sync replica of some of its ranges (epoch {map.Epoch})");
            }

            return Change(next, what);
        }, cancellationToken);
    }

    /// <summary>Ring points nobody serves under <paramref name="map"/> (a Failed ring owner without a live in-sync replica).</summary>
    private static int UnservedPoints(ClusterMap map)
    {
        if (RangeOwners.Create(map) is not { HasFailed: true } owners)
        {
            return 0;
        }

        var count = 0;
        for (var p = 0; p < owners.Ring.PointCount; p++)
        {
            if (owners.OwnerIndexOfPoint(p) < 0)
            {
                count++;
            }
        }

        return count;
    }

    private static string? Moving(ClusterMap map)
    {
        foreach (var m in map.Members)
        {
            if (m.State is MemberState.Joining or MemberState.Leaving)
            {
                return m.NodeId;
            }
        }

        return null;
    }

    private static ClusterMap FirstMap(ClusterMember self, int virtualNodes, int replicationFactor) =>
        ClusterMap.Empty.WithMember(self with { State = MemberState.Active }) with
        {
            VirtualNodes = virtualNodes,
            ReplicationFactor = replicationFactor,
        };

    private static string? FailedMember(ClusterMap map)
    {
        foreach (var m in map.Members)
        {
            if (m.State == MemberState.Failed)
            {
                return m.NodeId;
            }
        }

        return null;
    }

    private static bool SameAddresses(ClusterMember a, ClusterMember b) =>
        a.MeshAddress == b.MeshAddress && a.ClientAddress == b.ClientAddress;

    private static string MemberList(ClusterMap map)
    {
        var ids = new string[map.Members.Length];
        for (var i = 0; i < ids.Length; i++)
        {
            ids[i] = map.Members[i].NodeId;
        }

        return string.Join(", ", ids);
    }

    private static Decision Change(ClusterMap next, string message) => new(next, MapChangeStatus.Applied, message);

    private static Decision Keep(MapChangeStatus status, string message) => new(null, status, message);

    /// <summary>
    /// One step: decide on the stored map, compare-and-set, and on a conflict decide again on the map the
    /// conflict returned (it may make the step unnecessary or impossible).
    /// </summary>
    private async Task<MapChangeResult> ChangeAsync(string what, Func<ClusterMap, Decision> decide, CancellationToken cancellationToken)
    {
        ClusterMap map;
        try
        {
            map = await _coordinator.ReadMapAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ClusterCoordinationException e)
        {
            return Count(new MapChangeResult(MapChangeStatus.Unavailable, _coordinator.View.Map, $"{what}: refused, the map cannot be read: {e.Message}"));
        }

        for (var attempt = 1; attempt <= MaxAttempts; attempt++)
        {
            var decision = decide(map);
            if (decision.Next is null)
            {
                return Count(new MapChangeResult(decision.Status, map, decision.Message));
            }

            var result = await _coordinator.TryUpdateMapAsync(decision.Next with { Epoch = map.Epoch }, cancellationToken).ConfigureAwait(false);
            switch (result.Status)
            {
                case MapUpdateStatus.Applied:
                    return Count(new MapChangeResult(MapChangeStatus.Applied, result.Map, $"{decision.Message} (epoch {result.Map.Epoch})"));
                case MapUpdateStatus.Unavailable:
                    return Count(new MapChangeResult(MapChangeStatus.Unavailable, result.Map, $"{what}: {result.Error}"));
                default:
                    _metrics?.CountConflict();
                    map = result.Map;
                    break;
            }
        }

        return Count(new MapChangeResult(MapChangeStatus.Refused, map,
            $"{what}: refused, the map changed under it {MaxAttempts} times in a row (now epoch {map.Epoch}); look at `chatbroker cluster status` and try again"));
    }

    private MapChangeResult Count(MapChangeResult result)
    {
        _metrics?.CountChange(result.Status);
        return result;
    }

    private readonly record struct Decision(ClusterMap? Next, MapChangeStatus Status, string Message);
}
