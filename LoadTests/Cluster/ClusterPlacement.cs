namespace ChatBroker.LoadTests.Cluster;

/// <summary>
/// Which node each client of a cluster run connects to. The point of a cluster run is traffic that crosses the
/// mesh, so a pair's sender and receiver are never on the same node (with two or more nodes), and a group's
/// members are spread evenly. Pure: the same run puts the same client on the same node.
/// </summary>
public static class ClusterPlacement
{
    /// <summary>
    /// Pair <paramref name="pair"/>: sender on node pair mod N, receiver on the next node, so with N ≥ 2 the two
    /// always differ and every ordered node pair (i, i+1) carries the same share of the pairs.
    /// </summary>
    public static (int Sender, int Receiver) Pair(int pair, int nodes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pair);
        ArgumentOutOfRangeException.ThrowIfLessThan(nodes, 1);
        var sender = pair % nodes;
        return (sender, (sender + 1) % nodes);
    }

    /// <summary>Group member <paramref name="member"/> (0 = the sender/creator): round robin over the nodes.</summary>
    public static int Member(int member, int nodes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(member);
        ArgumentOutOfRangeException.ThrowIfLessThan(nodes, 1);
        return member % nodes;
    }
}
