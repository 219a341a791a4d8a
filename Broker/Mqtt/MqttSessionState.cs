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
    MqttSessionState? Origin,
    List<MqttUserProperty>? UserProperties = null,
    string? ContentType = null,
    string? ResponseTopic = null,
    byte[]? CorrelationData = null,
    MqttPayloadFormatIndicator PayloadFormat = MqttPayloadFormatIndicator.Unspecified,
    uint ExpiryInterval = 0)
{
    public static MqttMessage From(MqttPublishPacket p, MqttSessionState origin) => new(
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

/// <summary>
/// A QoS 1/2 PUBLISH in flight to the client. <see cref="InboxSeq"/> is non-zero for a chat message (resumed from the
/// stored cursor, never stored here); <see cref="Number"/> is a general-topic message's number in its session (the key
/// of its record when the session is stored), kept from the queue.
/// </summary>
internal sealed class MqttOutgoing(MqttMessage? message, byte qos, ulong inboxSeq, ulong number = 0)
{
    public MqttMessage? Message { get; } = message;
    public byte Qos { get; } = qos;
    public ulong InboxSeq { get; } = inboxSeq;
    public ulong Number { get; } = number;
    public MqttOutgoingStage Stage { get; set; } = qos == 2 ? MqttOutgoingStage.AwaitPubRec : MqttOutgoingStage.AwaitPubAck;
}

/// <summary>A message waiting in a session's queue; <see cref="Number"/> as <see cref="MqttOutgoing.Number"/>.</summary>
internal readonly record struct MqttQueued(MqttMessage Message, byte Qos, ulong Number);

/// <summary>
/// The state of one MQTT session (MQTT 3.1.1 §3.1.2.4, 5.0 §4.1): its subscriptions, the QoS 1/2 messages in flight
/// both ways and the messages queued for it. Outlives its connection when the session is persistent (clean session
/// false, or a 5.0 session expiry), until mqtt.max_session_expiry. A persistent session is also mirrored in the store
/// (<see cref="MqttStateWriter"/>, docs/mqtt.md "Where the state lives"), so it survives a restart; a clean one is
/// memory only (it ends with its connection anyway).
/// <para>Every field is guarded by <see cref="Lock"/>, which the connection attached to it uses as its own.</para>
/// </summary>
internal sealed class MqttSessionState(string clientId, string user)
{
    public Lock Lock { get; } = new();
    /// <summary>The key in <see cref="MqttBroker.Sessions"/>: a client id is the user's (anonymous: user "").</summary>
    public (string User, string ClientId) Key => (User, ClientId);
    public string ClientId { get; } = clientId;
    /// <summary>The token's user; empty for an anonymous client.</summary>
    public string User { get; } = user;
    // A field so the keepalive sweep can read it without the lock (Volatile.Read).
    public MqttConnection? ConnectionField;

    public MqttConnection? Connection
    {
        get => ConnectionField;
        set => Volatile.Write(ref ConnectionField, value);
    }
    // Made on first use and dropped when empty again: an idle device holds neither (~100 bytes each).
    private List<MqttSubscription>? _subscriptions;
    private Dictionary<ushort, MqttOutgoing>? _outgoing;

    public List<MqttSubscription> Subscriptions => _subscriptions ??= new List<MqttSubscription>(1);

    public int SubscriptionCount => _subscriptions?.Count ?? 0;

    public Dictionary<ushort, MqttOutgoing> Outgoing => _outgoing ??= [];

    /// <summary>The messages in flight, or null when there are none.</summary>
    public Dictionary<ushort, MqttOutgoing>? OutgoingOrNull => _outgoing;

    public int OutgoingCount => _outgoing?.Count ?? 0;

    public bool TryGetOutgoing(ushort id, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out MqttOutgoing? outgoing)
    {
        outgoing = null;
        return _outgoing?.TryGetValue(id, out outgoing) == true;
    }

    public void RemoveOutgoing(ushort id)
    {
        if (_outgoing is not null && _outgoing.Remove(id) && _outgoing.Count == 0)
        {
            _outgoing = null;
        }
    }
    public Queue<MqttQueued>? Queued { get; set; }
    /// <summary>
    /// Inbound QoS 2 packet ids received and not yet released (PUBREL) [MQTT-4.3.3-2], each with the client_msg_id its
    /// chat SEND carries (0 for the general topic space), so a PUBLISH resent even after a restart is the same SEND.
    /// </summary>
    public Dictionary<ushort, ulong>? AwaitingRelease { get; set; }
    /// <summary>Inbound chat PUBLISH packet ids not yet acknowledged, and the client_msg_id each SEND carries (idempotency).</summary>
    public Dictionary<ushort, ulong>? ChatInbound { get; set; }
    private ushort _nextPacketId;
    private ulong _nextNumber;
    public uint ExpirySeconds { get; set; }
    /// <summary>When the session lost its connection (unix ms, for the stored expiry); 0 while connected.</summary>
    public long DisconnectedAtUnixMs { get; set; }
    /// <summary>Set when the session ended (clean start, expiry): its records are deleted.</summary>
    public bool Discarded { get; set; }
    /// <summary>
    /// A 5.0 will whose Will Delay Interval runs (the connection ended without DISCONNECT): published at
    /// <see cref="WillDueMs"/> (tick ms) or when the session ends, whichever is first; dropped when the client
    /// reconnects to this session first [MQTT-3.1.3-9]. Memory only: a restart loses it.
    /// </summary>
    public MqttMessage? PendingWill { get; set; }
    public long WillDueMs { get; set; }
    /// <summary>What changed since the state writer last looked; made once the session is persistent.</summary>
    public MqttSessionChanges? Changes { get; set; }
    /// <summary>Guarded by the state writer's lock: the session is in its list of changed sessions.</summary>
    public bool InWriterList;
    /// <summary>Used only by the state writer's loop (one at a time): which records of this session are stored.</summary>
    public MqttStoredRecords? Stored;

    /// <summary>True when changes must reach the store: persistent now, or stored before (its records must go).</summary>
    public bool IsStored => ExpirySeconds > 0 || Changes is not null;

    /// <summary>The next message number (records of a stored session are keyed by it).</summary>
    public ulong NextNumber() => ++_nextNumber;

    /// <summary>After a load from the store: numbers continue above the stored ones.</summary>
    public void RaiseNumber(ulong number) => _nextNumber = Math.Max(_nextNumber, number);
    public long ExpiresAtMs { get; set; } = long.MaxValue;

    /// <summary>A packet id not in use by an outgoing message (the caller has checked the window has room).</summary>
    public ushort NextPacketId()
    {
        do
        {
            _nextPacketId = _nextPacketId == ushort.MaxValue ? (ushort)1 : (ushort)(_nextPacketId + 1);
        }
        while (_outgoing?.ContainsKey(_nextPacketId) == true);
        return _nextPacketId;
    }
}

/// <summary>What changed in a stored session since the state writer's last cycle (guarded by the session's lock).</summary>
internal sealed class MqttSessionChanges
{
    public bool Meta;
    public bool Subscriptions;
    public HashSet<ulong>? Messages;
    public HashSet<ushort>? Awaiting;
}

/// <summary>The records of a session that are in the store (touched by the state writer's loop only).</summary>
internal sealed class MqttStoredRecords
{
    public bool Meta;
    public bool Subscriptions;
    public HashSet<ulong> Messages { get; } = [];
    public HashSet<ushort> Awaiting { get; } = [];
}
