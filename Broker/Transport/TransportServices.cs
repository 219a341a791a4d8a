using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using Microsoft.Extensions.DependencyInjection;
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
            services.AddHostedService(sp => sp.GetRequiredService<TlsListener>().Listener);
        }

        if (options.Ws.Listen is not null)
        {
            services.AddSingleton(sp =>
            {
                var certificates = options.Ws.Tls ? sp.GetRequiredService<TlsCertificateSource>() : null;
                certificates?.Watch();
                return new WebSocketListener(
                    options, sp.GetRequiredService<IDeviceConnectionHandler>(), sp.GetRequiredService<BrokerMetrics>(),
                    sp.GetRequiredService<TransportInstruments>(), sp.GetRequiredService<ILoggerFactory>(), certificates);
            });
            services.AddHostedService(sp => sp.GetRequiredService<WebSocketListener>());
        }

        return services;
    }
}

/// <summary>The socket listener on tls.listen, as its own service (the one on tcp.listen is <see cref="SocketListener"/> itself).</summary>
public sealed class TlsListener(SocketListener listener)
{
    public SocketListener Listener { get; } = listener;
}
