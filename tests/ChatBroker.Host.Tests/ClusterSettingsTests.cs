using System.Collections;
using ChatBroker.Broker.Configuration;

namespace ChatBroker.Host.Tests;

/// <summary>The <c>cluster.*</c> routing and mesh settings as the host hands them to the broker's cluster layer.</summary>
public sealed class ClusterSettingsTests
{
    [Fact]
    public void Routing_and_mesh_settings_reach_the_cluster_layer()
    {
        var options = Load(
            "cluster.forward_timeout=750ms", "cluster.read_timeout=2s", "cluster.retry_after=300ms", "cluster.forward_batch=32",
            "cluster.max_stale_retries=5", "cluster.mesh_max_batch_messages=16", "cluster.mesh_max_batch_bytes=262144",
            "cluster.mesh_max_message_bytes=70000", "cluster.mesh_max_reply_bytes=80000", "cluster.mesh_max_queue_bytes=1048576",
            "cluster.mesh_max_queue_messages=1000", "cluster.mesh_max_links=10", "cluster.mesh_max_cached_results=500",
            "cluster.mesh_reconnect_initial_delay=20ms", "cluster.mesh_reconnect_max_delay=1s");
        var routing = ClusterNode.RoutingFrom(options);

        Assert.Equal(TimeSpan.FromMilliseconds(750), routing.ForwardTimeout);
        Assert.Equal(TimeSpan.FromSeconds(2), routing.ReadTimeout);
        Assert.Equal(TimeSpan.FromMilliseconds(300), routing.RetryAfter);
        Assert.Equal(32, routing.ForwardBatch);
        Assert.Equal(5, routing.MaxStaleRetries);
        Assert.Equal(16, routing.Mesh.MaxBatchMessages);
        Assert.Equal(262144, routing.Mesh.MaxBatchBytes);
        Assert.Equal(70000, routing.Mesh.MaxMessageBytes);
        Assert.Equal(80000, routing.Mesh.MaxReplyBytes);
        Assert.Equal(1048576, routing.Mesh.MaxQueueBytes);
        Assert.Equal(1000, routing.Mesh.MaxQueueMessages);
        Assert.Equal(10, routing.Mesh.MaxLinks);
        Assert.Equal(500, routing.Mesh.MaxCachedResults);
        Assert.Equal(TimeSpan.FromMilliseconds(20), routing.Mesh.ReconnectInitialDelay);
        Assert.Equal(TimeSpan.FromSeconds(1), routing.Mesh.ReconnectMaxDelay);
    }

    [Fact]
    public void The_defaults_are_the_cluster_layers_defaults()
    {
        var routing = ClusterNode.RoutingFrom(Load());
        Assert.Equal(new Broker.Cluster.ClusterRoutingOptions(), routing);
    }

    [Theory]
    [InlineData("cluster.mesh_max_message_bytes=60000", "cluster.mesh_max_message_bytes (60000) must be at least tcp.max_frame_bytes + 1024 (66560)")]
    [InlineData("cluster.mesh_max_reply_bytes=131072", "cluster.mesh_max_reply_bytes (at least cluster.mesh_max_message_bytes + 1024) is out of range")]
    [InlineData("cluster.mesh_max_queue_messages=10", "cluster.mesh_max_queue_messages (at least cluster.mesh_max_batch_messages) is out of range")]
    [InlineData("cluster.mesh_reconnect_max_delay=10ms", "cluster.mesh_reconnect_max_delay (at least cluster.mesh_reconnect_initial_delay) is out of range")]
    public void Settings_that_do_not_fit_together_are_refused_naming_them(string setting, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => ClusterNode.RoutingFrom(Load(setting)));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_cluster_node_needs_a_fixed_mesh_port()
    {
        var e = Assert.Throws<InvalidDataException>(() => ClusterNode.OptionsFrom(Load("cluster.etcd_endpoints=http://127.0.0.1:2379", "cluster.mesh_listen=127.0.0.1:0")));
        Assert.Contains("cluster.mesh_listen: a cluster node needs a fixed mesh port", e.Message, StringComparison.Ordinal);
        Assert.False(ClusterNode.OptionsFrom(Load("cluster.mesh_listen=127.0.0.1:0")).Enabled); // a single node has no mesh
    }

    private static BrokerOptions Load(params string[] settings) =>
        BrokerConfiguration.Load(null, settings, new Hashtable()).Options;
}
