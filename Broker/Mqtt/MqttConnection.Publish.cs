using System.Buffers;
using System.Runtime.InteropServices;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

internal sealed partial class MqttConnection
{
    /// <summary>Room kept below tcp.max_frame_bytes for what a DELIVER adds to a body (as the native SEND).</summary>
    private const int DeliverHeadroom = 1024;

    private int _sendsInflight;
    // Made by the first chat PUBLISH (an idle device sends none).
    private RateBuckets? _rates;

    private sealed class RateBuckets
    {
        public Sessions.TokenBucket Sends;
        public Sessions.TokenBucket Bytes;
    }

    private TaskCompletionSource? _sendSlot;
    // The reply to the last chat PUBLISH: each reply waits for the one before, so PUBACKs go out in PUBLISH order [MQTT-4.6.0-2].
    private Task _lastChatReply = Task.CompletedTask;

    /// <summary>Topics a client may publish to in the general space: not $-topics (read-only), not the chat namespace's inbox.</summary>
    private static bool MayPublishTo(string topic, string user)
    {
        _ = user;
        return !topic.StartsWith('$') && !topic.StartsWith("inbox/", StringComparison.Ordinal) && topic != "inbox"
            && !topic.StartsWith("chat/", StringComparison.Ordinal);
    }

    private ValueTask<bool> HandlePublishAsync(MqttPublishPacket publish, byte[] receiveBuffer)
    {
        var qos = (byte)publish.QualityOfServiceLevel;
        if (!MqttTopics.IsValidName(publish.Topic))
        {
            // No topic aliases here (CONNACK says 0), so an empty topic is as invalid as one with wildcards [MQTT-3.3.2-2].
            Fail("protocol_error", MqttDisconnectReasonCode.TopicNameInvalid, "topic name not valid");
            return ValueTask.FromResult(false);
        }

        if (qos == 0 && publish.Dup)
        {
            Fail("protocol_error", MqttDisconnectReasonCode.ProtocolError, "DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]");
            return ValueTask.FromResult(false);
        }

        if (publish.Topic.StartsWith("chat/", StringComparison.Ordinal))
        {
            return HandleChatPublishAsync(publish, qos, receiveBuffer);
        }

        if (!MayPublishTo(publish.Topic, _user))
        {
            return ValueTask.FromResult(RefusePublish(publish, qos, "publish_not_authorized", MqttPubAckReasonCode.NotAuthorized, "this topic is read-only"));
        }

        var message = MqttMessage.From(publish, _session!);
        _broker.Instruments.MessagesIn.Add(1, MqttInstruments.Tag("space", "topic"));
        switch (qos)
        {
            case 0:
                _ = _broker.Publish(message);
                break;
            case 1:
                // PUBACK once the message is durable where it was kept (retained, queues of persistent sessions).
                AcknowledgeWhenStored(_broker.Publish(message), MqttControlPacketType.PubAck, publish.PacketIdentifier);
                break;
            default:
                // QoS 2, "method A" (5.0 §4.3.3): delivered onward at PUBLISH, the packet id kept until PUBREL so a resent
                // PUBLISH is not delivered twice [MQTT-4.3.3-2]; that state is the session's, so it survives a reconnect,
                // and a stored session's, a restart. The deliveries are marked for the store before the packet id, so once
                // the packet id is durable (PUBREC) they are too.
                var packetId = publish.PacketIdentifier;
                bool first;
                lock (_lock)
                {
                    first = _session!.AwaitingRelease?.ContainsKey(packetId) != true;
                    if (first && !HasRoomToReceiveLocked())
                    {
                        return ValueTask.FromResult(false);
                    }
                }

                Task? stored = null;
                if (first)
                {
                    stored = _broker.Publish(message);
                    lock (_lock)
                    {
                        (_session!.AwaitingRelease ??= [])[packetId] = 0;
                        stored = _broker.NoteAwaitingLocked(_session, packetId) ?? stored;
                    }
                }

                AcknowledgeWhenStored(stored, MqttControlPacketType.PubRec, packetId);
                break;
        }

        return ValueTask.FromResult(true);
    }

