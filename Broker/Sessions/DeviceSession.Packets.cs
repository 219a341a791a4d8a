using System.Diagnostics;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using ChatBroker.Tokens;
using Google.Protobuf;

namespace ChatBroker.Broker.Sessions;

internal sealed partial class DeviceSession
{
    /// <summary>Room kept in a frame for what a DELIVER adds to a SEND's body (ids, positions, timestamps).</summary>
    internal const int DeliverHeadroom = 1024;

    // Capabilities this version honours.
    private const ulong SupportedCapabilities = (ulong)(Capability.Receipts | Capability.Media | Capability.Typing | Capability.Presence);

    private readonly record struct Handled(ReasonCode Reason, string? Message)
    {
        public static Handled Ok => default;
    }

    // In-flight SENDs: incremented by the read loop, decremented by completions (any thread).
    private int _inflight;
    private TaskCompletionSource? _inflightSlot;

    private ValueTask<Handled> HandleAsync(IMessage message, FrameFlags flags, CancellationToken stopping)
    {
        switch (message)
        {
            case Send send:
                return HandleSendAsync(send, stopping);
            case Ack ack:
                return HandleAckAsync(ack, stopping);
            case Read read:
                return HandleReadAsync(read, stopping);
            case Ping:
                _outbox.TryWrite(new Pong());
                return ValueTask.FromResult(Handled.Ok);
            case Connect connect:
                return ValueTask.FromResult(HandleConnect(connect));
            case Disconnect:
                _ = CloseAsync(null);
                return ValueTask.FromResult(Handled.Ok);
            case Sync sync:
                return HandleSyncAsync(sync);
            case History history:
                return HandleHistoryAsync(history, stopping);
            case PresenceSet presenceSet:
                HandlePresenceSet(presenceSet);
                return ValueTask.FromResult(Handled.Ok);
            case PresenceSubscribe presenceSubscribe:
                return HandlePresenceSubscribeAsync(presenceSubscribe, stopping);
            case Typing typing:
                HandleTyping(typing);
                return ValueTask.FromResult(Handled.Ok);
            case KeysUpload keysUpload:
                return HandleKeysUploadAsync(keysUpload, stopping);
            case FetchKeys fetchKeys:
                return HandleFetchKeysAsync(fetchKeys, stopping);
            case GroupRequest group:
                return HandleGroupRequestAsync(group, stopping);
            case Settings settings:
                return HandleSettingsAsync(settings, stopping);
            default:
                WriteError(ReasonCode.BadRequest, $"{PacketTypes.Of(message)} is not available in this version of the broker", RequestIdOf(message), PacketTypes.Of(message));
                return ValueTask.FromResult(Handled.Ok);
        }
    }

