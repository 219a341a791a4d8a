using System.Buffers;
using System.Globalization;
using ChatBroker.Broker.Messaging;
using ChatBroker.Storage;
using Google.Protobuf;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

internal sealed partial class MqttConnection
{
    // Chat inbox delivery (guarded by _lock): the device's position in its inbox. _inboxNext: the last entry handed out
    // (sent, or skipped: the device's own message, or one retention removed); _ackTarget: the position to store as its
    // cursor (everything up to it acknowledged: PUBACK = ACK); _ackStored: what the last ACK stored.
    private bool _inboxStarted;
    private byte _inboxQos;
    private ulong _inboxNext;
    private ulong _ackTarget;
    private ulong _ackStored;
    private bool _ackRunning;
    private bool _catchingUp;
    private bool _inboxDirty;

    /// <summary>How long PUBACKs are gathered into one stored ACK (and its DELIVERED receipts).</summary>
    private static readonly TimeSpan AckCoalescing = TimeSpan.FromMilliseconds(50);

    // The inbox topic of the last conversation delivered: consecutive messages of a chat reuse it.
    private ulong _topicConversation;
    private string? _topic;

    private int Window => Math.Min(_broker.Options.MaxInflight, _clientReceiveMaximum);

    /// <summary>After CONNECT (re)attached a session: messages still in flight go again (DUP) [MQTT-4.4.0-1], then the queue.</summary>
    private void ResumeLocked(MqttSessionState session)
    {
        foreach (var (id, outgoing) in session.OutgoingOrNull ?? [])
        {
            if (outgoing.Message is null)
            {
                continue;
            }

            if (outgoing.Stage == MqttOutgoingStage.AwaitPubComp)
            {
                WriteLocked(new MqttPubRelPacket { PacketIdentifier = id });
            }
            else
            {
                WriteLocked(MqttBroker.ToPacket(outgoing.Message, outgoing.Qos, outgoing.Message.Retain, id, dup: true));
            }
        }

        PumpQueuedLocked(session);
    }

    /// <summary>Sends queued messages while the in-flight window has room.</summary>
    private void PumpQueuedLocked(MqttSessionState session)
    {
        var queue = session.Queued;
        while (queue is { Count: > 0 } && Volatile.Read(ref _closing) == 0)
        {
            var (message, qos, number) = queue.Peek();
            if (qos > 0 && session.OutgoingCount >= Window)
            {
                return;
            }

            queue.Dequeue();
            _broker.Dequeued(message);
            SendLocked(session, message, qos, message.Retain, number);
        }
    }

    /// <summary>Called by <see cref="MqttBroker.Deliver"/> under the session's lock: false when it must be queued;
    /// <paramref name="stored"/>: the store write's task when the session is stored.</summary>
    internal bool TryDeliverLocked(MqttMessage message, byte qos, bool retainFlag, out Task? stored)
    {
        stored = null;
        var session = _session!;
        if (Volatile.Read(ref _closing) != 0 || session.Queued is { Count: > 0 } || (qos > 0 && session.OutgoingCount >= Window))
        {
            return false;
        }

        stored = SendLocked(session, message, qos, retainFlag, qos > 0 ? session.NextNumber() : 0);
        return true;
    }

    private Task? SendLocked(MqttSessionState session, MqttMessage message, byte qos, bool retainFlag, ulong number)
    {
        if (_clientMaxPacket > 0 && message.Payload.Length + message.Topic.Length + 16 > _clientMaxPacket)
        {
            // 5.0: never send a packet larger than the client's Maximum Packet Size; it is discarded [MQTT-3.1.2-25].
            _broker.Instruments.Dropped.Add(1, MqttInstruments.Tag("limit", "client_packet_size"));
            return _broker.NoteMessageLocked(session, number); // a queued record of it goes
        }

        ushort id = 0;
        Task? stored = null;
        if (qos > 0)
        {
            id = session.NextPacketId();
            session.Outgoing[id] = new MqttOutgoing(retainFlag ? message : message with { Retain = false }, qos, 0, number);
            stored = _broker.NoteMessageLocked(session, number);
        }

        WriteLocked(MqttBroker.ToPacket(message, qos, retainFlag, id, dup: false));
        _broker.Instruments.MessagesOut.Add(1, MqttInstruments.Tag("space", "topic"));
        return stored;
    }

