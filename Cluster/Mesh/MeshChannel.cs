using Grpc.Net.Client;

namespace ChatBroker.Cluster.Mesh;

/// <summary>The gRPC channel to one remote node's mesh port, shared by that node's <see cref="MeshPeer"/>s.</summary>
public static class MeshChannel
{
    /// <summary>A channel to <paramref name="address"/> (<c>http://host:port</c>: HTTP/2 with prior knowledge).</summary>
    public static GrpcChannel Create(Uri address, MeshOptions options)
    {
        ArgumentNullException.ThrowIfNull(address);
        ArgumentNullException.ThrowIfNull(options);
        var handler = new SocketsHttpHandler
        {
            // A dead peer or a silent network is noticed by pings, not only when a write fails.
            KeepAlivePingDelay = TimeSpan.FromSeconds(10),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
            ConnectTimeout = TimeSpan.FromSeconds(5),
            EnableMultipleHttp2Connections = true,
            InitialHttp2StreamWindowSize = 4 * 1024 * 1024,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
        };
        return GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpHandler = handler,
            DisposeHttpClient = true,
            MaxSendMessageSize = options.MaxBatchWireBytes,
            MaxReceiveMessageSize = options.MaxAckWireBytes,
        });
    }
}
