using System.Diagnostics.Metrics;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// Counters of the TLS and WebSocket transports, on the meter "ChatBroker.Transport" (exported with every
/// "ChatBroker*" meter). Connection counts, sessions and protocol errors are the listener's and the session's
/// own, shared by every transport (<see cref="Observability.BrokerMetrics"/>).
/// </summary>
public sealed class TransportInstruments : IDisposable
{
    public const string MeterName = "ChatBroker.Transport";

    private readonly Meter _meter;

    public TransportInstruments(string nodeName)
    {
        _meter = new Meter(MeterName, "1.0", [new KeyValuePair<string, object?>("node", nodeName)]);
        TlsHandshakes = _meter.CreateCounter<long>("chatbroker.tls.handshakes", "{handshake}",
            "TLS handshakes on tls.listen by result: ok, failed (not TLS, no common version or ALPN, reset), timeout (tls.handshake_timeout).");
        TlsReloads = _meter.CreateCounter<long>("chatbroker.tls.reloads", "{reload}",
            "Certificate reloads by result: ok (replaced), unchanged (same certificate), failed (the files could not be read or did not match; the previous certificate stays).");
        WsUpgrades = _meter.CreateCounter<long>("chatbroker.ws.upgrades", "{request}",
            "Requests to the WebSocket listener by result: ok, bad_origin (HTTP 403), not_websocket (HTTP 400), bad_path (HTTP 404).");
        WsRefused = _meter.CreateCounter<long>("chatbroker.ws.refused", "{connection}",
            "WebSocket connections closed for breaking the framing rule, by reason: split_frame (a frame spanned two messages), text_message.");
    }

    public Counter<long> TlsHandshakes { get; }
    public Counter<long> TlsReloads { get; }
    public Counter<long> WsUpgrades { get; }
    public Counter<long> WsRefused { get; }

    internal static KeyValuePair<string, object?> Result(string result) => new("result", result);

    public void Dispose() => _meter.Dispose();
}
