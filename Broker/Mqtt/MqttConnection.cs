using System.Buffers;
using System.Net.Sockets;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Transport;
using ChatBroker.Protocol.Messages;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>
/// One MQTT client's connection: reads packets off its transport with <see cref="IMqttPacketCodec"/>, runs CONNECT,
/// keepalive and the packet rules of MQTT 3.1.1/5.0, and serves both spaces: chat topics through the chat core (as a
/// device of the token's user: <see cref="IDeviceLink"/>) and the general topic space through <see cref="MqttBroker"/>.
/// Split by concern: this file is the read loop, CONNECT and the end of the connection;
/// <c>MqttConnection.Publish.cs</c> the packets from the client; <c>MqttConnection.Delivery.cs</c> what goes to it.
/// <para>
/// Memory: like the native session, an idle connection waits for data with no buffer (a zero-byte receive), holds no
/// encoder (the codec pools them) and no outgoing buffer (the outbox returns it once sent).
/// </para>
/// </summary>
internal sealed partial class MqttConnection : IDeviceLink, IThreadPoolWorkItem
{
    private const int ReceiveChunk = 4096;

    private readonly MqttBroker _broker;
    private readonly IDeviceTransport _transport;
    private readonly long _connectionId;
    private readonly IConnectionOwner _owner;
    private MqttProtocolVersion _version;
    // Set by CONNECT: the session (whose lock guards this connection's delivery state too) and the outbox.
    private MqttSessionState? _session;
    private Lock _lock = new();
    private MqttOutbox? _outbox;
    private long _keepaliveWindowMs;
    private long _lastReceivedMs = Environment.TickCount64;
    private int _closing;
    private MqttMessage? _will;
    private uint _willDelaySeconds;
    private int _clientReceiveMaximum = ushort.MaxValue;
    private uint _clientMaxPacket;
    private bool _registered;
    private string _user = "";
    private string _clientId = "";
    private string _disconnectReason = "closed";
    // Set under the session's lock when a new connection took the session over and continues it (no clean start).
    private bool _sessionResumedElsewhere;

    public MqttConnection(MqttBroker broker, IDeviceTransport transport, long connectionId, IConnectionOwner owner)
    {
        _broker = broker;
        _transport = transport;
        _connectionId = connectionId;
        _owner = owner;
    }

    public string UserId => _user;

    public string DeviceId => _clientId;

    public ulong Capabilities => (ulong)Capability.Receipts;

    private bool V5 => _version == MqttProtocolVersion.V500;

    internal bool IsKeepaliveExpired(long nowMs) =>
        _keepaliveWindowMs > 0 && nowMs - Volatile.Read(ref _lastReceivedMs) > _keepaliveWindowMs;

    void IThreadPoolWorkItem.Execute() => _ = RunAsync();