    private Handled HandleConnect(Connect connect)
    {
        var options = _context.Options;
        _context.Metrics.Connects.Add(1);
        if (connect.ProtocolVersion != ProtocolConstants.ProtocolVersion)
        {
            return new(ReasonCode.UnsupportedVersion, $"protocol version {connect.ProtocolVersion} is not supported; this broker speaks {ProtocolConstants.ProtocolVersion}");
        }

        if (connect.MaxFrameSize != 0 && connect.MaxFrameSize < _maxFrameSize)
        {
            // Messages up to the broker's frame size exist and must reach every device: a device that cannot
            // take them could never be delivered to, so it is refused up front rather than starved later.
            return new(ReasonCode.InvalidField, $"max_frame_size must be 0 or at least {_maxFrameSize}: this broker delivers frames up to that size");
        }

        var token = _context.Tokens.Verify(connect.Token, _context.Clock.GetUtcNow());
        if (token.Reason != ReasonCode.Success)
        {
            _context.Metrics.TokensRefused.Add(1, new KeyValuePair<string, object?>("reason", token.RefusedAs));
            return new(token.Reason, token.Message);
        }

        var claims = token.Claims;
        if (claims.User != connect.UserId || (claims.Device is not null && claims.Device != connect.DeviceId))
        {
            return new(ReasonCode.IdentityMismatch, "token was issued for another user or device");
        }

        try
        {
            if (TokenVerifier.IsRevoked(_context.Chat.Store, connect.UserId, connect.DeviceId, claims.IssuedAt))
            {
                _context.Metrics.TokensRefused.Add(1, new KeyValuePair<string, object?>("reason", "revoked"));
                return new(ReasonCode.DeviceRevoked, "this device was revoked; sign in again to get a new token");
            }
        }
        catch (StorageException)
        {
            return new(ReasonCode.ServerUnavailable, "storage is unavailable; retry");
        }

        if (token.ByPreviousSecret)
        {
            _context.Metrics.TokensPreviousSecret.Add(1);
        }

        _user = connect.UserId;
        _device = connect.DeviceId;
        _capabilities = connect.Capabilities & SupportedCapabilities;
        var session = options.Session;
        var keepalive = connect.KeepaliveS == 0 ? session.DefaultKeepalive : TimeSpan.FromSeconds(connect.KeepaliveS);
        keepalive = keepalive < session.MinKeepalive ? session.MinKeepalive : keepalive > session.MaxKeepalive ? session.MaxKeepalive : keepalive;

        if (_context.Registry.Register(this, session.MaxDevicesPerUser, out var replaced) == SessionRegistry.RegisterOutcome.TooManyDevices)
        {
            return new(ReasonCode.TooManyDevices, $"at most {session.MaxDevicesPerUser} devices of a user may be online at once");
        }

        _registered = true;
        _keepaliveWindowMs = (long)(keepalive.TotalMilliseconds * 1.5);
        _context.Metrics.Sessions.Add(1);
        replaced?.Close(ReasonCode.SessionTakenOver, "this device connected again");

        // Read after Register: whatever is committed later notifies this session (see StartCatchUp).
        var lastInboxSeq = _context.Chat.LastInboxSeq(_user);
        _context.Chat.Router?.OnDeviceSession(this, online: true);
        lock (_lock)
        {
            // A device may not claim a position beyond its inbox: it would silently skip what comes next.
            // One that resumes from 0 has nothing, its own messages included (a reinstall keeps the device id).
            _inbox.StartAt(Math.Min(connect.ResumeInboxSeq, lastInboxSeq), connect.ResumeInboxSeq == 0 ? lastInboxSeq : 0);
            _syncPending = true;
            _syncRequestId = 0;
        }

        var connack = new Connack
        {
            Reason = ReasonCode.Success,
            SessionId = _connectionId.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ServerTimeMs = (ulong)_context.Clock.GetUtcNow().ToUnixTimeMilliseconds(),
            KeepaliveS = (uint)keepalive.TotalSeconds,
            MaxFrameSize = (uint)_maxFrameSize,
            Capabilities = _capabilities,
        };
        if (_context.Chat.Router is { } router)
        {
            connack.ClusterNodes.AddRange(router.ClientAddresses); // where the device goes if this node is lost
        }

        _outbox.TryWrite(connack);

        if ((_capabilities & (ulong)Capability.Receipts) != 0 && _context.Chat.Signals is { } signals)
        {
            // Cluster mode: the user's home keeps the receipts for the user; they come when it answers.
            signals.SendStoredReceipts(this, session.MaxResumeReceiptConversations * 2);
        }
        else if ((_capabilities & (ulong)Capability.Receipts) != 0)
        {
            foreach (var receipt in _context.Chat.StoredReceiptsFor(_user, session.MaxResumeReceiptConversations))
            {
                _outbox.TryWrite(receipt);
            }
        }

        SetUpGroupStreams(connect.ResumeConversations); // after CONNACK: nothing may be delivered before it
        StartCatchUp(lastInboxSeq);
        OnSessionOpened();
        return Handled.Ok;
    }

