using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Mqtt;

internal sealed partial class MqttBroker
{
    /// <summary>
    /// Reads the persistent sessions and retained messages back from the store (at start, before the listener
    /// accepts). A session's expiry counts from when it lost its connection (from now when the broker stopped while it
    /// was connected); one that expired while the broker was down is deleted. An unreadable record is skipped, logged
    /// and counted, never fatal.
    /// </summary>
    public void LoadState()
    {
        var store = Context.Chat.Store;
        var nowUnixMs = Context.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        var nowTicks = Environment.TickCount64;
        MqttSessionState? session = null;
        byte[]? sessionPrefix = null;
        int sessions = 0, messages = 0, retained = 0, expired = 0;
        var outgoing = new List<(ushort Id, MqttOutgoing Outgoing)>();

        void Finish()
        {
            if (session is null)
            {
                return;
            }

            lock (session.Lock)
            {
                foreach (var (id, o) in outgoing)
                {
                    session.Outgoing[id] = o;
                }

                outgoing.Clear();
                if (session.Stored!.Meta && session.ExpiresAtMs > nowTicks)
                {
                    Sessions[session.Key] = session;
                    Instruments.Sessions.Add(1);
                    foreach (var s in session.SubscriptionCount == 0 ? [] : session.Subscriptions)
                    {
                        if (s.Filter != "inbox" && !s.Filter.StartsWith("inbox/", StringComparison.Ordinal))
                        {
                            Topics.Add(s);
                        }
                    }

                    sessions++;
                    return;
                }

                // Expired while the broker was down, or its records are incomplete: delete them.
                expired++;
                foreach (var q in session.Queued ?? [])
                {
                    Dequeued(q.Message);
                }

                session.Queued = null;
                session.Discarded = true;
                (session.Changes ??= new MqttSessionChanges()).Meta = true;
                State.MarkSession(session);
            }
        }

        store.ReadMqttState([MqttStateRecords.SessionTag], (key, value) =>
        {
            try
            {
                var (user, clientId, prefixLength) = MqttStateRecords.ReadSessionKey(key);
                if (session is null || !key[..prefixLength].SequenceEqual(sessionPrefix))
                {
                    Finish();
                    session = new MqttSessionState(clientId, user) { Stored = new MqttStoredRecords() };
                    sessionPrefix = key[..prefixLength].ToArray();
                }

                var rest = key[prefixLength..];
                var stored = session.Stored!;
                switch (rest.IsEmpty ? -1 : rest[0])
                {
                    case MqttStateRecords.MetaKind:
                        var (expiry, disconnectedAt) = MqttStateRecords.ReadMeta(value);
                        var left = (expiry * 1000L) - (disconnectedAt == 0 ? 0 : Math.Max(0, nowUnixMs - disconnectedAt));
                        session.ExpirySeconds = expiry;
                        session.DisconnectedAtUnixMs = disconnectedAt == 0 ? nowUnixMs : disconnectedAt;
                        session.ExpiresAtMs = nowTicks + left;
                        stored.Meta = true;
                        break;
                    case MqttStateRecords.SubscriptionsKind:
                        foreach (var (filter, qos, noLocal, rap, id) in MqttStateRecords.ReadSubscriptions(value))
                        {
                            if (MqttTopics.IsValidFilter(filter) && qos <= 2 && session.SubscriptionCount < Options.MaxSubscriptions)
                            {
                                session.Subscriptions.Add(new MqttSubscription(session, filter, qos, noLocal, rap, id));
                            }
                        }

                        stored.Subscriptions = true;
                        break;
                    case MqttStateRecords.AwaitingKind:
                        var packetId = MqttStateRecords.ReadU16(rest[1..]);
                        (session.AwaitingRelease ??= [])[packetId] = MqttStateRecords.ReadU64(value);
                        stored.Awaiting.Add(packetId);
                        break;
                    case MqttStateRecords.MessageKind:
                        var number = MqttStateRecords.ReadU64(rest[1..]);
                        var (stage, id2, qos2, message) = MqttStateRecords.ReadMessage(value);
                        stored.Messages.Add(number);
                        session.RaiseNumber(number);
                        messages++;
                        if (stage is { } s2 && id2 != 0)
                        {
                            outgoing.Add((id2, new MqttOutgoing(message, qos2, 0, number) { Stage = s2 }));
                        }
                        else
                        {
                            (session.Queued ??= new Queue<MqttQueued>()).Enqueue(new MqttQueued(message, qos2, number));
                            var bytes = QueuedSize(message);
                            Interlocked.Add(ref _queuedBytes, bytes);
                            Instruments.QueuedBytes.Add(bytes);
                        }

                        break;
                    default:
                        throw new FormatException("unknown session record kind");
                }
            }
            catch (Exception e) when (e is FormatException or ArgumentException)
            {
                Instruments.StateRecordsSkipped.Add(1);
                if (_logger is not null)
                {
                    MqttLog.StateRecordSkipped(_logger, e.Message);
                }
            }
        });
        Finish();

        store.ReadMqttState([MqttStateRecords.RetainedTag], (key, value) =>
        {
            try
            {
                var message = MqttStateRecords.ReadRetained(value);
                if (_retained.Count < Options.MaxRetainedMessages)
                {
                    _retained[message.Topic] = message;
                    retained++;
                }
            }
            catch (Exception e) when (e is FormatException or ArgumentException)
            {
                Instruments.StateRecordsSkipped.Add(1);
                if (_logger is not null)
                {
                    MqttLog.StateRecordSkipped(_logger, e.Message);
                }
            }
        });

        if (_logger is not null && (sessions + retained + expired) > 0)
        {
            MqttLog.StateLoaded(_logger, sessions, messages, retained, expired);
        }
    }
}
