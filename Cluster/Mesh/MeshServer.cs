using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// A Kestrel app that serves only the mesh on its own port. The broker can also map the service onto
/// its own host with <see cref="MeshServerExtensions"/>; tests and the benchmark use this.
/// </summary>
public sealed class MeshServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private MeshServer(WebApplication app, IPEndPoint endpoint, MeshReceiver receiver)
    {
        _app = app;
        Endpoint = endpoint;
        Receiver = receiver;
    }

    /// <summary>The bound address (the real port when 0 was asked for).</summary>
    public IPEndPoint Endpoint { get; }

    /// <summary>The address a <see cref="MeshPeer"/> connects to.</summary>
    public Uri Address => new($"http://{Endpoint}");

    public MeshReceiver Receiver { get; }

    public static async Task<MeshServer> StartAsync(IPEndPoint listen, MeshReceiver receiver, ILoggerFactory? loggerFactory = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(listen);
        ArgumentNullException.ThrowIfNull(receiver);
        // The empty builder: no configuration files, so nothing watches the working directory (the slim builder's
        // appsettings.json reload watcher put an inotify watch on every directory below it).
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "chatbroker-mesh" });
        builder.WebHost.UseKestrelCore();
        builder.Services.AddRoutingCore();
        builder.Logging.ClearProviders();
        if (loggerFactory is not null)
        {
            builder.Services.AddSingleton(loggerFactory);
        }

        builder.WebHost.ConfigureKestrel(k => k.ListenMesh(listen));
        builder.Services.AddMesh(receiver);
        var app = builder.Build();
        app.MapMesh();
        await app.StartAsync(cancellationToken).ConfigureAwait(false);
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        var bound = new Uri(addresses.First());
        return new MeshServer(app, new IPEndPoint(IPAddress.Parse(bound.Host.Trim('[', ']')), bound.Port), receiver);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }
}