    /// <summary>
    /// Starts inbox delivery once the session holds an inbox subscription: a persistent session (clean session false,
    /// or a 5.0 session expiry) resumes from the device's stored cursor, a clean one starts at the inbox's end.
    /// </summary>
    private void StartInbox(MqttSessionState session, bool cleanStart)
    {
        _ = cleanStart;
        if (_user.Length == 0)
        {
            return;
        }

        byte qos = 0;
        var found = false;
        lock (_lock)
        {
            foreach (var s in session.SubscriptionCount == 0 ? [] : session.Subscriptions)
            {
                if (IsInboxFilter(s.Filter))
                {
                    qos = Math.Max(qos, s.Qos);
                    found = true;
                }
            }

            if (!found || _inboxStarted)
            {
                _inboxQos = found ? qos : _inboxQos;
                return;
            }
        }

        // Read after the registry has this device: whatever is committed later notifies it.
        var chat = _broker.Context.Chat;
        var last = chat.LastInboxSeq(_user);
        var start = last;
        if (session.ExpirySeconds > 0)
        {
            start = Math.Min(last, chat.Store.GetCursor(_user, _clientId, CursorStream.Inbox));
        }

        lock (_lock)
        {
            _inboxStarted = true;
            _inboxQos = qos;
            _inboxNext = start;
            _ackTarget = start;
            _ackStored = start;
            _inboxDirty = true;
        }

        ScheduleCatchUp();
    }

