using ChatBroker.Storage;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Mqtt;

/// <summary>
/// Mirrors the persistent MQTT sessions and the retained messages into the store's `mqtt` family
/// (<see cref="MqttStateRecords"/>). Memory stays the authority while the broker runs; the store is what a restart
/// reads back.
/// <para>
/// Changes are not written one by one. A change marks its session (or retained topic) as changed, under the session's
/// lock, and gets the task of the next write cycle. One loop at a time takes every marked session and topic, looks at
/// each one's state as it is now (under its lock) and writes what differs from what it stored before — a put for a
/// record that exists, a delete for one that is gone — as one atomic store write, then completes the cycle's task.
/// Because each cycle reads the state as it is and cycles are written one after another, a later cycle always holds a
/// later state: a PUBACK's delete can never be overtaken by the put of the message it acknowledges. Everything
/// marked before a cycle starts is in that cycle, so "my change is durable" is "the task I was given completed".
/// A publish marks the sessions it delivers to before the publisher's own records (QoS 2's packet id), so when the
/// latter is durable the deliveries are too.
/// </para>
/// </summary>
internal sealed class MqttStateWriter(IMqttStateStore store, MqttInstruments instruments, Func<string, MqttMessage?> retained, ILogger? logger)
{
    private readonly Lock _gate = new();
    private List<MqttSessionState> _sessions = [];
    private HashSet<string> _topics = new(StringComparer.Ordinal);
    private TaskCompletionSource _next = NewCycle();
    private bool _running;
    private Task _loop = Task.CompletedTask;