    private async Task RunAsync()
    {
        var handshake = _broker.Context.Handshakes.Next();
        Exception? failure = null;
        byte[]? buffer = null;
        var length = 0;
        try
        {
            while (Volatile.Read(ref _closing) == 0)
            {
                if (length == 0)
                {
                    if (buffer is not null)
                    {
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = null;
                    }

                    if (_session is not null)
                    {
                        handshake = default; // connected: shutdown and keepalive reach it through the listener's sweep
                    }

                    await _transport.WaitReadableAsync(handshake).ConfigureAwait(false);
                    buffer = ArrayPool<byte>.Shared.Rent(ReceiveChunk);
                }
                else if (length == buffer!.Length)
                {
                    var bigger = ArrayPool<byte>.Shared.Rent(buffer.Length * 2);
                    buffer.AsSpan(0, length).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = bigger;
                }

                var received = await _transport.ReceiveAsync(buffer.AsMemory(length), handshake).ConfigureAwait(false);
                if (received == 0)
                {
                    break;
                }

                length += received;
                Volatile.Write(ref _lastReceivedMs, Environment.TickCount64);
                var consumed = await ProcessAsync(buffer, length).ConfigureAwait(false);
                FlushOutbox();
                if (consumed < 0)
                {
                    break;
                }

                length -= consumed;
                if (length > 0 && consumed > 0)
                {
                    buffer.AsSpan(consumed, length).CopyTo(buffer);
                }
            }
        }
        catch (OperationCanceledException)
        {
            _disconnectReason = "connect_timeout";
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
        }
        catch (Exception e)
        {
            failure = e;
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }

            try
            {
                await EndAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                failure ??= e;
            }
            finally
            {
                _transport.Close();
                _owner.Release(_connectionId, failure);
            }
        }
    }

    /// <summary>Handles every whole packet in buffer[0..length); returns the bytes consumed, or -1 to close.</summary>
    private async ValueTask<int> ProcessAsync(byte[] buffer, int length)
    {
        var offset = 0;
        while (Volatile.Read(ref _closing) == 0)
        {
            var status = _broker.Codec.TryReadFrame(buffer.AsSpan(offset, length - offset), _broker.Options.MaxPacketBytes, out var header);
            if (status == MqttFrameStatus.Incomplete)
            {
                return offset;
            }

            if (status == MqttFrameStatus.TooLarge)
            {
                Fail("too_large", MqttDisconnectReasonCode.PacketTooLarge, $"packet larger than mqtt.max_packet_bytes ({_broker.Options.MaxPacketBytes})",
                    MqttConnectReasonCode.PacketTooLarge);
                return -1;
            }

            if (status == MqttFrameStatus.Malformed)
            {
                Fail("protocol_error", MqttDisconnectReasonCode.MalformedPacket, "malformed fixed header", MqttConnectReasonCode.MalformedPacket);
                return -1;
            }

            var body = new ArraySegment<byte>(buffer, offset + header.HeaderLength, header.BodyLength);
            bool ok;
            try
            {
                ok = await HandleAsync(header, body).ConfigureAwait(false);
            }
            catch (MqttCodecException e)
            {
                Fail("protocol_error", MqttDisconnectReasonCode.MalformedPacket, e.Message, MqttConnectReasonCode.MalformedPacket);
                return -1;
            }

            if (!ok)
            {
                return -1;
            }

            offset += header.TotalLength;
        }

        return -1;
    }

    private ValueTask<bool> HandleAsync(MqttFrameHeader header, ArraySegment<byte> body)
    {
        if (_session is null)
        {
            // The first packet must be CONNECT [MQTT-3.1.0-1].
            return ValueTask.FromResult(header.Type == MqttControlPacketType.Connect && header.Flags == 0 && HandleConnect(header, body));
        }

        if (!FlagsAreValid(header))
        {
            // Reserved flag bits are not as the spec fixes them [MQTT-2.2.2-2]: malformed.
            Fail("protocol_error", MqttDisconnectReasonCode.MalformedPacket, $"invalid flags for {header.Type}");
            return ValueTask.FromResult(false);
        }

        switch (header.Type)
        {
            case MqttControlPacketType.Publish:
                return HandlePublishAsync((MqttPublishPacket)_broker.Codec.Decode(_version, header.FixedHeader, body), body.Array!);
            case MqttControlPacketType.PubAck:
                OnPubAck(_broker.Codec.TryReadAcknowledgement(header, body, out var acked)
                    ? acked
                    : ((MqttPubAckPacket)_broker.Codec.Decode(_version, header.FixedHeader, body)).PacketIdentifier);
                return ValueTask.FromResult(true);
            case MqttControlPacketType.PubRec:
                if (_broker.Codec.TryReadAcknowledgement(header, body, out var received))
                {
                    OnPubRec(received, MqttPubRecReasonCode.Success);
                }
                else
                {
                    var pubRec = (MqttPubRecPacket)_broker.Codec.Decode(_version, header.FixedHeader, body);
                    OnPubRec(pubRec.PacketIdentifier, pubRec.ReasonCode);
                }

                return ValueTask.FromResult(true);
            case MqttControlPacketType.PubRel:
                OnPubRel(_broker.Codec.TryReadAcknowledgement(header, body, out var released)
                    ? released
                    : ((MqttPubRelPacket)_broker.Codec.Decode(_version, header.FixedHeader, body)).PacketIdentifier);
                return ValueTask.FromResult(true);
            case MqttControlPacketType.PubComp:
                OnPubComp(_broker.Codec.TryReadAcknowledgement(header, body, out var completed)
                    ? completed
                    : ((MqttPubCompPacket)_broker.Codec.Decode(_version, header.FixedHeader, body)).PacketIdentifier);
                return ValueTask.FromResult(true);
            case MqttControlPacketType.Subscribe:
                return ValueTask.FromResult(HandleSubscribe((MqttSubscribePacket)_broker.Codec.Decode(_version, header.FixedHeader, body)));
            case MqttControlPacketType.Unsubscribe:
                HandleUnsubscribe((MqttUnsubscribePacket)_broker.Codec.Decode(_version, header.FixedHeader, body));
                return ValueTask.FromResult(true);
            case MqttControlPacketType.PingReq:
                Write(new MqttPingRespPacket());
                return ValueTask.FromResult(true);
            case MqttControlPacketType.Disconnect:
                HandleDisconnect(header, body);
                return ValueTask.FromResult(false);
            default:
                // A second CONNECT [MQTT-3.1.0-2], a packet only a server sends, or AUTH (no enhanced authentication here).
                Fail("protocol_error", MqttDisconnectReasonCode.ProtocolError, $"{header.Type} is not allowed from a client now");
                return ValueTask.FromResult(false);
        }
    }

    // Fixed header flags (3.1.1 §2.2.2, 5.0 §2.1.3): PUBREL, SUBSCRIBE, UNSUBSCRIBE 0b0010; PUBLISH its own; others 0.
    private static bool FlagsAreValid(MqttFrameHeader header) => header.Type switch
    {
        MqttControlPacketType.Publish => ((header.Flags >> 1) & 3) != 3, // QoS 3 is malformed [MQTT-3.3.1-4]
        MqttControlPacketType.PubRel or MqttControlPacketType.Subscribe or MqttControlPacketType.Unsubscribe => header.Flags == 2,
        _ => header.Flags == 0,
    };

    private void HandleDisconnect(MqttFrameHeader header, ArraySegment<byte> body)
    {
        var disconnect = (MqttDisconnectPacket)_broker.Codec.Decode(_version, header.FixedHeader, body);
        // A normal DISCONNECT discards the will [MQTT-3.14.4-3]; 5.0's 0x04 asks for it to be published.
        if (!V5 || disconnect.ReasonCode != MqttDisconnectReasonCode.DisconnectWithWillMessage)
        {
            _will = null;
        }

        _disconnectReason = "normal";
        Volatile.Write(ref _closing, 1);
    }

    /// <summary>Writes one packet (the caller flushes). Returns false when the connection is closing.</summary>
    private bool Write(MqttPacket packet)
    {
        lock (_lock)
        {
            return WriteLocked(packet);
        }
    }

    private bool WriteLocked(MqttPacket packet)
    {
        if (_outbox is null || (Volatile.Read(ref _closing) != 0 && packet is not MqttDisconnectPacket and not MqttConnAckPacket))
        {
            return false;
        }

        _broker.Codec.Encode(_version, packet, _outbox);
        return CheckOverflowLocked();
    }

    // Past session.max_outbound_bytes the client is a slow consumer: cut it (it resumes from its cursor).
    private bool CheckOverflowLocked()
    {
        if (!_outbox!.Overflowed)
        {
            return true;
        }

        _disconnectReason = "slow_consumer";
        Volatile.Write(ref _closing, 1);
        ThreadPool.UnsafeQueueUserWorkItem(static c => c._transport.Close(), this, preferLocal: false);
        return false;
    }

    private void WriteAcknowledgement(MqttControlPacketType type, ushort packetId)
    {
        lock (_lock)
        {
            WriteAcknowledgementLocked(type, packetId);
        }
    }

    private void WriteAcknowledgementLocked(MqttControlPacketType type, ushort packetId)
    {
        if (_outbox is not null && Volatile.Read(ref _closing) == 0)
        {
            _broker.Codec.WriteAcknowledgement(type, packetId, _outbox);
        }
    }

    public void FlushOutbox() => _outbox?.Flush();

    /// <summary>Sends what was written from another thread soon, batched with what follows it (<see cref="MqttOutbox.ScheduleFlush"/>).</summary>
    public void ScheduleFlush() => _outbox?.ScheduleFlush();

    /// <summary>
    /// A fatal error: 5.0 says why (CONNACK before CONNECT completed, else DISCONNECT [MQTT-4.13.1-1]); 3.1.1 just closes
    /// the connection [MQTT-4.8.0-1].
    /// </summary>
    private void Fail(string reason, MqttDisconnectReasonCode code, string message, MqttConnectReasonCode connectCode = MqttConnectReasonCode.UnspecifiedError)
    {
        _disconnectReason = reason;
        if (V5)
        {
            if (_session is null)
            {
                _outbox ??= new MqttOutbox(_transport, _broker.Context.Options.Session.MaxOutboundBytes, _lock);
                Write(new MqttConnAckPacket { ReasonCode = connectCode, ReasonString = message });
            }
            else
            {
                Write(new MqttDisconnectPacket { ReasonCode = code, ReasonString = message });
            }
        }

        Volatile.Write(ref _closing, 1);
    }

    /// <summary>Ends the connection from another thread (takeover, keepalive, shutdown), saying why in 5.0.</summary>
    internal void CloseFromBroker(string reason, MqttDisconnectReasonCode code, string message)
    {
        if (Interlocked.Exchange(ref _closing, 1) != 0)
        {
            return;
        }

        _disconnectReason = reason;
        if (V5 && _outbox is not null)
        {
            lock (_lock)
            {
                _broker.Codec.Encode(_version, new MqttDisconnectPacket { ReasonCode = code, ReasonString = message }, _outbox);
            }
        }

        _ = CloseAfterDrainAsync();
    }

    private async Task CloseAfterDrainAsync()
    {
        if (_outbox is not null)
        {
            FlushOutbox();
            await _outbox.DrainAsync().WaitAsync(_broker.Context.Options.Session.DrainTimeout).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        _transport.Close();
    }

    void IDeviceLink.Close(ReasonCode reason, string message) =>
        CloseFromBroker(reason == ReasonCode.SessionTakenOver ? "taken_over" : "closed",
            reason == ReasonCode.SessionTakenOver ? MqttDisconnectReasonCode.SessionTakenOver
            : reason == ReasonCode.ServerShuttingDown ? MqttDisconnectReasonCode.ServerShuttingDown
            : MqttDisconnectReasonCode.AdministrativeAction, message);

    // The read loop ended: send what is queued (a DISCONNECT saying why), publish the will, detach from the session.
    private async Task EndAsync()
    {
        Volatile.Write(ref _closing, 1);
        if (_outbox is not null)
        {
            FlushOutbox();
            await _outbox.DrainAsync().WaitAsync(_broker.Context.Options.Session.DrainTimeout).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            _outbox.Close();
        }

        if (_registered)
        {
            _broker.Context.Registry.Unregister(this);
            _broker.Context.Metrics.Sessions.Add(-1);
        }

        if (_will is { } will && _willDelaySeconds > 0 && _session is { } delayed)
        {
            // 5.0 Will Delay Interval: held by the session, published by the sweep when due or when the session ends.
            _will = null;
            lock (delayed.Lock)
            {
                if (delayed.Connection == this && delayed.ExpirySeconds > 0)
                {
                    delayed.PendingWill = will;
                    delayed.WillDueMs = Environment.TickCount64 + (Math.Min(_willDelaySeconds, delayed.ExpirySeconds) * 1000L);
                }
                else if (!_sessionResumedElsewhere)
                {
                    _will = will; // the session ends with this connection (or a clean start ended it): at once
                }

                // else a new connection took the session over and continues it within the will delay: no will
                // [MQTT-3.1.3-9] (before, a takeover processed ahead of this connection's end sent it at once).
            }
        }

        if (_session is { } session)
        {
            _broker.Instruments.Disconnects.Add(1, MqttInstruments.Tag("reason", _disconnectReason));
            Detach(session);
        }

        if (_will is { } now)
        {
            _will = null;
            _ = _broker.Publish(now);
        }
    }

    private void Detach(MqttSessionState session)
    {
        bool discard;
        lock (session.Lock)
        {
            if (session.Connection != this)
            {
                return; // taken over: the new connection owns the session now
            }

            session.Connection = null;
            // Chat messages in flight are read again from the stored cursor next time: drop them here.
            List<ushort>? chat = null;
            foreach (var (id, outgoing) in session.OutgoingOrNull ?? [])
            {
                if (outgoing.InboxSeq != 0)
                {
                    (chat ??= []).Add(id);
                }
            }

            if (chat is not null)
            {
                foreach (var id in chat)
                {
                    session.RemoveOutgoing(id);
                }
            }

            session.ChatInbound = null;
            discard = session.ExpirySeconds == 0;
            session.ExpiresAtMs = discard ? 0 : Environment.TickCount64 + (session.ExpirySeconds * 1000L);
            session.DisconnectedAtUnixMs = _broker.Context.Clock.GetUtcNow().ToUnixTimeMilliseconds();
            if (!discard)
            {
                _broker.NoteSessionLocked(session); // its expiry counts from now, across a restart too
            }
        }

        if (discard && _broker.Sessions.TryRemove(new KeyValuePair<(string, string), MqttSessionState>(session.Key, session)))
        {
            _broker.Discard(session);
        }
    }
}