    private async ValueTask<Handled> HandleSendAsync(Send send, CancellationToken stopping)
    {
        var started = Stopwatch.GetTimestamp();
        if (send.Body.Length + (send.Media?.CalculateSize() ?? 0) > _maxFrameSize - DeliverHeadroom)
        {
            // The DELIVER carrying it adds sender ids and positions; it must still fit every device's frame limit.
            WriteError(ReasonCode.BadRequest, $"body too large: at most {_maxFrameSize - DeliverHeadroom} bytes", send.ClientMsgId, PacketType.Send);
            return Handled.Ok;
        }

        if (!ContentTypes.IsClientWritable(send.ContentType))
        {
            // SYSTEM is the server's word about a group; a client-written one would forge it.
            WriteError(ReasonCode.BadRequest, $"content_type {(uint)send.ContentType} is reserved: clients may send 0-9 and 64 and above", send.ClientMsgId, PacketType.Send);
            return Handled.Ok;
        }

        var limits = _context.Options.Limits;
        var rates = Rates;
        if (!rates.Sends.TryTake(limits.SendsPerSecond, 1, out var retry) || !rates.Bytes.TryTake(limits.BytesPerSecond, send.Body.Length, out retry))
        {
            _context.Metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "sends"));
            WriteError(ReasonCode.RateLimited, "send rate limit reached", send.ClientMsgId, PacketType.Send, retry);
            return Handled.Ok;
        }

        if (send.ToUserId.Length > 0 && send.ToUserId != _user && !_context.Chat.DirectExists(_user, send.ToUserId)
            && !_context.Abuse.TryTake(_user, AbuseLimit.NewConversations, 1, out retry))
        {
            // Starting conversations with strangers is what spam does; talking in existing ones is not limited here.
            WriteError(ReasonCode.RateLimited, $"at most {_context.Options.Abuse.NewConversationsPerHour} new conversations per user per hour (abuse.new_conversations_per_hour)", send.ClientMsgId, PacketType.Send, retry);
            return Handled.Ok;
        }

        // Bound the SENDs waiting for durability: stop reading this connection until one completes.
        while (true)
        {
            Task? wait = null;
            lock (_lock)
            {
                if (_inflight < _context.Options.Session.MaxInflightSends)
                {
                    _inflight++;
                    break;
                }

                wait = (_inflightSlot ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
            }

            await wait.WaitAsync(stopping).ConfigureAwait(false);
        }

        PreparedSend prepared;
        try
        {
            prepared = await _context.Chat.PrepareAsync(this, send, stopping).ConfigureAwait(false);
        }
        catch (ArgumentException e)
        {
            ReleaseInflight();
            WriteError(ReasonCode.BadRequest, e.Message, send.ClientMsgId, PacketType.Send);
            return Handled.Ok;
        }
        catch (StorageException)
        {
            ReleaseInflight();
            WriteError(ReasonCode.ServerUnavailable, "storage is unavailable", send.ClientMsgId, PacketType.Send);
            return Handled.Ok;
        }

        if (prepared.Error != ReasonCode.Success)
        {
            ReleaseInflight();
            WriteError(prepared.Error, prepared.Message!, send.ClientMsgId, PacketType.Send);
            return Handled.Ok;
        }

        // The reply's place is taken now, in SEND order: the appends of one commit batch complete on
        // different threads in any order, but docs/protocol.md §5 promises SENTs in the order of the SENDs.
        var reply = new SendReply();
        lock (_lock)
        {
            (_replies ??= new Queue<SendReply>()).Enqueue(reply);
        }

        _ = CompleteSendAsync(send, prepared, started, reply, stopping);
        return Handled.Ok;
    }

    /// <summary>The SENT or ERROR answering one SEND, once known.</summary>
    private sealed class SendReply
    {
        public IMessage? Message;
    }

    // SEND replies not yet written, in SEND order (under _lock; at most session.max_inflight_sends).
    private Queue<SendReply>? _replies;

    private async Task CompleteSendAsync(Send send, PreparedSend prepared, long started, SendReply reply, CancellationToken stopping)
    {
        IMessage answer;
        try
        {
            var outcome = await _context.Chat.CommitAsync(this, send, prepared, _appendCompletions, stopping).ConfigureAwait(false);
            if (outcome.Error != ReasonCode.Success)
            {
                answer = MakeError(outcome.Error, outcome.Message!, send.ClientMsgId, PacketType.Send, outcome.RetryAfter); // e.g. removed meanwhile
            }
            else
            {
                var result = outcome.Result!;
                answer = new Sent
                {
                    ClientMsgId = send.ClientMsgId,
                    ConversationId = result.ConversationId,
                    Seq = result.Seq,
                    TimestampMs = (ulong)result.TimestampMs,
                };
                _context.Metrics.SendLatency.Record(Stopwatch.GetElapsedTime(started).TotalSeconds);
            }
        }
        catch (OperationCanceledException)
        {
            answer = MakeError(ReasonCode.ServerShuttingDown, "the broker is shutting down; retry", send.ClientMsgId, PacketType.Send, TimeSpan.FromSeconds(1));
        }
        catch (ArgumentException e)
        {
            answer = MakeError(ReasonCode.BadRequest, e.Message, send.ClientMsgId, PacketType.Send);
        }
        catch (StorageException)
        {
            // Nothing was acknowledged: the device keeps the message pending and retries it.
            answer = MakeError(ReasonCode.ServerUnavailable, "the message could not be stored; retry", send.ClientMsgId, PacketType.Send, TimeSpan.FromSeconds(1));
        }

        lock (_lock)
        {
            reply.Message = answer;
            // Write every reply that is ready at the head; one still pending holds the later ones back.
            while (_replies!.Count > 0 && _replies.Peek().Message is { } ready)
            {
                _replies.Dequeue();
                _outbox.TryWrite(ready);
            }
        }

        ReleaseInflight();
    }

    private void ReleaseInflight()
    {
        TaskCompletionSource? slot;
        lock (_lock)
        {
            _inflight--;
            slot = _inflightSlot;
            _inflightSlot = null;
        }

        slot?.TrySetResult();
    }

    private async ValueTask<Handled> HandleAckAsync(Ack ack, CancellationToken stopping)
    {
        if (ack.InboxSeq > 0)
        {
            try
            {
                await _context.Chat.AckAsync(this, record: this, ack.InboxSeq, _appendCompletions, stopping).ConfigureAwait(false);
            }
            catch (StorageException)
            {
                WriteError(ReasonCode.ServerUnavailable, "the acknowledgement could not be stored; repeat it", 0, PacketType.Ack);
            }
        }

        if (ack.Conversations.Count > 0)
        {
            await AckConversationsAsync(ack, stopping).ConfigureAwait(false);
        }

        return Handled.Ok;
    }

    private async ValueTask<Handled> HandleReadAsync(Read read, CancellationToken stopping)
    {
        try
        {
            var (error, message) = await _context.Chat.ReadAsync(this, read.ConversationId, read.UpToSeq, _appendCompletions, stopping).ConfigureAwait(false);
            if (error != ReasonCode.Success)
            {
                WriteError(error, message!, read.ConversationId, PacketType.Read);
            }
            else
            {
                _context.Chat.TellOwnRead(this, read.ConversationId, read.UpToSeq);
            }
        }
        catch (StorageException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the read position could not be stored; repeat it", read.ConversationId, PacketType.Read);
        }

        return Handled.Ok;
    }

    private void HandleSync(Sync sync, bool groupsDone)
    {
        // A SYNC naming only large groups leaves the inbox where it is.
        var inbox = sync.InboxSeq != 0 || sync.Conversations.Count == 0;
        if (!groupsDone)
        {
            SyncGroups(sync);
        }

        var lastInboxSeq = inbox ? _context.Chat.LastInboxSeq(_user) : 0;
        lock (_lock)
        {
            if (inbox)
            {
                _inbox.MoveTo(Math.Min(sync.InboxSeq, lastInboxSeq), sync.InboxSeq == 0 ? lastInboxSeq : 0);
            }

            _syncPending = true;
            _syncRequestId = sync.RequestId;
        }

        StartCatchUp(); // SYNC_DONE once every stream named has caught up
    }

    private async ValueTask<Handled> HandleHistoryAsync(History history, CancellationToken stopping)
    {
        try
        {
            var (error, message, page) = await _context.Chat.HistoryAsync(_user, history, _maxFrameSize, stopping).ConfigureAwait(false);
            if (error != ReasonCode.Success)
            {
                WriteError(error, message!, history.RequestId, PacketType.History);
                return Handled.Ok;
            }

            _outbox.TryWrite(page!);
        }
        catch (Exception e) when (e is StorageException or RouteUnavailableException)
        {
            WriteError(ReasonCode.ServerUnavailable, "history is unavailable; retry", history.RequestId, PacketType.History, TimeSpan.FromSeconds(1));
        }

        return Handled.Ok;
    }

    private void WriteError(ReasonCode reason, string message, ulong requestId, PacketType inReplyTo, TimeSpan retryAfter = default) =>
        _outbox.TryWrite(MakeError(reason, message, requestId, inReplyTo, retryAfter));

    private static Error MakeError(ReasonCode reason, string message, ulong requestId, PacketType inReplyTo, TimeSpan retryAfter = default) => new()
    {
        Reason = reason,
        Message = message,
        RequestId = requestId,
        InReplyTo = inReplyTo,
        RetryAfterMs = (uint)Math.Ceiling(retryAfter.TotalMilliseconds),
    };

    private static ulong RequestIdOf(IMessage message) => message switch
    {
        Send s => s.ClientMsgId,
        Sync s => s.RequestId,
        History h => h.RequestId,
        GroupRequest g => g.RequestId,
        PresenceSubscribe p => p.RequestId,
        KeysUpload k => k.RequestId,
        FetchKeys f => f.RequestId,
        Settings s => s.RequestId,
        _ => 0,
    };
}
