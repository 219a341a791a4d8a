using System.Collections.Frozen;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// What one cluster map means for this node, built once per map and swapped whole: the epoch, the ring of the
/// active members, this node's place on it, and the links to the other members. The hot path reads it with one
/// volatile load and allocates nothing to look an owner up.
/// </summary>
internal sealed class RoutingState
{
    private readonly FrozenDictionary<string, PeerLink> _links;
    private readonly string[] _queueIds; // by ring node index: that node's forward queue id

    private int _inFlight;
    private int _retired;
    private readonly TaskCompletionSource _quiet = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public RoutingState(ClusterMap map, string selfId, HashRing? ring, FrozenDictionary<string, PeerLink> links)
    {
        Map = map;
        TargetRing = MovingRing(map);
        Epoch = (ulong)map.Epoch;
        Ring = ring;
        Owners = ring is null ? null : RangeOwners.Create(map, ring);
        SelfIndex = ring?.IndexOf(selfId) ?? -1;
        CanFailOver = CanRangesOfFailOver(map, selfId, Owners, SelfIndex);

        var clients = new List<string>(map.Members.Length);
        foreach (var m in map.Members)
        {
            if (m.State != MemberState.Failed && m.ClientAddress.Length > 0)
            {
                clients.Add(m.ClientAddress);
            }
        }

        ClientAddresses = [.. clients];

        _links = links;
        _queueIds = new string[ring?.NodeCount ?? 0];
        for (var i = 0; i < _queueIds.Length; i++)
        {
            _queueIds[i] = ClusterNode.ForwardQueueId(ring!.Nodes[i]);
        }
    }

    public ClusterMap Map { get; }

    public ulong Epoch { get; }

    /// <summary>The ring of the members that own ranges (Active, Leaving, Failed); null when the map has none.</summary>
    public HashRing? Ring { get; }

    /// <summary>Who serves each range of <see cref="Ring"/> (a Failed member's ranges go to its in-sync replicas): every
    /// owner and home lookup goes through it.</summary>
    public RangeOwners? Owners { get; }

    /// <summary>While members are Joining or Leaving: the ring they are moving to (Active and Joining members), which
    /// becomes the ring once the hand-over is done; null when nothing moves.</summary>
    public HashRing? TargetRing { get; }

    /// <summary>Ranges this node took over from a Failed member and is still re-forwarding (commits on them wait); set
    /// once, before the state is published.</summary>
    public ReforwardFreeze? Reforward { get; set; }

    /// <summary>The client addresses of the members that serve clients (not Failed), by id: CONNACK's cluster_nodes.</summary>
    public string[] ClientAddresses { get; }

    /// <summary>True when a range this node serves can fail over to another node (its own set has an in-sync replica, or
    /// it serves ranges of a Failed member, whose other in-sync replicas could take them): it must then fence itself
    /// (acknowledge only while its lease is certain).</summary>
    public bool CanFailOver { get; }

    /// <summary>This node's index on the ring; -1 when it owns nothing (not an active member).</summary>
    public int SelfIndex { get; }

    public IEnumerable<PeerLink> Links => _links.Values;

    public PeerLink? LinkOf(string nodeId) => _links.GetValueOrDefault(nodeId);

    /// <summary>The ring index of the conversation's owner, or -1 without a ring.</summary>
    public int OwnerIndexOf(ulong conversationId) => Owners?.OwnerIndex(HashRing.HashConversation(conversationId)) ?? -1;

    /// <summary>The ring index of the user's home, or -1 without a ring.</summary>
    public int HomeIndexOf(string userId) => Owners?.OwnerIndex(HashRing.HashUser(userId)) ?? -1;

    /// <summary>The ring index of the user's ring home (the ring owner of the user's range, Failed or not), or -1 without
    /// a ring: the forward queue an owner writes the user's entries into (<see cref="HomeForwarder"/>).</summary>
    public int RingHomeIndexOf(string userId) => Ring?.OwnerIndex(HashRing.HashUser(userId)) ?? -1;