    private static TaskCompletionSource NewCycle() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Marks a session as changed (the caller holds its lock and has noted what changed in its
    /// <see cref="MqttSessionState.Changes"/>); the task completes when the change is durable.</summary>
    public Task MarkSession(MqttSessionState session)
    {
        lock (_gate)
        {
            if (!session.InWriterList)
            {
                session.InWriterList = true;
                _sessions.Add(session);
            }

            return StartLocked();
        }
    }

    /// <summary>Marks a retained topic as changed; the task completes when its record is as the topic is now.</summary>
    public Task MarkRetained(string topic)
    {
        lock (_gate)
        {
            _topics.Add(topic);
            return StartLocked();
        }
    }

    /// <summary>Completes when everything marked so far is written (shutdown).</summary>
    public Task FlushAsync()
    {
        lock (_gate)
        {
            return _loop;
        }
    }

    private Task StartLocked()
    {
        var task = _next.Task;
        if (!_running)
        {
            _running = true;
            _loop = Task.Run(RunAsync);
        }

        return task;
    }

    private async Task RunAsync()
    {
        while (true)
        {
            List<MqttSessionState> sessions;
            HashSet<string> topics;
            TaskCompletionSource done;
            lock (_gate)
            {
                if (_sessions.Count == 0 && _topics.Count == 0)
                {
                    _running = false;
                    return;
                }

                (sessions, _sessions) = (_sessions, []);
                (topics, _topics) = (_topics, new HashSet<string>(StringComparer.Ordinal));
                (done, _next) = (_next, NewCycle());
                foreach (var s in sessions)
                {
                    s.InWriterList = false;
                }
            }

            var writes = new List<MqttStateWrite>();
            try
            {
                foreach (var session in sessions)
                {
                    lock (session.Lock)
                    {
                        Collect(session, writes);
                    }
                }

                foreach (var topic in topics)
                {
                    var key = MqttStateRecords.RetainedKey(topic);
                    writes.Add(retained(topic) is { } message
                        ? MqttStateWrite.Put(key, MqttStateRecords.RetainedValue(message))
                        : MqttStateWrite.Delete(key));
                }

                await store.WriteMqttStateAsync(writes).ConfigureAwait(false);
                instruments.StateWrites.Add(1);
                instruments.StateRecords.Add(writes.Count);
                done.TrySetResult();
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The store refuses writes after an I/O failure (docs/storage.md); the waiters' connections are closed
                // (their PUBACK/PUBREC/SUBACK is never sent), and a restart reads what was stored before.
                instruments.StateWriteFailures.Add(1);
                if (logger is not null)
                {
                    MqttLog.StateWriteFailed(logger, e);
                }

                done.TrySetException(e);
            }
        }
    }

    /// <summary>The writes that bring a session's records to its state now (the caller holds its lock).</summary>
    private static void Collect(MqttSessionState session, List<MqttStateWrite> writes)
    {
        var stored = session.Stored ??= new MqttStoredRecords();
        var changes = session.Changes;
        session.Changes = session.IsStored && !session.Discarded && session.ExpirySeconds > 0 ? new MqttSessionChanges() : null;
        var prefix = MqttStateRecords.SessionPrefix(session.User, session.ClientId);
        if (session.Discarded || session.ExpirySeconds == 0)
        {
            // Ended, or no longer persistent: every record it has goes.
            if (stored.Meta)
            {
                writes.Add(MqttStateWrite.Delete(MqttStateRecords.Key(prefix, MqttStateRecords.MetaKind)));
            }

            if (stored.Subscriptions)
            {
                writes.Add(MqttStateWrite.Delete(MqttStateRecords.Key(prefix, MqttStateRecords.SubscriptionsKind)));
            }

            foreach (var id in stored.Awaiting)
            {
                writes.Add(MqttStateWrite.Delete(MqttStateRecords.AwaitingKey(prefix, id)));
            }

            foreach (var n in stored.Messages)
            {
                writes.Add(MqttStateWrite.Delete(MqttStateRecords.MessageKey(prefix, n)));
            }

            session.Stored = null;
            session.Changes = null;
            return;
        }

        // A session stored for the first time writes everything it holds.
        var all = !stored.Meta;
        if (all || changes?.Meta == true)
        {
            writes.Add(MqttStateWrite.Put(MqttStateRecords.Key(prefix, MqttStateRecords.MetaKind),
                MqttStateRecords.MetaValue(session.ExpirySeconds, session.Connection is null ? session.DisconnectedAtUnixMs : 0)));
            stored.Meta = true;
        }

        if (all || changes?.Subscriptions == true)
        {
            writes.Add(MqttStateWrite.Put(MqttStateRecords.Key(prefix, MqttStateRecords.SubscriptionsKind),
                MqttStateRecords.SubscriptionsValue(session.SubscriptionCount == 0 ? [] : session.Subscriptions)));
            stored.Subscriptions = true;
        }

        var awaiting = all ? (IEnumerable<ushort>?)session.AwaitingRelease?.Keys : changes?.Awaiting;
        foreach (var id in awaiting ?? [])
        {
            if (session.AwaitingRelease?.TryGetValue(id, out var clientMsgId) == true)
            {
                writes.Add(MqttStateWrite.Put(MqttStateRecords.AwaitingKey(prefix, id), MqttStateRecords.AwaitingValue(clientMsgId)));
                stored.Awaiting.Add(id);
            }
            else if (stored.Awaiting.Remove(id))
            {
                writes.Add(MqttStateWrite.Delete(MqttStateRecords.AwaitingKey(prefix, id)));
            }
        }

        if (!all && changes?.Messages is not { Count: > 0 })
        {
            return;
        }

        // The live messages by number: queued ones (QoS 1/2; QoS 0 is never kept across a restart) and those in flight.
        var live = new Dictionary<ulong, (MqttOutgoingStage? Stage, ushort PacketId, byte Qos, MqttMessage Message)>();
        foreach (var q in session.Queued ?? [])
        {
            if (q.Number != 0 && q.Qos > 0)
            {
                live[q.Number] = (null, 0, q.Qos, q.Message);
            }
        }

        foreach (var (id, o) in session.OutgoingOrNull ?? [])
        {
            if (o.Number != 0 && o.Message is not null)
            {
                live[o.Number] = (o.Stage, id, o.Qos, o.Message);
            }
        }

        foreach (var n in all ? (IEnumerable<ulong>)live.Keys : changes!.Messages!)
        {
            if (live.TryGetValue(n, out var m))
            {
                writes.Add(MqttStateWrite.Put(MqttStateRecords.MessageKey(prefix, n), MqttStateRecords.MessageValue(m.Stage, m.PacketId, m.Qos, m.Message)));
                stored.Messages.Add(n);
            }
            else if (stored.Messages.Remove(n))
            {
                writes.Add(MqttStateWrite.Delete(MqttStateRecords.MessageKey(prefix, n)));
            }
        }
    }
}
