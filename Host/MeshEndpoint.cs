using System.Net;
using ChatBroker.Cluster.Mesh;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// Serves the mesh (gRPC over h2c, <c>Cluster/mesh.proto</c>) on <c>cluster.mesh_listen</c> with its own Kestrel,
/// handing what other nodes send to the broker's <see cref="MeshReceiver"/>. Started before the node registers in
/// etcd, so a node the map lists is already reachable; stopped last, after the listener drained and the node left
/// the live members, so other nodes' resends of what this node acked still find it while it stops.
/// </summary>
internal sealed partial class MeshEndpoint(IPEndPoint listen, MeshReceiver receiver, ILoggerFactory loggerFactory) : IHostedService, IAsyncDisposable
{
    private readonly ILogger _logger = loggerFactory.CreateLogger<MeshEndpoint>();
    private MeshServer? _server;

    /// <summary>The bound address, once started.</summary>
    public IPEndPoint? LocalEndPoint => _server?.Endpoint;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            _server = await MeshServer.StartAsync(listen, receiver, loggerFactory, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            throw new InvalidOperationException($"Cannot listen on {listen} (cluster.mesh_listen): {e.Message}", e);
        }

        MeshListening(_logger, _server.Endpoint);
    }

    public async Task StopAsync(CancellationToken cancellationToken) => await DisposeAsync().ConfigureAwait(false);

    public async ValueTask DisposeAsync()
    {
        var server = Interlocked.Exchange(ref _server, null);
        if (server is not null)
        {
            await server.DisposeAsync().ConfigureAwait(false);
        }
    }

    [LoggerMessage(1018, LogLevel.Information, "Cluster mesh on http://{Endpoint} (gRPC, HTTP/2 cleartext)")]
    private static partial void MeshListening(ILogger logger, IPEndPoint endpoint);
}
