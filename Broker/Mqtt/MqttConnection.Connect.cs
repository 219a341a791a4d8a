using System.Text;
using ChatBroker.Broker.Sessions;
using ChatBroker.Protocol.Messages;
using ChatBroker.Tokens;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

internal sealed partial class MqttConnection
{
    /// <summary>
    /// CONNECT (3.1.1 §3.1, 5.0 §3.1): the version, then the credentials (password = a device token; the user comes
    /// from the token; no password = anonymous, only with mqtt.allow_anonymous), then the session (clean or resumed,
    /// an older connection of the same client taken over [MQTT-3.1.4-2]). Returns false to close.
    /// </summary>
    private bool HandleConnect(MqttFrameHeader header, ArraySegment<byte> body)
    {
        var instruments = _broker.Instruments;
        if (!_broker.Codec.TryReadProtocolVersion(body, out var version))
        {
            // A known protocol name with a level we do not speak gets return code 0x01 [MQTT-3.1.2-2]; anything else is closed.
            instruments.Connects.Add(1, MqttInstruments.Tag("result", "unsupported_version"));
            if (body.Count >= 6 && body[0] == 0 && body[1] == 4 && body.AsSpan(2, 4).SequenceEqual("MQTT"u8))
            {
                _version = MqttProtocolVersion.V311;
                _outbox = new MqttOutbox(_transport, _broker.Context.Options.Session.MaxOutboundBytes, _lock);
                Write(new MqttConnAckPacket { ReturnCode = MqttConnectReturnCode.ConnectionRefusedUnacceptableProtocolVersion });
            }

            _disconnectReason = "protocol_error";
            return false;
        }

        _version = version;
        MqttConnectPacket connect;
        try
        {
            connect = (MqttConnectPacket)_broker.Codec.Decode(version, header.FixedHeader, body);
        }
        catch (MqttCodecException e) when (e.Message.Contains("MQTT-3.1.3-7", StringComparison.Ordinal))
        {
            // MQTTnet's formatter checks this rule itself; 3.1.1 wants the client told (0x02) [MQTT-3.1.3-9].
            return Refuse("bad_client_id", MqttConnectReturnCode.ConnectionRefusedIdentifierRejected, MqttConnectReasonCode.ClientIdentifierNotValid, "an empty client id needs clean session");
        }
        catch (MqttCodecException e)
        {
            instruments.Connects.Add(1, MqttInstruments.Tag("result", "malformed"));
            Fail("protocol_error", MqttDisconnectReasonCode.MalformedPacket, e.Message, MqttConnectReasonCode.MalformedPacket);
            return false;
        }

        var options = _broker.Options;
        var clientId = connect.ClientId ?? "";
        var assigned = false;
        if (clientId.Length == 0)
        {
            if (!V5 && !connect.CleanSession)
            {
                // 3.1.1: an empty client id needs clean session 1 [MQTT-3.1.3-8].
                return Refuse("bad_client_id", MqttConnectReturnCode.ConnectionRefusedIdentifierRejected, MqttConnectReasonCode.ClientIdentifierNotValid, "an empty client id needs clean session");
            }

            clientId = "auto-" + Guid.NewGuid().ToString("N");
            assigned = true;
        }

        string user;
        if (connect.Password is null or { Length: 0 })
        {
            if (!options.AllowAnonymous)
            {
                return Refuse("not_authorized", MqttConnectReturnCode.ConnectionRefusedNotAuthorized, MqttConnectReasonCode.NotAuthorized,
                    "a device token is required as the password (mqtt.allow_anonymous is off)");
            }

            user = "";
        }
        else
        {
            var token = Encoding.UTF8.GetString(connect.Password);
            // The same checks as the native CONNECT (issue 18): the previous secret during a rotation, and revocation.
            var verified = _broker.Context.Tokens.Verify(token, _broker.Context.Clock.GetUtcNow());
            if (verified.Reason != ReasonCode.Success)
            {
                _broker.Context.Metrics.TokensRefused.Add(1, new KeyValuePair<string, object?>("reason", verified.RefusedAs));
                return Refuse("bad_credentials", MqttConnectReturnCode.ConnectionRefusedBadUsernameOrPassword, MqttConnectReasonCode.BadUserNameOrPassword,
                    verified.Reason == ReasonCode.TokenExpired ? "token expired" : "token not valid");
            }

            var claims = verified.Claims;
            if (TokenVerifier.IsRevoked(_broker.Context.Chat.Store, claims.User, claims.Device ?? clientId, claims.IssuedAt))
            {
                _broker.Context.Metrics.TokensRefused.Add(1, new KeyValuePair<string, object?>("reason", "revoked"));
                return Refuse("not_authorized", MqttConnectReturnCode.ConnectionRefusedNotAuthorized, MqttConnectReasonCode.NotAuthorized,
                    "this device was revoked; sign in again");
            }

            if (!string.IsNullOrEmpty(connect.Username) && connect.Username != claims.User)
            {
                return Refuse("bad_credentials", MqttConnectReturnCode.ConnectionRefusedBadUsernameOrPassword, MqttConnectReasonCode.BadUserNameOrPassword,
                    "the user name is not the token's user");
            }

            if ((claims.Device is not null && claims.Device != clientId) || clientId.StartsWith('#'))
            {
                return Refuse("bad_client_id", MqttConnectReturnCode.ConnectionRefusedIdentifierRejected, MqttConnectReasonCode.ClientIdentifierNotValid,
                    "the client id must be the token's device (and may not start with '#')");
            }

            user = claims.User;
        }

        var key = (user, clientId);
        _user = user;
        _clientId = clientId;
        if (connect.WillFlag)
        {
            if (!MqttTopics.IsValidName(connect.WillTopic) || !MayPublishTo(connect.WillTopic, user))
            {
                return Refuse("not_authorized", MqttConnectReturnCode.ConnectionRefusedNotAuthorized, MqttConnectReasonCode.TopicNameInvalid, "the will topic is not valid here");
            }

            _will = new MqttMessage(connect.WillTopic, connect.WillMessage ?? [], (byte)connect.WillQoS, connect.WillRetain, null,
                connect.WillUserProperties, connect.WillContentType, connect.WillResponseTopic, connect.WillCorrelationData,
                connect.WillPayloadFormatIndicator, connect.WillMessageExpiryInterval);
            _willDelaySeconds = V5 ? connect.WillDelayInterval : 0;
        }

        if (user.Length > 0)
        {
            var outcome = _broker.Context.Registry.Register(this, _broker.Context.Options.Session.MaxDevicesPerUser, out var replaced);
            if (outcome == Messaging.SessionRegistry.RegisterOutcome.TooManyDevices)
            {
                return Refuse("not_authorized", MqttConnectReturnCode.ConnectionRefusedServerUnavailable, MqttConnectReasonCode.QuotaExceeded, "too many devices of this user are online");
            }

            _registered = true;
            _broker.Context.Metrics.Sessions.Add(1); // a device session like a native one (chatbroker_sessions)
            if (replaced is not null && replaced != this)
            {
                replaced.Close(Protocol.Messages.ReasonCode.SessionTakenOver, "this device connected again");
            }
        }

        // The session: clean start discards what was there [MQTT-3.1.2-6]; otherwise it is resumed [MQTT-3.1.2-4].
        var cleanStart = connect.CleanSession;
        uint expiry = V5
            ? connect.SessionExpiryInterval
            : cleanStart ? 0u : uint.MaxValue;
        expiry = (uint)Math.Min(expiry, (ulong)options.MaxSessionExpiry.TotalSeconds);
        MqttSessionState? session = null;
        var present = false;
        while (session is null)
        {
            if (_broker.Sessions.TryGetValue(key, out var existing))
            {
                MqttConnection? previous;
                MqttMessage? pendingWill;
                lock (existing.Lock)
                {
                    previous = existing.Connection;
                    existing.Connection = null;
                    if (previous is not null && !cleanStart && existing.ExpirySeconds > 0)
                    {
                        // This connection continues the session: the old one's will, should it end after this, is not
                        // sent [MQTT-3.1.3-9] (read under this lock by its EndAsync).
                        previous._sessionResumedElsewhere = true;
                    }
                    // A reconnect to the session within the will delay cancels the will [MQTT-3.1.3-9]; a clean start ends
                    // the old session, which sends it.
                    (pendingWill, existing.PendingWill) = (existing.PendingWill, null);
                }

                if (pendingWill is not null && (cleanStart || existing.ExpirySeconds == 0))
                {
                    _ = _broker.Publish(pendingWill);
                }

                previous?.CloseFromBroker("taken_over", MqttDisconnectReasonCode.SessionTakenOver, "another connection with this client id");
                // A session with no expiry ends with its connection, even when that connection is still closing.
                if (cleanStart || existing.ExpirySeconds == 0)
                {
                    if (_broker.Sessions.TryRemove(new KeyValuePair<(string, string), MqttSessionState>(key, existing)))
                    {
                        _broker.Discard(existing);
                    }

                    continue;
                }

                session = existing;
                present = true;
            }
            else
            {
                // Every client id is a session kept up to its expiry: bounded, or a client cycling ids (anonymous
                // ones above all) would grow the table without end. A session that exists is always resumed.
                if (_broker.Sessions.Count >= options.MaxSessions)
                {
                    return Refuse("too_many_sessions", MqttConnectReturnCode.ConnectionRefusedServerUnavailable, MqttConnectReasonCode.QuotaExceeded,
                        $"the broker keeps at most {options.MaxSessions} MQTT sessions (mqtt.max_sessions)");
                }

                var created = new MqttSessionState(clientId, user);
                if (_broker.Sessions.TryAdd(key, created))
                {
                    session = created;
                    _broker.Instruments.Sessions.Add(1);
                }
            }
        }

        if (V5)
        {
            _clientReceiveMaximum = connect.ReceiveMaximum == 0 ? ushort.MaxValue : connect.ReceiveMaximum;
            _clientMaxPacket = connect.MaximumPacketSize;
        }

        // Keepalive: 1.5 x the client's [MQTT-3.1.2-24], capped by session.max_keepalive (5.0 tells the client so).
        var maxKeepalive = (ushort)Math.Min(ushort.MaxValue, _broker.Context.Options.Session.MaxKeepalive.TotalSeconds);
        var keepalive = connect.KeepAlivePeriod == 0 || connect.KeepAlivePeriod > maxKeepalive ? maxKeepalive : connect.KeepAlivePeriod;
        _keepaliveWindowMs = keepalive * 1500L;

        _session = session;
        _lock = session.Lock;
        _outbox = new MqttOutbox(_transport, _broker.Context.Options.Session.MaxOutboundBytes, _lock);
        var connack = new MqttConnAckPacket
        {
            ReturnCode = MqttConnectReturnCode.ConnectionAccepted,
            ReasonCode = MqttConnectReasonCode.Success,
            IsSessionPresent = present,
        };
        if (V5)
        {
            connack.AssignedClientIdentifier = assigned ? clientId : null;
            connack.ReceiveMaximum = (ushort)Math.Min(ushort.MaxValue, _broker.Context.Options.Session.MaxInflightSends);
            connack.MaximumPacketSize = (uint)options.MaxPacketBytes;
            connack.RetainAvailable = true;
            connack.WildcardSubscriptionAvailable = true;
            connack.SubscriptionIdentifiersAvailable = false;
            connack.SharedSubscriptionAvailable = false;
            connack.TopicAliasMaximum = 0;
            connack.MaximumQoS = MqttQualityOfServiceLevel.ExactlyOnce;
            connack.SessionExpiryInterval = expiry != connect.SessionExpiryInterval ? expiry : 0;
            if (keepalive != connect.KeepAlivePeriod)
            {
                connack.ServerKeepAlive = keepalive;
            }
        }

        instruments.Connects.Add(1, MqttInstruments.Tag("result", "ok"));
        lock (_lock)
        {
            session.ExpirySeconds = expiry;
            session.ExpiresAtMs = long.MaxValue;
            session.DisconnectedAtUnixMs = 0;
            session.Connection = this;
            _broker.NoteSessionLocked(session); // a persistent session is stored (or, no longer persistent, its records go)
            WriteLocked(connack);
            ResumeLocked(session); // messages in flight and queued, after CONNACK
        }

        StartInbox(session, cleanStart);
        return true;
    }

    private bool Refuse(string result, MqttConnectReturnCode v3, MqttConnectReasonCode v5, string message)
    {
        _broker.Instruments.Connects.Add(1, MqttInstruments.Tag("result", result));
        _disconnectReason = result;
        _outbox ??= new MqttOutbox(_transport, _broker.Context.Options.Session.MaxOutboundBytes, _lock);
        // A refused CONNECT is answered, then the connection closed [MQTT-3.2.2-5].
        Write(V5 ? new MqttConnAckPacket { ReasonCode = v5, ReasonString = message } : new MqttConnAckPacket { ReturnCode = v3 });
        return false;
    }
}
