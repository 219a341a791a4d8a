using System.Text;
using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Cluster.Tests.Coordination;

public sealed class ClusterMapTests
{
    [Fact]
    public void A_map_written_by_a_newer_format_is_refused_not_half_read()
    {
        var json = Encoding.UTF8.GetBytes("{\"format\":2,\"vnodes\":128,\"replication_factor\":1,\"members\":[]}");

        var e = Assert.Throws<ClusterCoordinationException>(() => ClusterMapCodec.DecodeMap(json, 9));

        Assert.Contains("format 2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_stored_map_that_breaks_the_rules_is_refused_with_the_reason()
    {
        var json = Encoding.UTF8.GetBytes("{\"format\":1,\"vnodes\":0,\"replication_factor\":1,\"members\":[]}");

        var e = Assert.Throws<ClusterCoordinationException>(() => ClusterMapCodec.DecodeMap(json, 3));

        Assert.Contains("virtual nodes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Members_stay_sorted_and_unique_by_id()
    {
        var map = ClusterMap.Empty
            .WithMember(new ClusterMember("b", "m", "c", MemberState.Active))
            .WithMember(new ClusterMember("a", "m", "c", MemberState.Joining))
            .WithMember(new ClusterMember("b", "m2", "c2", MemberState.Leaving));

        Assert.Equal(["a", "b"], map.Members.Select(m => m.NodeId));
        Assert.Equal(MemberState.Leaving, map.FindMember("b")!.State);
        Assert.Equal(["a"], map.WithoutMember("b").Members.Select(m => m.NodeId));
        Assert.Null(map.Validate());
    }

    [Theory]
    [InlineData("")]
    [InlineData("has space")]
    [InlineData("slash/inside")]
    public void A_node_id_that_cannot_be_an_etcd_key_segment_is_invalid(string id)
    {
        Assert.False(NodeRegistration.IsValidNodeId(id));
        Assert.NotNull(new ClusterOptions { NodeId = id }.Validate());
    }

    [Fact]
    public void A_lease_shorter_than_two_seconds_is_refused()
    {
        var error = new ClusterOptions { LeaseTtl = TimeSpan.FromMilliseconds(1500) }.Validate();

        Assert.Contains("at least 2 s", error, StringComparison.Ordinal);
        Assert.Null(new ClusterOptions { LeaseTtl = TimeSpan.FromSeconds(2) }.Validate());
    }

    [Fact]
    public void Cluster_mode_is_off_without_etcd_endpoints()
    {
        Assert.False(new ClusterOptions().Enabled);
        Assert.True(new ClusterOptions { EtcdEndpoints = ["http://127.0.0.1:2379"] }.Enabled);
        Assert.NotNull(new ClusterOptions { EtcdEndpoints = ["127.0.0.1:2379"] }.Validate());
        Assert.True(ClusterOptions.TryParseEtcdEndpoints(" http://a:2379, http://b:2379 ", out var endpoints, out _));
        Assert.Equal(["http://a:2379", "http://b:2379"], endpoints);
        Assert.True(ClusterOptions.TryParseEtcdEndpoints("", out var none, out _));
        Assert.Empty(none);
        Assert.False(ClusterOptions.TryParseEtcdEndpoints("http://a:2379,b:2379", out _, out var error));
        Assert.Contains("b:2379", error, StringComparison.Ordinal);
    }
}
