using ChatBroker.Cluster.Coordination;
using ChatBroker.Broker.Observability;
using Microsoft.Extensions.Hosting;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Runs a node's <see cref="ClusterNode"/> in a host (<see cref="Hosting.BrokerServices.AddChatBrokerCluster"/>):
/// once the coordinator has started, the node follows its view; on stop the node closes its links. Being a
/// hosted service that depends on the node makes the host construct the node, and so hand the router to the
/// messaging core, before any hosted service (the device listener among them) starts. Its start returns once the
/// router has the map the coordinator has, so a listener started after it routes by the current map from the
/// first device on. (It also constructs the node's <see cref="RoutingInstruments"/>, so they are exported.)
/// </summary>
internal sealed class ClusterNodeService(ClusterNode node, IClusterCoordinator coordinator, RoutingInstruments instruments) : IHostedService
{
    public RoutingInstruments Instruments { get; } = instruments;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var view = coordinator.View;
        node.Start(view, coordinator);
        if (view.HasMap)
        {
            // Bounded: a map the node cannot apply is logged by the node, and must not keep the process from starting.
            using var bound = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            bound.CancelAfter(TimeSpan.FromSeconds(10));
            try
            {
                await node.WaitForEpochAsync((ulong)view.Epoch, bound.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
            }
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken) => await node.DisposeAsync().ConfigureAwait(false);
}
