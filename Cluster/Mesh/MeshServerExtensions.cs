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
        // batches in flight before it waits for a WINDOW_UPDATE.
        kestrel.Limits.Http2.InitialConnectionWindowSize = 8 * 1024 * 1024;
        kestrel.Limits.Http2.InitialStreamWindowSize = 4 * 1024 * 1024;
    }

    /// <summary>Maps the <c>chatbroker.mesh.Mesh</c> service.</summary>
    public static IEndpointConventionBuilder MapMesh(this IEndpointRouteBuilder endpoints) => endpoints.MapGrpcService<MeshService>();
}
