using System.Collections;
using System.Security.Cryptography;
using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Hosting;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Storage;
using ChatBroker.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace ChatBroker.Broker.Tests.Cluster;

public sealed class ClusterServicesTests
{
    [Fact]
    public async Task Without_the_cluster_call_the_core_has_no_router()
    {
        await using var provider = Services(cluster: false).BuildServiceProvider();
        Assert.Null(provider.GetRequiredService<ChatService>().Router);
        Assert.Null(provider.GetService<ClusterNode>());
    }

    [Fact]
    public async Task The_cluster_layer_is_the_cores_router_and_the_mesh_receivers_sink_before_any_hosted_service_starts()
    {
        using var coordination = new InMemoryCoordinationStore();
        await using var coordinator = new InMemoryCoordinator(coordination, new ClusterOptions { NodeId = "node7" });
        var services = Services(cluster: true);
        services.AddSingleton<IClusterCoordinator>(coordinator);
        await using var provider = services.BuildServiceProvider();

        // Constructing the hosted services (what a host does first) hands the router to the core.
        _ = provider.GetServices<IHostedService>().ToList();
        var node = provider.GetRequiredService<ClusterNode>();
        Assert.Same(node, provider.GetRequiredService<ChatService>().Router);
        Assert.Same(node, provider.GetRequiredService<MeshReceiver>().Sink);
        Assert.Equal("node7", node.NodeId);

        // Started, the node follows the coordinator's map.
        await coordinator.StartAsync(CancellationToken.None);
        var service = provider.GetServices<IHostedService>().OfType<ClusterNodeService>().Single();
        await service.StartAsync(CancellationToken.None);
        var map = (ClusterMap.Empty with { VirtualNodes = 8 }).WithMember(new ClusterMember("node7", coordinator.Self.MeshAddress, "", MemberState.Active));
        var applied = await coordinator.TryUpdateMapAsync(map, CancellationToken.None);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await node.WaitForEpochAsync((ulong)applied.Map.Epoch, timeout.Token);
        Assert.True(node.OwnsConversation(42));
        Assert.True(node.IsHomeOf("anyone"));
        await service.StopAsync(CancellationToken.None);
    }

    private static ServiceCollection Services(bool cluster)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        var configuration = BrokerConfiguration.Load(null, null, new Hashtable());
        services.AddChatBroker(configuration, new TokenSecret(RandomNumberGenerator.GetBytes(32)), new InMemoryChatStore());
        if (cluster)
        {
            services.AddChatBrokerCluster("node7");
        }

        return services;
    }
}
