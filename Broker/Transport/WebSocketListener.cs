using System.Net;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// The native protocol over WebSocket on ws.listen, path <see cref="WsOptions.Path"/>, served by its own Kestrel
/// (HTTP/1.1 upgrade; wss with the tls.* certificate, reloaded with it). A browser opens
/// <c>new WebSocket("wss://host:port/chat")</c> with <c>binaryType = "arraybuffer"</c> and sends frames in binary
/// messages. Each accepted WebSocket becomes a <see cref="WebSocketTransport"/> under an ordinary session: the same
/// CONNECT, limits and metrics as TCP, counted in the same connection counters and bounded by tcp.max_connections.
/// Refused before the upgrade: another path (404), not a WebSocket request (400), an Origin not in
/// ws.allowed_origins (403), the connection limit (503); each counted in chatbroker_ws_upgrades_total.
/// With web.enabled it also serves the web chat (<see cref="WebChatFiles"/>) on every other path, so the page and its
/// WebSocket share one origin: that origin is always allowed, whatever ws.allowed_origins lists.
/// </summary>
public sealed class WebSocketListener : IHostedService, IConnectionOwner, IAsyncDisposable
{
    private readonly BrokerOptions _options;
    private readonly IDeviceConnectionHandler _sessions;
    private readonly IMqttWebSocketHandler? _mqtt;
    private readonly BrokerMetrics _metrics;
    private readonly TransportInstruments _instruments;
    private readonly TlsCertificateSource? _certificates;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly string[] _allowedOrigins;
    private readonly WebChatFiles? _web;
    private readonly CancellationTokenSource _stopping = new();
    private readonly TaskCompletionSource _allClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private WebApplication? _app;
    private long _nextConnectionId;
    private int _open;

    public WebSocketListener(
        BrokerOptions options, IDeviceConnectionHandler sessions, BrokerMetrics metrics, TransportInstruments instruments, ILoggerFactory loggerFactory,
        TlsCertificateSource? certificates = null, IMqttWebSocketHandler? mqtt = null)
    {
        _options = options;
        _sessions = sessions;
        _mqtt = mqtt;
        _metrics = metrics;
        _instruments = instruments;
        _certificates = certificates;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<WebSocketListener>();
        _allowedOrigins = options.Ws.AllowedOriginList();
        _web = options.Web.Enabled ? WebChatFiles.Load() : null;
    }

    /// <summary>The bound address (useful when the configured port is 0).</summary>
    public IPEndPoint? LocalEndPoint { get; private set; }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var listen = _options.Ws.Listen ?? throw new InvalidOperationException("ws.listen is not set");
        var useTls = _options.Ws.Tls;
        if (useTls && _certificates is null)
        {
            throw new InvalidOperationException("ws.tls needs tls.certificate_file and tls.key_file");
        }

