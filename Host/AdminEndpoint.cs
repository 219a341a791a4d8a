using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using ChatBroker.Cluster.Coordination;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// The operator's HTTP endpoint on Kestrel: <c>/healthz</c> (the process is alive), <c>/readyz</c> (every
/// service started, the node has the cluster map in cluster mode, and it is not shutting down; 503 with the
/// reason otherwise), <c>/metrics</c> (Prometheus text) and <c>/cluster</c> (the node's view of the cluster).
/// It runs as its own small web application so the native listener does not depend on ASP.NET.
/// </summary>
internal sealed class AdminEndpoint(
    BrokerOptions options, PrometheusExporter exporter, Readiness readiness, ILogger<AdminEndpoint> logger,
    ChatBroker.Broker.Messaging.DeviceRevocations devices, IClusterCoordinator? cluster = null)
    : IHostedService, IAsyncDisposable
{
    private WebApplication? _app;

    /// <summary>The bound address (useful when the configured port is 0).</summary>
    public System.Net.IPEndPoint? LocalEndPoint { get; private set; }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        // The empty builder: no configuration files, so nothing watches the working directory. The slim
        // builder added appsettings.json with reload-on-change, whose watcher put an inotify watch on every
        // directory under the working directory (751 under a checkout; all of / when started there) and
        // woke on every file RocksDB wrote when the data directory was beneath it.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions
        {
            ApplicationName = "chatbroker-admin",
            ContentRootPath = Directory.GetCurrentDirectory(),
        });
        builder.WebHost.UseKestrelCore();
        builder.Services.AddRoutingCore();
        BrokerHost.ConfigureLogging(builder.Logging, options.Log);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Listen(options.Admin.Listen);
        });
        var app = builder.Build();
        app.MapGet("/healthz", () => Results.Text("ok\n"));
        app.MapGet("/readyz", () => readiness.NotReadyReason is { } reason
            ? Results.Text($"not ready: {reason}\n", statusCode: StatusCodes.Status503ServiceUnavailable)
            : Results.Text("ready\n"));
        // The node's cached view of the cluster (no etcd round trip); 404 on a single node.
        app.MapGet("/cluster", () => cluster is null
            ? Results.Text("not in cluster mode: cluster.etcd_endpoints is empty\n", statusCode: StatusCodes.Status404NotFound)
            : Results.Bytes(ClusterStatus.NodeJson(cluster.Self.NodeId, cluster.View), "application/json"));
        app.MapGet("/metrics", () => Results.Text(exporter.Scrape(), "text/plain; version=0.0.4; charset=utf-8"));
        // Devices (issue 18): list a user's devices, revoke one or all (docs/operations.md, "Devices").
        app.MapGet("/devices", (string? user) => DeviceEndpoints.List(devices, user));
        app.MapPost("/devices/revoke", (string? user, string? device, CancellationToken ct) => DeviceEndpoints.RevokeAsync(devices, user, device, ct));
        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw new InvalidOperationException($"Cannot listen on {options.Admin.Listen} (admin.listen): {e.Message}", e);
        }

        _app = app;
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault();
        LocalEndPoint = address is null ? options.Admin.Listen : System.Net.IPEndPoint.Parse(new Uri(address).Authority);
        Log.AdminListening(logger, LocalEndPoint);
        _warmUp = Task.Run(() => WarmUpAsync(LocalEndPoint));
    }

    private Task _warmUp = Task.CompletedTask;

    /// <summary>
    /// Asks this endpoint for /healthz and /metrics once, in the background, right after it starts. The broker
    /// runs without tiered compilation (docs/operations.md, "JIT compilation"), so the first request compiles
    /// Kestrel's HTTP pipeline, the routing and the exporter: ~0.24 s of CPU (measured: 0.17 s for the first
    /// /healthz, 0.04 s more for the first /metrics, ~2 ms each after). Paid at the first Prometheus scrape, that
    /// came while clients were being served and took a core from them on a 2-core node (a 20 ms stall in the
    /// first measured second of paced load runs); here it is paid before the load arrives. A raw socket, not
    /// HttpClient, so that the warm-up compiles no client stack of its own. Never fatal.
    /// </summary>
    private async Task WarmUpAsync(System.Net.IPEndPoint endpoint)
    {
        var target = endpoint.Address.Equals(System.Net.IPAddress.Any) ? new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, endpoint.Port)
            : endpoint.Address.Equals(System.Net.IPAddress.IPv6Any) ? new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, endpoint.Port)
            : endpoint;
        var buffer = new byte[16 * 1024];
        foreach (var path in (string[])["/healthz", "/metrics"])
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                var started = System.Diagnostics.Stopwatch.GetTimestamp();
                using var socket = new System.Net.Sockets.Socket(target.AddressFamily, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
                await socket.ConnectAsync(target, timeout.Token).ConfigureAwait(false);
                var request = System.Text.Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
                await socket.SendAsync(request, System.Net.Sockets.SocketFlags.None, timeout.Token).ConfigureAwait(false);
                while (await socket.ReceiveAsync(buffer, System.Net.Sockets.SocketFlags.None, timeout.Token).ConfigureAwait(false) > 0)
                {
                    // Read to the end: the server has then run the whole request.
                }

                Log.AdminWarmedUp(logger, path, (long)System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or OperationCanceledException or IOException)
            {
                Log.AdminWarmUpFailed(logger, e.Message);
                return;
            }
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _warmUp.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing); // as a rule done long before; at most its 10 s timeout
        if (_app is not null)
        {
            await _app.StopAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        var app = Interlocked.Exchange(ref _app, null);
        if (app is not null)
        {
            await app.DisposeAsync().ConfigureAwait(false);
        }
    }
}
