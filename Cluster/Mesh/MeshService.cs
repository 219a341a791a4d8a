using ChatBroker.Cluster.Mesh.Wire;
using Grpc.Core;
using Microsoft.Extensions.Hosting;

namespace ChatBroker.Cluster.Mesh;

/// <summary>The gRPC adapter of <see cref="MeshReceiver"/>: Grpc.AspNetCore calls <see cref="Link"/> per stream.</summary>
public sealed class MeshService(MeshReceiver receiver, IHostApplicationLifetime lifetime) : Wire.Mesh.MeshBase
{
    public override async Task Link(IAsyncStreamReader<MeshBatch> requestStream, IServerStreamWriter<MeshAck> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        // A link never ends by itself: stopping the host ends it, or shutdown would wait for its timeout.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, lifetime.ApplicationStopping);
        try
        {
            await receiver.RunLinkAsync(requestStream, responseStream, stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (lifetime.ApplicationStopping.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "mesh: node stopping"));
        }
    }
}
