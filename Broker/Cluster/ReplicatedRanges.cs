using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Ring;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Cluster;

/// <summary>The ranges of a ring whose ring owner is <c>primary</c> and of which <c>replica</c> is one of the replicas
/// (the next distinct nodes clockwise, up to the factor): what a catch-up copies, and what the replica resets before it
/// (docs/cluster.md, "Replication").</summary>
internal sealed class ReplicatedRanges(HashRing ring, int primary, int replica, int factor) : IRangeSelector
{
    private readonly int[] _chain = new int[ClusterMap.MaxReplicationFactor];

    public bool TakesConversation(ulong conversationId) => Takes(HashRing.HashConversation(conversationId));

    public bool TakesUser(string userId) => Takes(HashRing.HashUser(userId));

    private bool Takes(ulong hash)
    {
        if (replica < 0 || primary < 0 || ring.OwnerIndex(hash) != primary)
        {
            return false;
        }

        var found = ring.GetOwners(hash, _chain.AsSpan(0, Math.Min(factor, _chain.Length)));
        return found > 1 && Array.IndexOf(_chain, replica, 1, found - 1) >= 0;
    }
}