    /// <summary>
    /// Inbound QoS 2 packet ids awaiting PUBREL are bounded by the Receive Maximum the CONNACK gives
    /// (session.max_inflight_sends) [MQTT-3.3.4-9]; past it the client is cut (5.0: DISCONNECT 0x93). Caller holds the lock.
    /// </summary>
    private bool HasRoomToReceiveLocked()
    {
        if ((_session!.AwaitingRelease?.Count ?? 0) < _broker.Context.Options.Session.MaxInflightSends)
        {
            return true;
        }

        _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", "receive_maximum"));
        _disconnectReason = "protocol_error";
        if (V5)
        {
            WriteLocked(new MqttDisconnectPacket { ReasonCode = MqttDisconnectReasonCode.ReceiveMaximumExceeded, ReasonString = "more QoS 2 messages awaiting PUBREL than the Receive Maximum" });
        }

        Volatile.Write(ref _closing, 1);
        return false;
    }

    /// <summary>Writes an acknowledgement once <paramref name="stored"/> (a state write) completed, in PUBLISH order.</summary>
    private void AcknowledgeWhenStored(Task? stored, MqttControlPacketType type, ushort packetId)
    {
        if (stored is null && _lastChatReply.IsCompleted)
        {
            WriteAcknowledgement(type, packetId);
            return;
        }

        AnswerWhenStored(stored, () => WriteAcknowledgement(type, packetId));
    }

    /// <summary>
    /// Runs <paramref name="answer"/> once <paramref name="stored"/> completed and every earlier answer went out (the
    /// replies of one connection go in the order of its requests [MQTT-4.6.0-2]). A failed state write closes the
    /// connection instead: the client resends what was not acknowledged.
    /// </summary>
    private void AnswerWhenStored(Task? stored, Action answer)
    {
        if ((stored is null || stored.IsCompletedSuccessfully) && _lastChatReply.IsCompleted)
        {
            answer();
            return;
        }

        _lastChatReply = AnswerAfterAsync(_lastChatReply, stored, answer);
    }

    private async Task AnswerAfterAsync(Task previous, Task? stored, Action answer)
    {
        var ok = true;
        if (stored is not null)
        {
            try
            {
                await stored.ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                ok = false;
            }
        }

        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (!ok)
        {
            CloseFromBroker("state_write_failed", MqttDisconnectReasonCode.UnspecifiedError, "the session state could not be stored");
            return;
        }

        answer();
        ScheduleFlush();
    }

    /// <summary>
    /// A PUBLISH the broker will not act on: 5.0 answers with a reason code; 3.1.1 has none, so a QoS 1/2 one closes the
    /// connection rather than acknowledge what was not done (3.1.1 §3.3.5). Returns false to close.
    /// </summary>
    private bool RefusePublish(MqttPublishPacket publish, byte qos, string what, MqttPubAckReasonCode code, string message)
    {
        _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", what));
        if (qos == 0)
        {
            return true;
        }

        if (!V5)
        {
            _disconnectReason = "refused_publish";
            return false;
        }

        if (qos == 1)
        {
            Write(new MqttPubAckPacket { PacketIdentifier = publish.PacketIdentifier, ReasonCode = code, ReasonString = message });
        }
        else
        {
            Write(new MqttPubRecPacket { PacketIdentifier = publish.PacketIdentifier, ReasonCode = (MqttPubRecReasonCode)(int)code, ReasonString = message });
        }

        return true;
    }