        // The empty builder: no configuration files and their watchers (see the admin endpoint).
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "chatbroker-ws" });
        builder.WebHost.UseKestrelCore();
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_loggerFactory); // Kestrel logs through the broker's logging
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Listen(listen, endpoint =>
            {
                endpoint.Protocols = HttpProtocols.Http1;
                if (useTls)
                {
                    var certificates = _certificates!;
                    endpoint.UseHttps(new TlsHandshakeCallbackOptions
                    {
                        // The options of the moment: a reloaded certificate serves the next handshake.
                        OnConnection = _ => ValueTask.FromResult(certificates.WebSocketOptions),
                        HandshakeTimeout = _options.Tls.HandshakeTimeout,
                    });
                }
            });
        });
        var app = builder.Build();
        app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.Zero }); // the protocol has its own keepalive
        app.Run(AcceptAsync);
        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw new InvalidOperationException($"Cannot listen on {listen} (ws.listen): {e.Message}", e);
        }

        _app = app;
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault();
        LocalEndPoint = address is null ? listen : IPEndPoint.Parse(new Uri(address).Authority);
        TransportLog.WebSocketListening(_logger, useTls ? "wss" : "ws", LocalEndPoint, WsOptions.Path);
        if (_web is not null)
        {
            TransportLog.WebChatServing(_logger, useTls ? "https" : "http", LocalEndPoint);
        }
    }

    private async Task AcceptAsync(HttpContext context)
    {
        var mqtt = _mqtt is not null && context.Request.Path == WsOptions.MqttPath;
        if (_web is not null && context.Request.Path != WsOptions.Path && !mqtt && !context.WebSockets.IsWebSocketRequest)
        {
            await _web.ServeAsync(context).ConfigureAwait(false);
            return;
        }

        var refusal = Check(context, mqtt);
        if (refusal is not null)
        {
            _instruments.WsUpgrades.Add(1, TransportInstruments.Result(refusal.Value.Result));
            TransportLog.WebSocketRefused(_logger, RemoteOf(context), refusal.Value.Result);
            context.Response.StatusCode = refusal.Value.Status;
            await context.Response.WriteAsync(refusal.Value.Message + "\n").ConfigureAwait(false);
            return;
        }

        _metrics.ConnectionsAccepted.Add(1);
        if (Interlocked.Increment(ref _open) > _options.Tcp.MaxConnections || _stopping.IsCancellationRequested)
        {
            Interlocked.Decrement(ref _open);
            _metrics.ConnectionsRejected.Add(1);
            _instruments.WsUpgrades.Add(1, TransportInstruments.Result("limit"));
            context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
            return;
        }

        _instruments.WsUpgrades.Add(1, TransportInstruments.Result("ok"));
        _metrics.ConnectionsOpen.Add(1);
        WebSocketTransport transport;
        try
        {
            // MQTT over WebSocket: the server selects the subprotocol "mqtt" the client offered (MQTT 5.0 §6.0).
            var socket = await context.WebSockets.AcceptWebSocketAsync(mqtt ? "mqtt" : null).ConfigureAwait(false);
            transport = new WebSocketTransport(socket, RemoteOf(context), _instruments, wholeFrames: !mqtt);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or System.Net.WebSockets.WebSocketException)
        {
            ((IConnectionOwner)this).Release(0, null);
            return;
        }

        var id = Interlocked.Increment(ref _nextConnectionId);
        try
        {
            (mqtt ? _mqtt! : _sessions).Start(transport, id, this);
        }
        catch (Exception e)
        {
            transport.Close();
            ((IConnectionOwner)this).Release(id, e);
        }

        // The request lasts as long as the session: Kestrel closes the connection when it returns.
        await transport.Closed.ConfigureAwait(false);
    }

    private (int Status, string Result, string Message)? Check(HttpContext context, bool mqtt)
    {
        if (context.Request.Path != WsOptions.Path && !mqtt)
        {
            return (StatusCodes.Status404NotFound, "bad_path", $"the WebSocket is served on {WsOptions.Path}");
        }

        if (!context.WebSockets.IsWebSocketRequest)
        {
            return (StatusCodes.Status400BadRequest, "not_websocket", "expected a WebSocket upgrade request");
        }

        if (mqtt && !context.WebSockets.WebSocketRequestedProtocols.Contains("mqtt"))
        {
            return (StatusCodes.Status400BadRequest, "no_mqtt_subprotocol", "MQTT over WebSocket needs the subprotocol \"mqtt\" (Sec-WebSocket-Protocol)");
        }

        var origin = context.Request.Headers.Origin;
        if (_allowedOrigins.Length > 0 && origin.Count > 0 && !IsAllowed(origin.ToString()) && !(_web is not null && IsSameOrigin(context, origin.ToString())))
        {
            return (StatusCodes.Status403Forbidden, "bad_origin", "this Origin is not in ws.allowed_origins");
        }

        return null;
    }

    private bool IsAllowed(string origin)
    {
        foreach (var allowed in _allowedOrigins)
        {
            if (string.Equals(allowed, origin, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The page the web chat served (same scheme, host and port as this request) opens the WebSocket.</summary>
    private static bool IsSameOrigin(HttpContext context, string origin) =>
        string.Equals(origin, context.Request.Scheme + "://" + context.Request.Host.Value, StringComparison.OrdinalIgnoreCase);

    private static IPEndPoint? RemoteOf(HttpContext context) =>
        context.Connection.RemoteIpAddress is { } address ? new IPEndPoint(address, context.Connection.RemotePort) : null;

    CancellationToken IConnectionOwner.Stopping => _stopping.Token;

    void IConnectionOwner.Release(long connectionId, Exception? failure)
    {
        if (failure is not null)
        {
            _logger.LogError(failure, "WebSocket connection {ConnectionId} failed unexpectedly", connectionId);
        }

        _metrics.ConnectionsOpen.Add(-1);
        if (Interlocked.Decrement(ref _open) == 0 && _stopping.IsCancellationRequested)
        {
            _allClosed.TrySetResult();
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_app is null)
        {
            return;
        }

        // Sessions are told first (they say SERVER_SHUTTING_DOWN and close their WebSockets), then Kestrel stops.
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (Volatile.Read(ref _open) == 0)
        {
            _allClosed.TrySetResult();
        }

        await _allClosed.Task.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await _app.StopAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    public async ValueTask DisposeAsync()
    {
        var app = Interlocked.Exchange(ref _app, null);
        if (app is not null)
        {
            await StopAsyncCore(app).ConfigureAwait(false);
        }

        _stopping.Dispose();
    }

    private async Task StopAsyncCore(WebApplication app)
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        await app.DisposeAsync().ConfigureAwait(false);
    }
}
