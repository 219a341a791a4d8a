using System.Collections.Concurrent;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Sessions;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>
/// What every MQTT connection shares: the broker context (chat core, tokens, settings), the codec, the sessions by
/// key, the general topic space (subscription tree and retained messages) and the counters.
/// </summary>
internal sealed class MqttBroker(BrokerContext context, MqttInstruments instruments, IMqttPacketCodec codec)
{
    public BrokerContext Context { get; } = context;
    public MqttOptions Options { get; } = context.Options.Mqtt;
    public MqttInstruments Instruments { get; } = instruments;
    public IMqttPacketCodec Codec { get; } = codec;
    public MqttTopicTree Topics { get; } = new();
    public ConcurrentDictionary<string, MqttSessionState> Sessions { get; } = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, MqttMessage> _retained = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<long, MqttConnection> _connections = new();

    /// <summary>The connection's keepalive sweep set (connections register at CONNECT).</summary>
    public void Track(long id, MqttConnection connection) => _connections[id] = connection;

    public void Untrack(long id) => _connections.TryRemove(id, out _);

    public ICollection<MqttConnection> Connections => _connections.Values;

    /// <summary>Publishes a message of the general topic space: the retained store, then every matching subscription.</summary>
    public void Publish(MqttMessage message)
    {
        if (message.Retain)
        {
            if (message.Payload.IsEmpty)
            {
                _retained.TryRemove(message.Topic, out _); // an empty retained message clears [MQTT-3.3.1-10]
            }
            else if (_retained.Count < Options.MaxRetainedMessages || _retained.ContainsKey(message.Topic))
            {
                _retained[message.Topic] = message;
            }
            else
            {
                Instruments.Dropped.Add(1, MqttInstruments.Tag("limit", "max_retained_messages"));
            }
        }

        var matches = new List<MqttSubscription>();
        Topics.Match(message.Topic, matches);
        // One delivery per session, at the highest QoS its matching filters grant (3.1.1 §3.3.5, 5.0 §3.3.4).
        for (var i = 0; i < matches.Count; i++)
        {
            var sub = matches[i];
            if (sub is null)
            {
                continue;
            }

            var qos = sub.Qos;
            var retainAsPublished = sub.RetainAsPublished;
            var noLocal = sub.NoLocal;
            for (var j = i + 1; j < matches.Count; j++)
            {
                if (matches[j] is { } other && other.Session == sub.Session)
                {
                    qos = Math.Max(qos, other.Qos);
                    retainAsPublished |= other.RetainAsPublished;
                    noLocal &= other.NoLocal;
                    matches[j] = null!;
                }
            }

            if (noLocal && message.Origin == sub.Session.Key)
            {
                continue;
            }

            Deliver(sub.Session, message, Math.Min(qos, message.Qos), retainAsPublished && message.Retain);
        }
    }

    /// <summary>Hands a message to a session: its connection when online, its queue when persistent and offline.</summary>
    public void Deliver(MqttSessionState session, MqttMessage message, byte qos, bool retainFlag)
    {
        MqttConnection? connection;
        lock (session.Lock)
        {
            connection = session.Connection;
            if (connection is null || !connection.TryDeliverLocked(message, qos, retainFlag))
            {
                // Offline, or the in-flight window is full: queue it (QoS 0 too while online, so order holds).
                if (connection is null && qos == 0)
                {
                    return; // QoS 0 to an offline session is not kept
                }

                session.Queued ??= new Queue<(MqttMessage, byte)>();
                if (session.Queued.Count >= Options.MaxQueuedMessages)
                {
                    Instruments.Dropped.Add(1, MqttInstruments.Tag("limit", "max_queued_messages"));
                    return;
                }

                session.Queued.Enqueue((retainFlag ? message : message with { Retain = false }, qos));
                return;
            }
        }

        connection.ScheduleFlush();
    }

    /// <summary>The retained messages matching <paramref name="filter"/>, sent to a new subscription [MQTT-3.3.1-6].</summary>
    public void RetainedMatching(string filter, List<MqttMessage> into)
    {
        foreach (var (topic, message) in _retained)
        {
            if (MqttTopics.Matches(filter, topic))
            {
                into.Add(message);
            }
        }
    }

    /// <summary>Read-only broker information under $SYS (clients may subscribe; nobody may publish there).</summary>
    public void PublishSystemTopics()
    {
        _retained["$SYS/broker/version"] = new MqttMessage("$SYS/broker/version", "chatbroker"u8.ToArray(), 0, true, null);
    }

    /// <summary>Ends sessions whose expiry passed (called by the sweep once a second).</summary>
    public void ExpireSessions(long nowMs)
    {
        foreach (var (key, session) in Sessions)
        {
            lock (session.Lock)
            {
                if (session.Connection is not null || session.ExpiresAtMs > nowMs)
                {
                    continue;
                }
            }

            if (Sessions.TryRemove(new KeyValuePair<string, MqttSessionState>(key, session)))
            {
                Discard(session);
            }
        }
    }

    /// <summary>Removes a session's subscriptions from the tree (it was removed from <see cref="Sessions"/>).</summary>
    public void Discard(MqttSessionState session)
    {
        List<MqttSubscription> subscriptions;
        lock (session.Lock)
        {
            subscriptions = [.. session.Subscriptions];
            session.Subscriptions.Clear();
            session.Queued = null;
        }

        foreach (var s in subscriptions)
        {
            Topics.Remove(session, s.Filter);
        }

        Instruments.Sessions.Add(-1);
    }

    /// <summary>The packet carrying <paramref name="message"/> to a client.</summary>
    public static MqttPublishPacket ToPacket(MqttMessage message, byte qos, bool retain, ushort packetId, bool dup) => new()
    {
        Topic = message.Topic,
        Payload = new System.Buffers.ReadOnlySequence<byte>(message.Payload),
        QualityOfServiceLevel = (MqttQualityOfServiceLevel)qos,
        Retain = retain,
        PacketIdentifier = qos == 0 ? (ushort)0 : packetId,
        Dup = dup && qos > 0,
        UserProperties = message.UserProperties,
        ContentType = message.ContentType,
        ResponseTopic = message.ResponseTopic,
        CorrelationData = message.CorrelationData,
        PayloadFormatIndicator = message.PayloadFormat,
        MessageExpiryInterval = message.ExpiryInterval,
    };
}
