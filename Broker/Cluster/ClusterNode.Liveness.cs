using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Which other members are alive: a member whose etcd lease is gone (crashed, cut off, stopped) stays in the map and
/// keeps its ranges (until replication, issue 16), but nothing sent to it will be answered before it is back. An
/// operation whose owner or home is such a node is therefore answered at once (SERVER_UNAVAILABLE with
/// retry_after) instead of after <see cref="ClusterRoutingOptions.ForwardTimeout"/>; what is already queued for the
/// node (forward queues, posted operations) stays queued and is resent when it is back.
/// </summary>
public sealed partial class ClusterNode
{
    private ClusterView? _view;

    /// <summary>
    /// False only when the view knows the live members and <paramref name="nodeId"/> is not among them. This node is
    /// always live to itself; a view without live members yet (none known) counts every member as live. One volatile
    /// read and a scan of a few entries: the live set is as small as the cluster.
    /// </summary>
    public bool IsLive(string nodeId)
    {
        var view = Volatile.Read(ref _view);
        if (view is null || string.Equals(nodeId, NodeId, StringComparison.Ordinal))
        {
            return true;
        }

        var live = view.LiveMembers;
        if (live.IsDefaultOrEmpty)
        {
            return true;
        }

        foreach (var member in live)
        {
            if (string.Equals(member.NodeId, nodeId, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }
}
