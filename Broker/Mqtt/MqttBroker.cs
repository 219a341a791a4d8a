using System.Collections.Concurrent;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Sessions;
using Microsoft.Extensions.Logging;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>
/// What every MQTT connection shares: the broker context (chat core, tokens, settings), the codec, the sessions by
/// key, the general topic space (subscription tree and retained messages) and the counters.
/// </summary>
internal sealed partial class MqttBroker
{
    public MqttBroker(BrokerContext context, MqttInstruments instruments, IMqttPacketCodec codec, ILogger? logger = null)
    {
        Context = context;
        Options = context.Options.Mqtt;
        Instruments = instruments;
        Codec = codec;
        _logger = logger;
        State = new MqttStateWriter(context.Chat.Store, instruments, t => t.StartsWith('$') ? null : _retained.GetValueOrDefault(t), logger);
    }

    public BrokerContext Context { get; }
    public MqttOptions Options { get; }
    public MqttInstruments Instruments { get; }
    public IMqttPacketCodec Codec { get; }
    public MqttTopicTree Topics { get; } = new();
    public ConcurrentDictionary<(string User, string ClientId), MqttSessionState> Sessions { get; } = new();
    /// <summary>Writes persistent sessions and retained messages to the store (docs/mqtt.md "Where the state lives").</summary>
    public MqttStateWriter State { get; }
    private readonly ConcurrentDictionary<string, MqttMessage> _retained = new(StringComparer.Ordinal);
    private readonly ILogger? _logger;
    // Bytes of messages waiting in session queues (mqtt.max_queued_bytes), all sessions together.
    private long _queuedBytes;
    /// <summary>The connected clients (for the keepalive sweep and shutdown): no table of their own, the sessions know them.</summary>
    public IEnumerable<MqttConnection> Connections
    {
        get
        {
            foreach (var (_, session) in Sessions)
            {
                if (Volatile.Read(ref session.ConnectionField) is { } connection)
                {
                    yield return connection;
                }
            }
        }
    }

