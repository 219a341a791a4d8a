using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Transport;

/// <summary>Registers the TLS and WebSocket listeners that the settings turn on (tls.listen, ws.listen), after the TCP listener.</summary>
public static class TransportServices
{
    public static IServiceCollection AddChatBrokerTransports(this IServiceCollection services, BrokerOptions options)
    {
        services.AddSingleton(_ => new TransportInstruments(options.Node.Name));
        if (options.Tls.HasCertificate)
        {
            services.AddSingleton(sp => new TlsCertificateSource(
                options.Tls, sp.GetRequiredService<TransportInstruments>(), sp.GetRequiredService<ILogger<TlsCertificateSource>>()));
        }

        if (options.Tls.Listen is { } tlsListen)
        {
            services.AddSingleton(sp =>
            {
                var certificates = sp.GetRequiredService<TlsCertificateSource>();
                certificates.Watch();
                var handler = new TlsConnectionHandler(
                    certificates, options.Tls, sp.GetRequiredService<IDeviceConnectionHandler>(), sp.GetRequiredService<TransportInstruments>(),
                    sp.GetRequiredService<ILogger<TlsConnectionHandler>>());
                return new TlsListener(new SocketListener(
                    tlsListen, "tls.listen", options.Tcp.MaxConnections, handler, sp.GetRequiredService<BrokerMetrics>(),
                    sp.GetRequiredService<ILogger<SocketListener>>(), static (logger, endpoint) => TransportLog.TlsListening(logger, endpoint, TlsCertificateSource.Alpn)));
            });
            services.AddHostedService(sp => sp.GetRequiredService<TlsListener>());
        }

        if (options.Ws.Listen is not null)
        {
            services.AddSingleton(sp =>
            {
                var certificates = options.Ws.Tls ? sp.GetRequiredService<TlsCertificateSource>() : null;
                certificates?.Watch();
                return new WebSocketListener(
                    options, sp.GetRequiredService<IDeviceConnectionHandler>(), sp.GetRequiredService<BrokerMetrics>(),
                    sp.GetRequiredService<TransportInstruments>(), sp.GetRequiredService<ILoggerFactory>(), certificates,
                    sp.GetService<IMqttWebSocketHandler>());
            });
            services.AddHostedService(sp => sp.GetRequiredService<WebSocketListener>());
        }

        return services;
    }
}

/// <summary>
/// The socket listener on tls.listen as a hosted service of its own type: hosted services are told apart by type,
/// so a second <see cref="SocketListener"/> would be taken for the one on tcp.listen and never started.
/// </summary>
public sealed class TlsListener(SocketListener listener) : IHostedService, IAsyncDisposable
{
    public SocketListener Listener { get; } = listener;

    public Task StartAsync(CancellationToken cancellationToken) => Listener.StartAsync(cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Listener.StopAsync(cancellationToken);

    public ValueTask DisposeAsync() => Listener.DisposeAsync();
}
