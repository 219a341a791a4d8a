using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ChatBroker.Cluster.Mesh;

/// <summary>Puts the mesh service on a Kestrel app: <c>AddMesh</c>, <c>ListenMesh</c>, <c>MapMesh</c>.</summary>
public static class MeshServerExtensions
{
    /// <summary>Registers gRPC with the mesh's message bounds and the <paramref name="receiver"/>.</summary>
    public static IServiceCollection AddMesh(this IServiceCollection services, MeshReceiver receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = receiver.Options.MaxBatchWireBytes;
            o.MaxSendMessageSize = receiver.Options.MaxAckWireBytes;
            o.EnableDetailedErrors = true;
        });
        services.AddSingleton(receiver);
        return services;
    }

    /// <summary>Listens on <paramref name="endpoint"/> (cluster.mesh_listen) with HTTP/2 only: cleartext
    /// HTTP/2 needs no TLS negotiation, so clients speak it with prior knowledge (h2c).</summary>
    public static void ListenMesh(this KestrelServerOptions kestrel, IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        kestrel.Listen(endpoint, listen => listen.Protocols = HttpProtocols.Http2);
        // Larger HTTP/2 windows than Kestrel's defaults (1 MiB / 768 KiB) let a stream keep several full
        // batches in flight before it waits for a WINDOW_UPDATE. A receiver reads a stream's next batch only once it
        // has handled the previous one, and data it has not read holds the connection's window as well as the
        // stream's: the connection window must cover every stream of the pair at its full window, or streams that are
        // behind (replication, forward queues) take all of it and the routed operations' stream cannot send a byte
        // (MeshStreamIsolationTests; checker seeds 205 and 301: one gateway's SENDs to one owner timed out for tens of
        // seconds). Unused window costs nothing: Kestrel buffers only what arrives.
        kestrel.Limits.Http2.InitialStreamWindowSize = StreamWindowBytes;
        kestrel.Limits.Http2.InitialConnectionWindowSize = (MaxStreamsPerPair + 1) * StreamWindowBytes;
    }

    /// <summary>The streams one node opens to another (0: routed operations, 1: replication, 2: forward queues,
    /// 3: signals).</summary>
    public const int MaxStreamsPerPair = 4;

    /// <summary>The HTTP/2 window of one mesh stream at the receiving Kestrel.</summary>
    public const int StreamWindowBytes = 4 * 1024 * 1024;

    /// <summary>Maps the <c>chatbroker.mesh.Mesh</c> service.</summary>
    public static IEndpointConventionBuilder MapMesh(this IEndpointRouteBuilder endpoints) => endpoints.MapGrpcService<MeshService>();
}