    /// <summary>
    /// Publishes a message of the general topic space: the retained store, then every matching subscription. Returns
    /// the task of the store write that makes it durable where it was kept (the retained record, the queues and
    /// in-flight windows of persistent sessions), or null when it was kept nowhere that is stored.
    /// </summary>
    public Task? Publish(MqttMessage message)
    {
        Task? stored = null;
        if (message.Retain)
        {
            if (message.Payload.IsEmpty)
            {
                // an empty retained message clears [MQTT-3.3.1-10]
                if (_retained.TryRemove(message.Topic, out _))
                {
                    stored = State.MarkRetained(message.Topic);
                }
            }
            else if (_retained.Count < Options.MaxRetainedMessages || _retained.ContainsKey(message.Topic))
            {
                _retained[message.Topic] = message with { Origin = null };
                stored = State.MarkRetained(message.Topic);
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

            if (noLocal && message.Origin == sub.Session)
            {
                continue;
            }

            stored = Deliver(sub.Session, message, Math.Min(qos, message.Qos), retainAsPublished && message.Retain) ?? stored;
        }

        return stored;
    }

    /// <summary>
    /// Hands a message to a session: its connection when online, its queue when persistent and offline. Returns the
    /// task of the store write when the session is stored (cycles complete in order, so the last task covers the rest).
    /// </summary>
    public Task? Deliver(MqttSessionState session, MqttMessage message, byte qos, bool retainFlag)
    {
        MqttConnection? connection;
        Task? stored;
        lock (session.Lock)
        {
            connection = session.Connection;
            if (connection is null || !connection.TryDeliverLocked(message, qos, retainFlag, out stored))
            {
                // Offline, or the in-flight window is full: queue it (QoS 0 too while online, so order holds).
                if (connection is null && qos == 0)
                {
                    return null; // QoS 0 to an offline session is not kept
                }

                return EnqueueLocked(session, retainFlag ? message : message with { Retain = false }, qos);
            }
        }

        connection.ScheduleFlush();
        return stored;
    }

    /// <summary>Queues a message for a session (its lock held), within mqtt.max_queued_messages and mqtt.max_queued_bytes.</summary>
    internal Task? EnqueueLocked(MqttSessionState session, MqttMessage message, byte qos)
    {
        session.Queued ??= new Queue<MqttQueued>();
        if (session.Queued.Count >= Options.MaxQueuedMessages)
        {
            Instruments.Dropped.Add(1, MqttInstruments.Tag("limit", "max_queued_messages"));
            return null;
        }

        var bytes = QueuedSize(message);
        if (Interlocked.Add(ref _queuedBytes, bytes) > Options.MaxQueuedBytes)
        {
            Interlocked.Add(ref _queuedBytes, -bytes);
            Instruments.Dropped.Add(1, MqttInstruments.Tag("limit", "max_queued_bytes"));
            return null;
        }

        Instruments.QueuedBytes.Add(bytes);
        var number = qos > 0 ? session.NextNumber() : 0;
        session.Queued.Enqueue(new MqttQueued(message, qos, number));
        return NoteMessageLocked(session, number);
    }

    /// <summary>A message left a session's queue (sent, or the session ended).</summary>
    internal void Dequeued(MqttMessage message)
    {
        var bytes = QueuedSize(message);
        Interlocked.Add(ref _queuedBytes, -bytes);
        Instruments.QueuedBytes.Add(-bytes);
    }

    private static long QueuedSize(MqttMessage message) => message.Payload.Length + (message.Topic.Length * 2L) + 64;

    // ---- what changed in a stored session (the caller holds its lock); each returns the store write's task ----

    internal Task? NoteMessageLocked(MqttSessionState session, ulong number)
    {
        if (number == 0 || !session.IsStored)
        {
            return null;
        }

        var changes = session.Changes ??= new MqttSessionChanges();
        (changes.Messages ??= []).Add(number);
        return State.MarkSession(session);
    }

    internal Task? NoteAwaitingLocked(MqttSessionState session, ushort packetId)
    {
        if (!session.IsStored)
        {
            return null;
        }

        var changes = session.Changes ??= new MqttSessionChanges();
        (changes.Awaiting ??= []).Add(packetId);
        return State.MarkSession(session);
    }

    internal Task? NoteSubscriptionsLocked(MqttSessionState session)
    {
        if (!session.IsStored)
        {
            return null;
        }

        (session.Changes ??= new MqttSessionChanges()).Subscriptions = true;
        return State.MarkSession(session);
    }

    internal Task? NoteSessionLocked(MqttSessionState session)
    {
        if (!session.IsStored && session.Stored is null)
        {
            return null;
        }

        (session.Changes ??= new MqttSessionChanges()).Meta = true;
        return State.MarkSession(session);
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
            MqttMessage? will = null;
            lock (session.Lock)
            {
                if (session.PendingWill is not null && session.Connection is null && session.WillDueMs <= nowMs)
                {
                    (will, session.PendingWill) = (session.PendingWill, null);
                }
            }

            if (will is not null)
            {
                _ = Publish(will); // its Will Delay Interval passed
            }

            lock (session.Lock)
            {
                if (session.Connection is not null || session.ExpiresAtMs > nowMs)
                {
                    continue;
                }
            }

            if (Sessions.TryRemove(new KeyValuePair<(string, string), MqttSessionState>(key, session)))
            {
                Discard(session);
            }
        }
    }

    /// <summary>Removes a session's subscriptions from the tree (it was removed from <see cref="Sessions"/>).</summary>
    public void Discard(MqttSessionState session)
    {
        List<MqttSubscription> subscriptions;
        MqttMessage? will;
        lock (session.Lock)
        {
            (will, session.PendingWill) = (session.PendingWill, null); // the session ends before the will delay: sent now
            subscriptions = session.SubscriptionCount == 0 ? [] : [.. session.Subscriptions];
            session.Subscriptions.Clear();
            foreach (var q in session.Queued ?? [])
            {
                Dequeued(q.Message);
            }

            session.Queued = null;
            session.Discarded = true;
            NoteSessionLocked(session); // a stored session's records are deleted
        }

        foreach (var s in subscriptions)
        {
            Topics.Remove(session, s.Filter);
        }

        if (will is not null)
        {
            _ = Publish(will);
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
