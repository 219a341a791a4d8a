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

    public RoutingState(ClusterMap map, string selfId, HashRing? ring, FrozenDictionary<string, PeerLink> links)
    {
        Map = map;
        Epoch = (ulong)map.Epoch;
        Ring = ring;
        SelfIndex = ring?.IndexOf(selfId) ?? -1;
        _links = links;
        _queueIds = new string[ring?.NodeCount ?? 0];
        for (var i = 0; i < _queueIds.Length; i++)
        {
            _queueIds[i] = ClusterNode.ForwardQueueId(ring!.Nodes[i]);
        }
    }

    public ClusterMap Map { get; }

    public ulong Epoch { get; }

    /// <summary>The ring of the active members; null when the map has none.</summary>
    public HashRing? Ring { get; }

    /// <summary>This node's index on the ring; -1 when it owns nothing (not an active member).</summary>
    public int SelfIndex { get; }

    public IEnumerable<PeerLink> Links => _links.Values;

    public PeerLink? LinkOf(string nodeId) => _links.GetValueOrDefault(nodeId);

    /// <summary>The ring index of the conversation's owner, or -1 without a ring.</summary>
    public int OwnerIndexOf(ulong conversationId) => Ring?.OwnerIndex(HashRing.HashConversation(conversationId)) ?? -1;

    /// <summary>The ring index of the user's home, or -1 without a ring.</summary>
    public int HomeIndexOf(string userId) => Ring?.OwnerIndex(HashRing.HashUser(userId)) ?? -1;

    public string? HomeOf(string userId) => HomeIndexOf(userId) is var i and >= 0 ? Ring!.Nodes[i] : null;

    public string? OwnerOf(ulong conversationId) => OwnerIndexOf(conversationId) is var i and >= 0 ? Ring!.Nodes[i] : null;

    public bool IsSelf(int ringIndex) => ringIndex >= 0 && ringIndex == SelfIndex;

    public string QueueIdOf(int ringIndex) => _queueIds[ringIndex];

    /// <summary>The node at a ring index (for refusals that name the owner).</summary>
    public string NodeAt(int ringIndex) => ringIndex >= 0 ? Ring!.Nodes[ringIndex] : "";
}
