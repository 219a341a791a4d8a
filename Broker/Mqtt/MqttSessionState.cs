using System.Buffers;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>An application message of the general topic space (not a chat message: those live in the store).</summary>
internal sealed record MqttMessage(
    string Topic,
    ReadOnlyMemory<byte> Payload,
    byte Qos,
    bool Retain,
    string? Origin,
    List<MqttUserProperty>? UserProperties = null,
    string? ContentType = null,
    string? ResponseTopic = null,
    byte[]? CorrelationData = null,
    MqttPayloadFormatIndicator PayloadFormat = MqttPayloadFormatIndicator.Unspecified,
    uint ExpiryInterval = 0)
{
    public static MqttMessage From(MqttPublishPacket p, string origin) => new(
        p.Topic, p.Payload.ToArray(), (byte)p.QualityOfServiceLevel, p.Retain, origin, p.UserProperties, p.ContentType,
        p.ResponseTopic, p.CorrelationData, p.PayloadFormatIndicator, p.MessageExpiryInterval);
}

/// <summary>Stage of a QoS 1/2 PUBLISH the broker sent and the client has not finished acknowledging.</summary>
internal enum MqttOutgoingStage : byte
{
    AwaitPubAck,
    AwaitPubRec,
    AwaitPubComp,
}

/// <summary>A QoS 1/2 PUBLISH in flight to the client. <see cref="InboxSeq"/> is non-zero for a chat message.</summary>
internal sealed class MqttOutgoing(MqttMessage? message, byte qos, ulong inboxSeq)
{
    public MqttMessage? Message { get; } = message;
    public byte Qos { get; } = qos;
    public ulong InboxSeq { get; } = inboxSeq;
    public MqttOutgoingStage Stage { get; set; } = qos == 2 ? MqttOutgoingStage.AwaitPubRec : MqttOutgoingStage.AwaitPubAck;
}

/// <summary>
/// The state of one MQTT session (MQTT 3.1.1 §3.1.2.4, 5.0 §4.1): its subscriptions, the QoS 1/2 messages in flight
/// both ways and the messages queued for it. Outlives its connection when the session is persistent (clean session
/// false, or a 5.0 session expiry), until mqtt.max_session_expiry. Held in memory (docs/mqtt.md): chat messages are
/// in the store, so a chat client's inbox resumes from its stored cursor even after a restart; the general topic
/// space's queued messages do not survive one.
/// <para>Every field is guarded by <see cref="Lock"/>, which the connection attached to it uses as its own.</para>
/// </summary>
internal sealed class MqttSessionState(string key, string clientId, string user)
{
    public Lock Lock { get; } = new();
    public string Key { get; } = key;
    public string ClientId { get; } = clientId;
    /// <summary>The token's user; empty for an anonymous client.</summary>
    public string User { get; } = user;
    public MqttConnection? Connection { get; set; }
    public List<MqttSubscription> Subscriptions { get; } = [];
    public Dictionary<ushort, MqttOutgoing> Outgoing { get; } = [];
    public Queue<(MqttMessage Message, byte Qos)>? Queued { get; set; }
    /// <summary>Inbound QoS 2 packet ids received and not yet released (PUBREL) [MQTT-4.3.3-2].</summary>
    public HashSet<ushort>? AwaitingRelease { get; set; }
    /// <summary>Inbound chat PUBLISH packet ids not yet acknowledged, and the client_msg_id each SEND carries (idempotency).</summary>
    public Dictionary<ushort, ulong>? ChatInbound { get; set; }
    private ushort _nextPacketId;
    public uint ExpirySeconds { get; set; }
    public long ExpiresAtMs { get; set; } = long.MaxValue;

    /// <summary>A packet id not in use by an outgoing message (the caller has checked the window has room).</summary>
    public ushort NextPacketId()
    {
        do
        {
            _nextPacketId = _nextPacketId == ushort.MaxValue ? (ushort)1 : (ushort)(_nextPacketId + 1);
        }
        while (Outgoing.ContainsKey(_nextPacketId));
        return _nextPacketId;
    }
}
