using ChatBroker.LoadTests.Cluster;

namespace ChatBroker.LoadTests.Tests;

/// <summary>Where a cluster run puts its clients: traffic must cross the mesh, evenly.</summary>
public sealed class ClusterPlacementTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public void A_pairs_sender_and_receiver_are_on_different_nodes_and_every_node_sends_equally(int nodes)
    {
        var senders = new int[nodes];
        var receivers = new int[nodes];
        for (var pair = 0; pair < 100 * nodes; pair++)
        {
            var (sender, receiver) = ClusterPlacement.Pair(pair, nodes);
            Assert.NotEqual(sender, receiver);
            Assert.InRange(sender, 0, nodes - 1);
            Assert.InRange(receiver, 0, nodes - 1);
            senders[sender]++;
            receivers[receiver]++;
        }

        Assert.All(senders, n => Assert.Equal(100, n));
        Assert.All(receivers, n => Assert.Equal(100, n));
    }

    [Fact]
    public void One_node_holds_both_ends_of_every_pair()
    {
        Assert.Equal((0, 0), ClusterPlacement.Pair(0, 1));
        Assert.Equal((0, 0), ClusterPlacement.Pair(41, 1));
    }

    [Fact]
    public void Group_members_are_spread_round_robin_within_one_of_each_other()
    {
        var perNode = new int[3];
        for (var member = 0; member < 1024; member++)
        {
            perNode[ClusterPlacement.Member(member, 3)]++;
        }

        Assert.Equal(0, ClusterPlacement.Member(0, 3)); // the sender/creator on the first node
        Assert.Equal([342, 341, 341], perNode);
    }

    [Fact]
    public void Bad_counts_are_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ClusterPlacement.Pair(0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ClusterPlacement.Pair(-1, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => ClusterPlacement.Member(0, 0));
    }

    [Fact]
    public void The_map_of_the_admin_endpoint_is_read_with_its_active_members()
    {
        const string json = """
            {"node_id":"n1","has_map":true,"has_current_map":true,"disconnected_since":null,"staleness_seconds":0,
             "last_error":null,"epoch":12,"vnodes":128,"replication_factor":1,
             "members":[{"id":"n1","mesh":"127.0.0.1:7890","client":"127.0.0.1:7883","state":"Active","live":true},
                        {"id":"n4","mesh":"127.0.0.1:7891","client":"127.0.0.1:7884","state":"Joining","live":true}],
             "live_members":[]}
            """;
        var map = ClusterMapSnapshot.Parse(json);
        Assert.Equal(12, map.Epoch);
        Assert.Equal(128, map.VirtualNodes);
        Assert.Equal(2, map.Members.Count);
        var active = Assert.Single(map.Active);
        Assert.Equal(new ClusterMapMember("n1", "127.0.0.1:7883", "Active"), active);
    }
}
