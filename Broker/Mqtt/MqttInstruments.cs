using System.Diagnostics.Metrics;

namespace ChatBroker.Broker.Mqtt;

/// <summary>Counters of the MQTT listener, on the meter "ChatBroker.Mqtt" (exported with every "ChatBroker*" meter).</summary>
public sealed class MqttInstruments : IDisposable
{
    public const string MeterName = "ChatBroker.Mqtt";

    private readonly Meter _meter;

    public MqttInstruments(string nodeName)
    {
        _meter = new Meter(MeterName, "1.0", [new KeyValuePair<string, object?>("node", nodeName)]);
        Connects = _meter.CreateCounter<long>("chatbroker.mqtt.connects", "{connect}",
            "MQTT CONNECTs by result: ok, bad_credentials, not_authorized, bad_client_id, unsupported_version, malformed.");
        Disconnects = _meter.CreateCounter<long>("chatbroker.mqtt.disconnects", "{disconnect}",
            "MQTT connections ended, by reason: normal, closed, keepalive, protocol_error, too_large, slow_consumer, taken_over, shutdown.");
        MessagesIn = _meter.CreateCounter<long>("chatbroker.mqtt.messages.in", "{message}", "PUBLISH packets accepted, by space: chat (stored as a SEND) or topic.");
        MessagesOut = _meter.CreateCounter<long>("chatbroker.mqtt.messages.out", "{message}", "PUBLISH packets sent, by space: chat (an inbox entry) or topic.");
        Dropped = _meter.CreateCounter<long>("chatbroker.mqtt.dropped", "{message}",
            "Messages not delivered or kept because a bound was hit, by limit: max_queued_messages, max_queued_bytes, max_retained_messages, client_packet_size, refused_topic.");
        Refused = _meter.CreateCounter<long>("chatbroker.mqtt.refused", "{request}",
            "Requests refused with a reason code, by what: subscribe_not_authorized, subscribe_invalid, max_subscriptions, publish_not_authorized, send_refused.");
        Sessions = _meter.CreateUpDownCounter<long>("chatbroker.mqtt.sessions", "{session}", "MQTT sessions held (connected or persistent).");
        QueuedBytes = _meter.CreateUpDownCounter<long>("chatbroker.mqtt.queued", "By", "Bytes of messages queued for MQTT sessions now (mqtt.max_queued_bytes).");
        StateWrites = _meter.CreateCounter<long>("chatbroker.mqtt.state.writes", "{write}", "Store writes of MQTT session state and retained messages (one per cycle of the state writer).");
        StateRecords = _meter.CreateCounter<long>("chatbroker.mqtt.state.records", "{record}", "Records of the store's mqtt family put or deleted.");
        StateWriteFailures = _meter.CreateCounter<long>("chatbroker.mqtt.state.write_failures", "{write}", "Store writes of MQTT state that failed (the connections waiting for them are closed).");
        StateRecordsSkipped = _meter.CreateCounter<long>("chatbroker.mqtt.state.records_skipped", "{record}", "Unreadable records of the store's mqtt family skipped at start.");
    }

    public Counter<long> Connects { get; }
    public Counter<long> Disconnects { get; }
    public Counter<long> MessagesIn { get; }
    public Counter<long> MessagesOut { get; }
    public Counter<long> Dropped { get; }
    public Counter<long> Refused { get; }
    public UpDownCounter<long> Sessions { get; }
    public UpDownCounter<long> QueuedBytes { get; }
    public Counter<long> StateWrites { get; }
    public Counter<long> StateRecords { get; }
    public Counter<long> StateWriteFailures { get; }
    public Counter<long> StateRecordsSkipped { get; }

    internal static KeyValuePair<string, object?> Tag(string name, string value) => new(name, value);

    public void Dispose() => _meter.Dispose();
}