    public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message)
    {
        bool delivered;
        lock (_lock)
        {
            if (!_inboxStarted || Volatile.Read(ref _closing) != 0 || inboxSeq <= _inboxNext)
            {
                return;
            }

            delivered = !_catchingUp && inboxSeq == _inboxNext + 1 && (_inboxQos == 0 || _session!.OutgoingCount < Window);
            if (delivered)
            {
                DeliverInboxLocked(inboxSeq, message);
            }
            else
            {
                // Out of order, behind a catch-up, or the window is full: read from the store when there is room.
                _inboxDirty = true;
            }
        }

        if (delivered)
        {
            AfterInboxProgress();
        }
        else
        {
            ScheduleCatchUp();
        }
    }

    private void ScheduleCatchUp()
    {
        lock (_lock)
        {
            if (_catchingUp || !_inboxStarted || !_inboxDirty)
            {
                return;
            }

            _catchingUp = true;
        }

        ThreadPool.UnsafeQueueUserWorkItem(static c => c.CatchUp(), this, preferLocal: false);
    }

    // Reads the inbox after the position and delivers while the window has room; live appends that arrive meanwhile set
    // _inboxDirty, so the loop reads again before it stops: nothing is skipped or sent twice across the seam.
    private void CatchUp()
    {
        var items = new List<DeliveryItem>();
        try
        {
            while (true)
            {
                ulong after;
                int room;
                lock (_lock)
                {
                    room = _inboxQos == 0 ? 256 : Window - _session!.OutgoingCount;
                    if (room <= 0 || !_inboxStarted || Volatile.Read(ref _closing) != 0)
                    {
                        _catchingUp = false; // a PUBACK starts it again (_inboxDirty stays set)
                        return;
                    }

                    _inboxDirty = false;
                    after = _inboxNext;
                }

                items.Clear();
                _broker.Context.Chat.ReadInboxAfter(_user, after, Math.Min(room, 256), items);
                var done = false;
                lock (_lock)
                {
                    foreach (var item in items)
                    {
                        if (item.Position <= _inboxNext)
                        {
                            continue;
                        }

                        DeliverInboxLocked(item.Position, item.Message);
                    }

                    if (items.Count == 0 && !_inboxDirty)
                    {
                        _catchingUp = false;
                        done = true;
                    }
                    else if (items.Count > 0)
                    {
                        _inboxDirty = true; // there may be more after what was read
                    }
                }

                AfterInboxProgress();
                if (done)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            lock (_lock)
            {
                _catchingUp = false;
            }

            CloseFromBroker("closed", MqttDisconnectReasonCode.UnspecifiedError, "the inbox could not be read");
        }
    }

    private void DeliverInboxLocked(ulong inboxSeq, DeliveryMessage? message)
    {
        _inboxNext = inboxSeq;
        if (message is null || message.IsFrom(_user, _clientId) || _broker.Context.Chat.IsExpired(message.TimestampMs))
        {
            return; // nothing to send here: the device sent it itself, or retention removed it
        }

        var session = _session!;
        ushort id = 0;
        if (_inboxQos > 0)
        {
            id = session.NextPacketId();
            session.Outgoing[id] = new MqttOutgoing(null, 1, inboxSeq);
        }

        if (!V5)
        {
            // 3.1.1 has no properties: the PUBLISH is written straight into the outbox.
            if (_outbox is not null && Volatile.Read(ref _closing) == 0)
            {
                _broker.Codec.WritePublish(InboxTopic(message), message.Body.Span, _inboxQos, id, _outbox);
                CheckOverflowLocked();
            }

            _broker.Instruments.MessagesOut.Add(1, MqttInstruments.Tag("space", "chat"));
            _broker.Context.Metrics.MessagesOut.Add(1);
            return;
        }

        var packet = new MqttPublishPacket
        {
            PacketIdentifier = id,
            Topic = InboxTopic(message),
            Payload = new ReadOnlySequence<byte>(message.Body),
            QualityOfServiceLevel = (MqttQualityOfServiceLevel)_inboxQos,
        };
        if (V5)
        {
            // 5.0 user properties carry what a DELIVER carries beside the body.
            var inv = CultureInfo.InvariantCulture;
            packet.UserProperties =
            [
                Prop("seq", message.Seq.ToString(inv)),
                Prop("conversation", message.ConversationId.ToString(inv)),
                Prop("sender", message.SenderUserId),
                Prop("sender_device", message.SenderDeviceId),
                Prop("timestamp_ms", message.TimestampMs.ToString(inv)),
                Prop("inbox_seq", inboxSeq.ToString(inv)),
                Prop("content_type", ((uint)message.ContentType).ToString(inv)),
            ];
        }

        WriteLocked(packet);
        _broker.Instruments.MessagesOut.Add(1, MqttInstruments.Tag("space", "chat"));
        _broker.Context.Metrics.MessagesOut.Add(1);
    }

    private static MqttUserProperty Prop(string name, string value) => new(name, System.Text.Encoding.UTF8.GetBytes(value).AsMemory());

    private string InboxTopic(DeliveryMessage message)
    {
        if (_topic is not null && _topicConversation == message.ConversationId && message.SenderUserId != _user)
        {
            return _topic;
        }

        var topic = BuildInboxTopic(message);
        if (message.SenderUserId != _user)
        {
            (_topicConversation, _topic) = (message.ConversationId, topic);
        }

        return topic;
    }

    private string BuildInboxTopic(DeliveryMessage message)
    {
        var directory = _broker.Context.Directory;
        if (directory.IsGroup(message.ConversationId))
        {
            return "inbox/" + _user + "/g/" + message.ConversationId.ToString(CultureInfo.InvariantCulture);
        }

        var peer = message.SenderUserId;
        if (peer == _user)
        {
            // The user's own message from another device: the topic names the other member.
            foreach (var member in directory.MembersOf(message.ConversationId) ?? [])
            {
                if (member != _user)
                {
                    peer = member;
                    break;
                }
            }
        }

        return "inbox/" + _user + "/u/" + peer;
    }

    /// <summary>Flushes, moves the device's cursor to what is acknowledged (one ACK in flight at a time), and goes on reading.</summary>
    private void AfterInboxProgress()
    {
        ScheduleFlush();
        var start = false;
        lock (_lock)
        {
            var position = _inboxNext;
            foreach (var (_, outgoing) in _session!.OutgoingOrNull ?? [])
            {
                if (outgoing.InboxSeq != 0 && outgoing.InboxSeq - 1 < position)
                {
                    position = outgoing.InboxSeq - 1;
                }
            }

            if (position > _ackTarget)
            {
                _ackTarget = position;
                if (!_ackRunning)
                {
                    _ackRunning = true;
                    start = true;
                }
            }
        }

        if (start)
        {
            _ = AckLoopAsync();
        }

        ScheduleCatchUp();
    }

    private async Task AckLoopAsync()
    {
        try
        {
            while (true)
            {
                ulong target;
                lock (_lock)
                {
                    if (_ackStored >= _ackTarget)
                    {
                        _ackRunning = false;
                        return;
                    }

                    target = _ackTarget;
                }

                await _broker.Context.Chat.AckAsync(this, target).ConfigureAwait(false);
                // PUBACKs arriving meanwhile are stored as one ACK: a store write per PUBACK would cost as much as the
                // messages themselves under load. The cursor is at most AckCoalescing behind (a resume may repeat that).
                await Task.Delay(AckCoalescing).ConfigureAwait(false);
                lock (_lock)
                {
                    _ackStored = target;
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            lock (_lock)
            {
                _ackRunning = false;
            }
        }
    }

    public void OnGroupLogAppended(DeliveryMessage message, bool write)
    {
        // Groups above fanout.write_threshold are read from their log: not served over MQTT (docs/mqtt.md).
    }

    /// <summary>
    /// A delivered/read receipt for this device's user: a QoS 0 PUBLISH on inbox/{user}/receipts (so an inbox subscription
    /// gets it) with a small JSON body, and in 5.0 the same fields as user properties. Not stored for the device: a
    /// reconnecting device is told the latest positions again, as a native one is.
    /// </summary>
    public void OnReceipt(Protocol.Messages.Receipt receipt)
    {
        lock (_lock)
        {
            if (!_inboxStarted || _outbox is null || Volatile.Read(ref _closing) != 0)
            {
                return;
            }

            var inv = CultureInfo.InvariantCulture;
            var kind = receipt.Kind == Protocol.Messages.ReceiptKind.Read ? "read" : "delivered";
            var body = System.Text.Encoding.UTF8.GetBytes(string.Create(inv,
                $"{{\"conversation\":{receipt.ConversationId},\"kind\":\"{kind}\",\"from_seq\":{receipt.FromSeq},\"up_to_seq\":{receipt.UpToSeq},\"reader\":\"{System.Text.Encodings.Web.JavaScriptEncoder.Default.Encode(receipt.ReaderUserId)}\"}}"));
            var topic = "inbox/" + _user + "/receipts";
            if (!V5)
            {
                _broker.Codec.WritePublish(topic, body, 0, 0, _outbox);
            }
            else
            {
                WriteLocked(new MqttPublishPacket
                {
                    Topic = topic,
                    Payload = new ReadOnlySequence<byte>(body),
                    ContentType = "application/json",
                    UserProperties =
                    [
                        Prop("receipt", kind),
                        Prop("conversation", receipt.ConversationId.ToString(inv)),
                        Prop("up_to_seq", receipt.UpToSeq.ToString(inv)),
                        Prop("reader", receipt.ReaderUserId),
                    ],
                });
            }

            CheckOverflowLocked();
        }

        ScheduleFlush();
    }

    public void OnNotice(IMessage packet)
    {
        // Presence and typing are native-only.
    }

    void IDeviceLink.Resync()
    {
        lock (_lock)
        {
            _inboxDirty = true;
        }

        ScheduleCatchUp();
    }
}