    /// <summary>True when the node at <paramref name="ringIndex"/> serves some range: the nodes a scatter over every
    /// owner asks (a Failed node whose ranges all went to replicas is skipped).</summary>
    public bool ServesAny(int ringIndex) => Owners?.ServesAny(ringIndex) ?? false;

    public string? HomeOf(string userId) => HomeIndexOf(userId) is var i and >= 0 ? Ring!.Nodes[i] : null;

    public string? OwnerOf(ulong conversationId) => OwnerIndexOf(conversationId) is var i and >= 0 ? Ring!.Nodes[i] : null;

    public bool IsSelf(int ringIndex) => ringIndex >= 0 && ringIndex == SelfIndex;

    public string QueueIdOf(int ringIndex) => _queueIds[ringIndex];

    /// <summary>The node at a ring index (for refusals that name the owner).</summary>
    public string NodeAt(int ringIndex) => ringIndex >= 0 ? Ring!.Nodes[ringIndex] : "";

    /// <summary>True while the conversation's owner is being handed over (its owner now and after differ).</summary>
    public bool IsMoving(ulong conversationId) =>
        TargetRing is { } target && Ring is { } ring && !string.Equals(
            ring.Nodes[ring.OwnerIndex(HashRing.HashConversation(conversationId))],
            target.Nodes[target.OwnerIndex(HashRing.HashConversation(conversationId))], StringComparison.Ordinal);

    /// <summary>True while the user's home is being handed over.</summary>
    public bool IsMoving(string userId) =>
        TargetRing is { } target && Ring is { } ring && !string.Equals(
            ring.Nodes[ring.OwnerIndex(HashRing.HashUser(userId))],
            target.Nodes[target.OwnerIndex(HashRing.HashUser(userId))], StringComparison.Ordinal);

    // ---- commits in flight under this state: the hand-over's barrier ----

    /// <summary>Counts a commit deciding its routing under this state; false when the state was already replaced (the
    /// caller takes the current one instead).</summary>
    public bool TryEnter()
    {
        Interlocked.Increment(ref _inFlight);
        if (Volatile.Read(ref _retired) == 0)
        {
            return true;
        }

        Exit();
        return false;
    }

    /// <summary>The commit's write is enqueued in the store.</summary>
    public void Exit()
    {
        if (Interlocked.Decrement(ref _inFlight) == 0 && Volatile.Read(ref _retired) != 0)
        {
            _quiet.TrySetResult();
        }
    }

    /// <summary>A newer state replaced this one: no commit enters it any more.</summary>
    public void Retire()
    {
        Interlocked.Exchange(ref _retired, 1);
        if (Volatile.Read(ref _inFlight) == 0)
        {
            _quiet.TrySetResult();
        }
    }

    /// <summary>Completes once the state is retired and every commit that routed under it has enqueued its write.</summary>
    public Task Quiet => _quiet.Task;

    private static bool CanRangesOfFailOver(ClusterMap map, string selfId, RangeOwners? owners, int selfIndex)
    {
        if (ReplicaPlacement.Find(map, selfId) is { InSync.IsDefaultOrEmpty: false })
        {
            return true;
        }

        if (owners is not { HasFailed: true } || selfIndex < 0)
        {
            return false;
        }

        for (var p = 0; p < owners.Ring.PointCount; p++)
        {
            if (owners.OwnerIndexOfPoint(p) == selfIndex && owners.IsFailed(owners.Ring.NodeIndexOfPoint(p)))
            {
                return true;
            }
        }

        return false;
    }

    private static HashRing? MovingRing(ClusterMap map)
    {
        var moving = false;
        var target = new List<string>();
        foreach (var m in map.Members)
        {
            moving |= m.State is MemberState.Joining or MemberState.Leaving; // a Failed member keeps its place on both rings
            if (m.State != MemberState.Leaving)
            {
                target.Add(m.NodeId);
            }
        }

        return moving && target.Count > 0 ? HashRing.Create(target, map.VirtualNodes) : null;
    }
}