    /// <summary>
    /// A PUBLISH to chat/u/{user} or chat/g/{conversation}: a SEND of the token's user from this device, acknowledged
    /// (PUBACK, or PUBREC for QoS 2) only once it is durable. The client_msg_id is fixed per client id and packet id
    /// while that packet id is unacknowledged, so a resent PUBLISH (DUP) is stored once.
    /// </summary>
    private async ValueTask<bool> HandleChatPublishAsync(MqttPublishPacket publish, byte qos, byte[] receiveBuffer)
    {
        if (_user.Length == 0)
        {
            return RefusePublish(publish, qos, "publish_not_authorized", MqttPubAckReasonCode.NotAuthorized, "anonymous clients cannot send chat messages");
        }

        var topic = publish.Topic;
        var slash = topic.IndexOf('/', 5);
        var kind = slash < 0 ? default : topic.AsSpan(5, slash - 5);
        var target = slash < 0 ? "" : topic[(slash + 1)..];
        var send = new Send();
        if (kind is "u" && target.Length > 0 && !target.Contains('/', StringComparison.Ordinal))
        {
            send.ToUserId = target;
        }
        else if (kind is "g" && ulong.TryParse(target, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var conversationId))
        {
            send.ConversationId = conversationId;
        }
        else
        {
            return RefusePublish(publish, qos, "send_refused", MqttPubAckReasonCode.TopicNameInvalid, "chat topics are chat/u/{user} and chat/g/{conversation id}");
        }

        var maxBody = _broker.Context.Options.Tcp.MaxFrameBytes - DeliverHeadroom;
        if (publish.Payload.Length > maxBody)
        {
            return RefusePublish(publish, qos, "send_refused", MqttPubAckReasonCode.QuotaExceeded, $"chat messages are at most {maxBody} bytes");
        }

        // The native per-connection limits (limits.sends_per_second, limits.bytes_per_second). MQTT 3.1.1 has no way to
        // say "later", so the connection is paused (not read) until the bucket allows the message: back-pressure, counted.
        var limits = _broker.Context.Options.Limits;
        var rates = _rates ??= new RateBuckets();
        while (!rates.Sends.TryTake(limits.SendsPerSecond, 1, out var retry) || !rates.Bytes.TryTake(limits.BytesPerSecond, publish.Payload.Length, out retry))
        {
            _broker.Context.Metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "sends"));
            FlushOutbox();
            await Task.Delay(retry).ConfigureAwait(false);
        }

        // MQTTnet's formatter copies a PUBLISH payload into an array of its own (CodecTests checks it): that array becomes
        // the body as it is. Should the payload ever point into the receive buffer (pooled, reused), it is copied.
        send.Body = publish.Payload.IsSingleSegment && MemoryMarshal.TryGetArray(publish.Payload.First, out var payload) && payload.Array != receiveBuffer
            ? UnsafeByteOperations.UnsafeWrap(payload.AsMemory())
            : ByteString.CopyFrom(publish.Payload.IsSingleSegment ? publish.Payload.FirstSpan : publish.Payload.ToArray());
        var packetId = publish.PacketIdentifier;
        Task? cmidStored = null;
        lock (_lock)
        {
            var session = _session!;
            if (qos == 2)
            {
                // QoS 2: the client_msg_id is kept with the packet id until PUBREL (in the store too for a stored session,
                // before the SEND is), so a PUBLISH resent even after a restart is the same SEND, stored once.
                if (session.AwaitingRelease?.TryGetValue(packetId, out var kept) == true)
                {
                    send.ClientMsgId = kept;
                }
                else
                {
                    if (!HasRoomToReceiveLocked())
                    {
                        return false;
                    }

                    send.ClientMsgId = NewClientMsgId();
                    (session.AwaitingRelease ??= [])[packetId] = send.ClientMsgId;
                    cmidStored = _broker.NoteAwaitingLocked(session, packetId);
                }
            }
            else if (qos > 0)
            {
                session.ChatInbound ??= [];
                if (!session.ChatInbound.TryGetValue(packetId, out var id))
                {
                    id = NewClientMsgId();
                    session.ChatInbound[packetId] = id;
                }

                send.ClientMsgId = id;
            }
            else
            {
                send.ClientMsgId = NewClientMsgId();
            }
        }

        if (cmidStored is not null)
        {
            try
            {
                await cmidStored.ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Fail("state_write_failed", MqttDisconnectReasonCode.UnspecifiedError, "the session state could not be stored");
                return false;
            }
        }

        // Bound the SENDs waiting for durability (session.max_inflight_sends): stop reading until one completes.
        while (true)
        {
            Task? wait = null;
            lock (_lock)
            {
                if (_sendsInflight < _broker.Context.Options.Session.MaxInflightSends)
                {
                    _sendsInflight++;
                    break;
                }

                _sendSlot ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _sendSlot.Task;
            }

            FlushOutbox();
            await wait.ConfigureAwait(false);
        }

        var chat = _broker.Context.Chat;
        PreparedSend prepared;
        try
        {
            prepared = await chat.PrepareAsync(this, send, CancellationToken.None).ConfigureAwait(false);
        }
        catch
        {
            ReleaseSendSlot();
            throw;
        }

        if (prepared.Error != ReasonCode.Success)
        {
            ReleaseSendSlot();
            lock (_lock)
            {
                ForgetInboundLocked(packetId, qos);
            }

            var code = prepared.Error is ReasonCode.NotAMember ? MqttPubAckReasonCode.NotAuthorized
                : prepared.Error is ReasonCode.ConversationNotFound ? MqttPubAckReasonCode.TopicNameInvalid
                : MqttPubAckReasonCode.ImplementationSpecificError;
            return RefusePublish(publish, qos, "send_refused", code, prepared.Message ?? prepared.Error.ToString());
        }

        var commit = chat.CommitAsync(this, send, prepared, null, CancellationToken.None);
        _lastChatReply = ReplyAfterCommitAsync(_lastChatReply, commit, packetId, qos);
        return true;
    }

    // client_msg_ids of this connection: a random base (so ids of two connections of one device never meet) plus a counter.
    private ulong _clientMsgIds;

    private ulong NewClientMsgId()
    {
        if (_clientMsgIds == 0)
        {
            Span<byte> bytes = stackalloc byte[8];
            System.Security.Cryptography.RandomNumberGenerator.Fill(bytes);
            _clientMsgIds = (BitConverter.ToUInt64(bytes) & ~0xFFFFFFFFUL) | 1;
        }

        return ++_clientMsgIds;
    }

    private void ReleaseSendSlot()
    {
        TaskCompletionSource? slot;
        lock (_lock)
        {
            _sendsInflight--;
            slot = _sendSlot;
            _sendSlot = null;
        }

        slot?.TrySetResult();
    }

    private async Task ReplyAfterCommitAsync(Task previous, Task<SendOutcome> commit, ushort packetId, byte qos)
    {
        SendOutcome outcome;
        try
        {
            outcome = await commit.ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            outcome = SendOutcome.Refused(ReasonCode.ServerUnavailable, "the message could not be stored");
        }

        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        ReleaseSendSlot();
        if (qos == 0)
        {
            return;
        }

        if (outcome.Error == ReasonCode.Success)
        {
            _broker.Instruments.MessagesIn.Add(1, MqttInstruments.Tag("space", "chat"));
            lock (_lock)
            {
                if (qos == 1)
                {
                    _session!.ChatInbound?.Remove(packetId);
                    WriteAcknowledgementLocked(MqttControlPacketType.PubAck, packetId);
                }
                else
                {
                    WriteAcknowledgementLocked(MqttControlPacketType.PubRec, packetId); // the packet id is kept since PUBLISH
                }
            }
        }
        else
        {
            _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", "send_refused"));
            lock (_lock)
            {
                ForgetInboundLocked(packetId, qos);
            }

            if (!V5)
            {
                CloseFromBroker("refused_publish", MqttDisconnectReasonCode.UnspecifiedError, outcome.Message ?? "");
                return;
            }

            var code = outcome.Error == ReasonCode.RateLimited ? MqttPubAckReasonCode.QuotaExceeded : MqttPubAckReasonCode.UnspecifiedError;
            Write(qos == 1
                ? new MqttPubAckPacket { PacketIdentifier = packetId, ReasonCode = code, ReasonString = outcome.Message }
                : new MqttPubRecPacket { PacketIdentifier = packetId, ReasonCode = (MqttPubRecReasonCode)(int)code, ReasonString = outcome.Message });
        }

        ScheduleFlush();
    }

    /// <summary>A chat PUBLISH that was not stored: its packet id is free again (the caller holds the lock).</summary>
    private void ForgetInboundLocked(ushort packetId, byte qos)
    {
        var session = _session!;
        session.ChatInbound?.Remove(packetId);
        if (qos == 2 && session.AwaitingRelease?.Remove(packetId) == true)
        {
            _broker.NoteAwaitingLocked(session, packetId);
        }
    }

    private void OnPubRel(ushort packetId)
    {
        bool known;
        Task? stored;
        lock (_lock)
        {
            known = _session!.AwaitingRelease?.Remove(packetId) == true;
            _session.ChatInbound?.Remove(packetId);
            // PUBCOMP once the release is durable: after it the client may reuse the packet id for a new message, which a
            // packet id still stored as awaiting release would take for a resend after a restart.
            stored = known ? _broker.NoteAwaitingLocked(_session, packetId) : null;
        }

        if (known || !V5)
        {
            AcknowledgeWhenStored(stored, MqttControlPacketType.PubComp, packetId);
        }
        else
        {
            AnswerWhenStored(null, () => Write(new MqttPubCompPacket { PacketIdentifier = packetId, ReasonCode = MqttPubCompReasonCode.PacketIdentifierNotFound }));
        }
    }

    private void OnPubAck(ushort packetId)
    {
        bool chat;
        lock (_lock)
        {
            var session = _session!;
            if (!session.TryGetOutgoing(packetId, out var outgoing) || outgoing.Stage != MqttOutgoingStage.AwaitPubAck)
            {
                return; // unknown or stale: ignored
            }

            session.RemoveOutgoing(packetId);
            chat = outgoing.InboxSeq != 0;
            _broker.NoteMessageLocked(session, outgoing.Number);
            PumpQueuedLocked(session);
        }

        if (chat)
        {
            AfterInboxProgress();
        }
        else if (_inboxDirty)
        {
            ScheduleCatchUp();
        }
    }

    private void OnPubRec(ushort packetId, MqttPubRecReasonCode reason)
    {
        lock (_lock)
        {
            var session = _session!;
            if (session.TryGetOutgoing(packetId, out var outgoing) && outgoing.Stage == MqttOutgoingStage.AwaitPubRec)
            {
                if ((int)reason >= 0x80)
                {
                    session.RemoveOutgoing(packetId); // 5.0: the client refused it; the exchange ends [MQTT-4.3.3-4]
                    _broker.NoteMessageLocked(session, outgoing.Number);
                    PumpQueuedLocked(session);
                    return;
                }

                outgoing.Stage = MqttOutgoingStage.AwaitPubComp;
                _broker.NoteMessageLocked(session, outgoing.Number);
                WriteLocked(new MqttPubRelPacket { PacketIdentifier = packetId });
            }
            else
            {
                WriteLocked(new MqttPubRelPacket
                {
                    PacketIdentifier = packetId,
                    ReasonCode = V5 ? MqttPubRelReasonCode.PacketIdentifierNotFound : MqttPubRelReasonCode.Success,
                });
            }
        }
    }

    private void OnPubComp(ushort packetId)
    {
        lock (_lock)
        {
            var session = _session!;
            if (session.TryGetOutgoing(packetId, out var outgoing) && outgoing.Stage == MqttOutgoingStage.AwaitPubComp)
            {
                session.RemoveOutgoing(packetId);
                _broker.NoteMessageLocked(session, outgoing.Number);
                PumpQueuedLocked(session);
            }
        }
    }
}
