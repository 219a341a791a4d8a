using ChatBroker.Cluster.Coordination;
using Microsoft.Extensions.Hosting;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Runs a node's <see cref="ClusterNode"/> in a host (<see cref="Hosting.BrokerServices.AddChatBrokerCluster"/>):
/// once the coordinator has started, the node follows its view; on stop the node closes its links. Being a
/// hosted service that depends on the node makes the host construct the node, and so hand the router to the
/// messaging core, before any hosted service (the device listener among them) starts.
/// </summary>
internal sealed class ClusterNodeService(ClusterNode node, IClusterCoordinator coordinator) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        node.Start(coordinator.View, coordinator);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken) => await node.DisposeAsync().ConfigureAwait(false);
}
