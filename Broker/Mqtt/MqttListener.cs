using System.Net;
using System.Net.Sockets;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Sessions;
using ChatBroker.Broker.Transport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>Log messages of the MQTT listener (event ids 26xx).</summary>
internal static partial class MqttLog
{
    [LoggerMessage(2600, LogLevel.Information, "MQTT listening on {Endpoint}")]
    public static partial void Listening(ILogger logger, IPEndPoint endpoint);

    [LoggerMessage(2601, LogLevel.Information, "MQTT over TLS listening on {Endpoint}")]
    public static partial void TlsListening(ILogger logger, IPEndPoint endpoint);

    [LoggerMessage(2602, LogLevel.Information, "MQTT keepalive: closed {Count} silent connections")]
    public static partial void KeepaliveClosed(ILogger logger, int count);

    [LoggerMessage(2603, LogLevel.Error, "MQTT: the session state could not be stored; the connections waiting for it are closed")]
    public static partial void StateWriteFailed(ILogger logger, Exception error);

    [LoggerMessage(2604, LogLevel.Information, "MQTT: loaded {Sessions} persistent sessions ({Messages} queued or in-flight messages) and {Retained} retained messages from the store; {Expired} sessions had expired")]
    public static partial void StateLoaded(ILogger logger, int sessions, int messages, int retained, int expired);

    [LoggerMessage(2605, LogLevel.Warning, "MQTT: skipped an unreadable record of the store's mqtt family ({Reason})")]
    public static partial void StateRecordSkipped(ILogger logger, string reason);
}

/// <summary>Starts an <see cref="MqttConnection"/> for each accepted connection (plain TCP, or TLS after the handshake).</summary>
internal sealed class MqttConnectionHandler(MqttBroker broker) : IPolledConnectionHandler, IMqttWebSocketHandler
{
    public MqttBroker Broker { get; } = broker;

    public ReadinessPoller? Poller => ReadinessPoller.For(Broker.Context.Options.Tcp);

    // Only without the readiness poller (tcp.readiness_poller = false, or not Linux x64): .NET's socket and its async state.
    public void Start(Socket socket, long connectionId, IConnectionOwner owner) =>
        Start(new SocketTransport(socket), connectionId, owner);

    public void Start(IDeviceTransport transport, long connectionId, IConnectionOwner owner)
    {
        IThreadPoolWorkItem connection = new MqttConnection(Broker, transport, connectionId, owner);
        if (transport is PolledSocketTransport)
        {
            connection.Execute(); // the listener's accept thread: the first activation only arms the wait for CONNECT
        }
        else
        {
            ThreadPool.UnsafeQueueUserWorkItem(connection, preferLocal: false);
        }
    }
}

/// <summary>
/// The MQTT listener on mqtt.listen (and mqtt.tls_listen): the same socket accept loop as the native protocol's, bounded
/// by tcp.max_connections, and a sweep once a second that closes connections silent for 1.5 x their keepalive
/// [MQTT-3.1.2-24] and ends persistent sessions whose expiry passed. No timer per connection.
/// </summary>
public sealed class MqttListener : IHostedService, IAsyncDisposable
{
    private readonly List<SocketListener> _listeners = [];
    private readonly MqttBroker _broker;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stopping = new();
    private Task? _sweep;

    internal MqttListener(MqttBroker broker, IEnumerable<SocketListener> listeners, ILogger logger)
    {
        _broker = broker;
        _listeners.AddRange(listeners);
        _logger = logger;
    }

    /// <summary>The plain listener's bound address (port 0 resolved), or null.</summary>
    public IPEndPoint? LocalEndPoint => _listeners.Count > 0 ? _listeners[0].LocalEndPoint : null;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        _broker.LoadState();
        _broker.PublishSystemTopics();
        foreach (var listener in _listeners)
        {
            await listener.StartAsync(cancellationToken).ConfigureAwait(false);
        }

        _sweep = SweepAsync(_stopping.Token);
    }

    private async Task SweepAsync(CancellationToken stopping)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try
        {
            while (await timer.WaitForNextTickAsync(stopping).ConfigureAwait(false))
            {
                var now = Environment.TickCount64;
                var closed = 0;
                foreach (var connection in _broker.Connections)
                {
                    if (connection.IsKeepaliveExpired(now))
                    {
                        connection.CloseFromBroker("keepalive", MqttDisconnectReasonCode.KeepAliveTimeout, "nothing received within 1.5 x keepalive");
                        closed++;
                    }
                }

                if (closed > 0)
                {
                    MqttLog.KeepaliveClosed(_logger, closed);
                }

                _broker.ExpireSessions(now);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        foreach (var connection in _broker.Connections)
        {
            connection.CloseFromBroker("shutdown", MqttDisconnectReasonCode.ServerShuttingDown, "server is shutting down");
        }

        foreach (var listener in _listeners)
        {
            await listener.StopAsync(cancellationToken).ConfigureAwait(false);
        }

        if (_sweep is not null)
        {
            await _sweep.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        // The sessions' last changes (their disconnect times) reach the store before it closes.
        await _broker.State.FlushAsync().WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var listener in _listeners)
        {
            await listener.DisposeAsync().ConfigureAwait(false);
        }

        _stopping.Dispose();
    }
}

/// <summary>Registers the MQTT listener when mqtt.listen or mqtt.tls_listen is set.</summary>
public static class MqttServices
{
    public static IServiceCollection AddChatBrokerMqtt(this IServiceCollection services, Configuration.BrokerOptions options)
    {
        var mqtt = options.Mqtt;
        if (mqtt.Listen is null && mqtt.TlsListen is null)
        {
            return services;
        }

        services.AddSingleton(_ => new MqttInstruments(options.Node.Name));
        services.AddSingleton(sp => new MqttBroker(sp.GetRequiredService<BrokerContext>(), sp.GetRequiredService<MqttInstruments>(), MqttCodec.Shared,
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("ChatBroker.Mqtt")));
        services.AddSingleton(sp => new MqttConnectionHandler(sp.GetRequiredService<MqttBroker>()));
        services.AddSingleton<IMqttWebSocketHandler>(sp => sp.GetRequiredService<MqttConnectionHandler>());
        services.AddSingleton(sp =>
        {
            var broker = sp.GetRequiredService<MqttBroker>();
            var handler = sp.GetRequiredService<MqttConnectionHandler>();
            var metrics = sp.GetRequiredService<BrokerMetrics>();
            var logger = sp.GetRequiredService<ILogger<SocketListener>>();
            var listeners = new List<SocketListener>();
            if (mqtt.Listen is { } listen)
            {
                listeners.Add(new SocketListener(listen, "mqtt.listen", options.Tcp.MaxConnections, handler, metrics, logger, MqttLog.Listening));
            }

            if (mqtt.TlsListen is { } tlsListen)
            {
                var certificates = sp.GetRequiredService<TlsCertificateSource>();
                certificates.Watch();
                var tls = new TlsConnectionHandler(certificates, options.Tls, handler, sp.GetRequiredService<TransportInstruments>(),
                    sp.GetRequiredService<ILogger<TlsConnectionHandler>>());
                listeners.Add(new SocketListener(tlsListen, "mqtt.tls_listen", options.Tcp.MaxConnections, tls, metrics, logger, MqttLog.TlsListening));
            }

            return new MqttListener(broker, listeners, sp.GetRequiredService<ILoggerFactory>().CreateLogger("ChatBroker.Mqtt"));
        });
        services.AddHostedService(sp => sp.GetRequiredService<MqttListener>());
        return services;
    }
}
