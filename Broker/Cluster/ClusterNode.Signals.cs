using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Receipts, presence, typing, keys and push jobs across nodes (docs/cluster.md, "Receipts" to "Push jobs"). The
/// rule is the ring's: a conversation's owner knows its members, so it checks and records READ and decides who a
/// receipt goes to; a user's home keeps the user's receipts, presence, device table and keys, and tells the user's
/// devices at whichever gateway they are connected; a gateway keeps nothing.
/// </summary>
public sealed partial class ClusterNode : ISignalRouter
{
    private readonly Lock _signalsLock = new();
    // Home: devices of users whose home is here, connected at other nodes, as the presence service counts them
    // ("user\ndevice" → the link it counts). Mirrors _remoteDevices.
    private readonly ConcurrentDictionary<string, RemoteDevice> _presenceDevices = new(StringComparer.Ordinal);
    // Home: sessions at other nodes subscribed to presence here ("gateway\nwatch id" → the subscriber it stands for).
    private readonly ConcurrentDictionary<string, RemoteSubscriber> _watchers = new(StringComparer.Ordinal);
    // Gateway: the id each subscribing session goes by at the homes of the users it watches.
    private readonly ConditionalWeakTable<IDeviceLink, StrongBox<long>> _watchIds = [];
    private long _nextWatchId;
    private PresenceService? _presence;
    private TypingRelay? _typing;
    private KeyDirectory? _keys;

    /// <summary>Counters of receipts, presence, typing and keys across nodes.</summary>
    public SignalMetrics SignalMetrics { get; } = new();

    /// <summary>Lets presence, typing and keys route through this node (called once, before the node serves
    /// devices). Receipts and push jobs need only the messaging core, which this node routes from its creation.</summary>
    public void UseSignals(PresenceService presence, TypingRelay typing, KeyDirectory keys)
    {
        ArgumentNullException.ThrowIfNull(presence);
        ArgumentNullException.ThrowIfNull(typing);
        ArgumentNullException.ThrowIfNull(keys);
        _presence = presence;
        _typing = typing;
        _keys = keys;
        presence.UseRouter(this);
        typing.UseRouter(this);
        keys.UseRouter(this);
    }

    // ---- receipts ----

    public async Task<(ReasonCode Error, string? Message)> ReadRemoteAsync(IDeviceLink device, ulong conversationId, ulong upToSeq, CancellationToken cancellationToken)
    {
        var s = State;
        var request = new ReadReceipt { User = device.UserId, Device = device.DeviceId, ConversationId = conversationId, UpToSeq = upToSeq };
        try
        {
            var reply = SignalResult.Parser.ParseFrom(await ReadFromAsync(s, s?.OwnerOf(conversationId), ClusterOpKind.ReadReceipt, request.ToByteArray(), cancellationToken).ConfigureAwait(false));
            return reply.Reason == 0 ? (ReasonCode.Success, null) : ((ReasonCode)reply.Reason, reply.Message);
        }
        catch (RouteUnavailableException)
        {
            return (ReasonCode.ServerUnavailable, "the node that owns this conversation is unreachable; repeat the READ");
        }
    }

    public void ReportDelivered(string reader, ulong conversationId, ulong upToSeq)
    {
        var s = State;
        var owner = s?.OwnerOf(conversationId);
        if (s is null || owner is null)
        {
            return;
        }

        if (string.Equals(owner, NodeId, StringComparison.Ordinal))
        {
            _ = RecordReportSafelyAsync(reader, conversationId, upToSeq, _stop.Token); // the map moved it here meanwhile
            return;
        }

        // Lost only with this node (a crash before the link sent it): receipts are positions, the next one covers it.
        Count(s.LinkOf(owner)?.Signals?.TryPost(ClusterOpKind.DeliveredReport, s.Epoch, new DeliveredReport { Reader = reader, ConversationId = conversationId, UpToSeq = upToSeq }.ToByteArray()) == true);
    }

    public void RouteReceipt(string userId, Receipt receipt)
    {
        var s = State;
        var home = s?.HomeOf(userId);
        if (s is null || home is null)
        {
            return;
        }

        Interlocked.Increment(ref SignalMetrics.ReceiptsRouted);
        if (string.Equals(home, NodeId, StringComparison.Ordinal))
        {
            _ = KeepReceiptSafelyAsync(userId, receipt, _stop.Token);
            return;
        }

        Count(s.LinkOf(home)?.Signals?.TryPost(ClusterOpKind.ReceiptForUser, s.Epoch, new ReceiptForUser { User = userId, Receipt = receipt.ToByteString() }.ToByteArray()) == true);
    }

    public void SendStoredReceipts(IDeviceLink device, int limit)
    {
        limit = Math.Min(limit, 1024); // one mesh reply's worth
        var s = State;
        var home = s?.HomeOf(device.UserId);
        if (s is null || home is null || limit <= 0)
        {
            return;
        }

        if (string.Equals(home, NodeId, StringComparison.Ordinal))
        {
            // Written now, right after CONNACK, as on one node.
            foreach (var kept in _chat.Store.ListReceipts(device.UserId, limit))
            {
                device.OnReceipt(ToReceipt(kept));
            }

            return;
        }

        _ = SendRemoteReceiptsAsync(s, home, device, limit);
    }

    private async Task SendRemoteReceiptsAsync(RoutingState s, string home, IDeviceLink device, int limit)
    {
        try
        {
            var request = new StoredReceiptsRequest { User = device.UserId, Limit = (uint)limit }.ToByteArray();
            var list = StoredReceiptList.Parser.ParseFrom(await ReadFromAsync(s, home, ClusterOpKind.StoredReceipts, request, _stop.Token).ConfigureAwait(false));
            foreach (var body in list.Receipts)
            {
                device.OnReceipt(Receipt.Parser.ParseFrom(body));
            }
        }
        catch (Exception e) when (e is RouteUnavailableException or InvalidProtocolBufferException or OperationCanceledException)
        {
            // Receipts are positions: the next receipt of the conversation tells the device as much.
            Interlocked.Increment(ref SignalMetrics.StoredReceiptReadsFailed);
        }
    }

    private static Receipt ToReceipt(StoredReceipt kept) => new()
    {
        ConversationId = kept.ConversationId,
        Kind = kept.Read ? ReceiptKind.Read : ReceiptKind.Delivered,
        UpToSeq = kept.UpToSeq,
        ReaderUserId = kept.ReaderUserId,
    };

    /// <summary>Home: keeps a receipt for the user (forward only), then tells the user's devices here and at other
    /// gateways. A receipt that moves nothing (a resend, an older one) is not told again.</summary>
    private async Task KeepReceiptAsync(string userId, Receipt receipt, CancellationToken cancellationToken)
    {
        var previous = await _chat.Store.StoreReceiptAsync(userId, receipt.ConversationId, receipt.ReaderUserId, receipt.Kind == ReceiptKind.Read, receipt.UpToSeq, cancellationToken).ConfigureAwait(false);
        if (previous >= receipt.UpToSeq)
        {
            return;
        }

        Interlocked.Increment(ref SignalMetrics.ReceiptsStored);
        NotifyHere(userId, null, NoticeKind.NoticeReceipt, receipt);
        if (State is { } s)
        {
            NotifyRemoteDevices(s, userId, null, NoticeKind.NoticeReceipt, receipt);
        }
    }

    private async Task KeepReceiptSafelyAsync(string userId, Receipt receipt, CancellationToken cancellationToken)
    {
        try
        {
            await KeepReceiptAsync(userId, receipt, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is StorageException or ArgumentException or OperationCanceledException)
        {
            Interlocked.Increment(ref SignalMetrics.ReceiptsFailed);
        }
    }

    private async Task RecordReportSafelyAsync(string reader, ulong conversationId, ulong upToSeq, CancellationToken cancellationToken)
    {
        try
        {
            await _chat.RecordDeliveredReportAsync(reader, conversationId, upToSeq, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is StorageException or ArgumentException or OperationCanceledException)
        {
            Interlocked.Increment(ref SignalMetrics.ReceiptsFailed);
        }
    }

    // ---- keys ----

    public async Task<KeyDirectory.Outcome<KeysUploaded>> UploadKeysAsync(IDeviceLink device, KeysUpload upload, CancellationToken cancellationToken)
    {
        var s = State;
        var request = new KeysUploadRequest { User = device.UserId, Device = device.DeviceId, Upload = upload.ToByteString() }.ToByteArray();
        // RouteUnavailableException when the home does not answer: the session answers SERVER_UNAVAILABLE.
        var reply = SignalResult.Parser.ParseFrom(await ReadFromAsync(s, s?.HomeOf(device.UserId), ClusterOpKind.KeysUpload, request, cancellationToken).ConfigureAwait(false));
        return reply.Reason == 0
            ? new(ReasonCode.Success, null, KeysUploaded.Parser.ParseFrom(reply.Body))
            : new((ReasonCode)reply.Reason, reply.Message, null);
    }

    public async Task<KeyDirectory.Outcome<KeyBundle>> FetchKeysAsync(FetchKeys fetch, int maxFrameBytes, CancellationToken cancellationToken)
    {
        var s = State;
        var request = new FetchKeysRequest { Fetch = fetch.ToByteString(), MaxFrameBytes = (uint)Math.Max(0, maxFrameBytes) }.ToByteArray();
        var reply = SignalResult.Parser.ParseFrom(await ReadFromAsync(s, s?.HomeOf(fetch.UserId), ClusterOpKind.FetchKeys, request, cancellationToken).ConfigureAwait(false));
        return reply.Reason == 0
            ? new(ReasonCode.Success, null, KeyBundle.Parser.ParseFrom(reply.Body))
            : new((ReasonCode)reply.Reason, reply.Message, null);
    }

    // ---- what other nodes ask ----

    /// <summary>One operation of 40–59: checked against this node's map like every other (a user's operation on its
    /// home, a conversation's on its owner; STALE_EPOCH naming the right node otherwise).</summary>
    private Task? HandleSignal(MeshInboundBatch batch, int index, MeshInboundMessage message, RoutingState s, CancellationToken cancellationToken)
    {
        var payload = message.Payload.Span;
        switch ((ClusterOpKind)message.Kind)
        {
            case ClusterOpKind.ReadReceipt:
            {
                var read = ReadReceipt.Parser.ParseFrom(payload);
                RequireIds(read.User, read.Device);
                return RefusedUnlessOwner(batch, index, s, read.ConversationId) ? null : ReadForGatewayAsync(batch, index, read, cancellationToken);
            }

            case ClusterOpKind.DeliveredReport:
            {
                var report = DeliveredReport.Parser.ParseFrom(payload);
                RequireIds(report.Reader, "-");
                // A store failure fails the stream and the report comes again (acked = recorded).
                return RefusedUnlessOwner(batch, index, s, report.ConversationId) ? null : _chat.RecordDeliveredReportAsync(report.Reader, report.ConversationId, report.UpToSeq, cancellationToken);
            }

            case ClusterOpKind.ReceiptForUser:
            {
                var forUser = ReceiptForUser.Parser.ParseFrom(payload);
                var receipt = Receipt.Parser.ParseFrom(forUser.Receipt);
                RequireIds(forUser.User, receipt.ReaderUserId);
                if (receipt.ConversationId == 0 || receipt.UpToSeq == 0)
                {
                    throw new ArgumentException("a receipt names a conversation and a position");
                }

                // A store failure fails the stream and the receipt comes again (acked = stored).
                return RefusedUnlessHome(batch, index, s, forUser.User) ? null : KeepReceiptAsync(forUser.User, receipt, cancellationToken);
            }

            case ClusterOpKind.StoredReceipts:
            {
                var request = StoredReceiptsRequest.Parser.ParseFrom(payload);
                RequireIds(request.User, "-");
                if (!RefusedUnlessHome(batch, index, s, request.User))
                {
                    var list = new StoredReceiptList { Answered = true };
                    foreach (var kept in _chat.Store.ListReceipts(request.User, (int)Math.Clamp(request.Limit, 1, 1024)))
                    {
                        list.Receipts.Add(ToReceipt(kept).ToByteString());
                    }

                    batch.Reply(index, list.ToByteArray());
                }

                return null;
            }

            case ClusterOpKind.DeviceNotice:
            {
                var notice = DeviceNotice.Parser.ParseFrom(payload);
                NotifyHere(notice.User, notice.Device.Length == 0 ? null : notice.Device, notice.Kind, ParseNotice(notice.Kind, notice.Body));
                return null;
            }

            case ClusterOpKind.UserNotice:
            {
                var notice = UserNotice.Parser.ParseFrom(payload);
                var packet = ParseNotice(notice.Kind, notice.Body);
                foreach (var user in notice.Users)
                {
                    // Best effort: users whose home moved are told what this node knows of them.
                    NotifyHere(user, null, notice.Kind, packet);
                    NotifyRemoteDevices(s, user, null, notice.Kind, packet);
                }

                return null;
            }

            case ClusterOpKind.ConversationMembers:
            {
                var request = ConversationMembersRequest.Parser.ParseFrom(payload);
                if (!RefusedUnlessOwner(batch, index, s, request.ConversationId))
                {
                    var members = request.ConversationId == 0 ? null : _directory.MembersOf(request.ConversationId);
                    var result = new ConversationMembersResult { Found = members is not null, Answered = true };
                    result.Members.Add(members ?? []);
                    batch.Reply(index, result.ToByteArray());
                }

                return null;
            }

            case ClusterOpKind.PresenceWatch:
            {
                var watch = PresenceWatch.Parser.ParseFrom(payload);
                RequireIds(watch.User, watch.Device);
                foreach (var user in watch.Users)
                {
                    if (RefusedUnlessHome(batch, index, s, user))
                    {
                        return null;
                    }
                }

                Watch(batch, index, watch);
                return null;
            }

            case ClusterOpKind.PresenceAway:
            {
                var away = PresenceAway.Parser.ParseFrom(payload);
                if (!RefusedUnlessHome(batch, index, s, away.User) && _presenceDevices.TryGetValue(away.User + "\n" + away.Device, out var link))
                {
                    _presence?.SetAway(link, away.Away);
                }

                return null;
            }

            case ClusterOpKind.Typing:
            {
                var request = TypingRequest.Parser.ParseFrom(payload);
                var typing = Protocol.Messages.Typing.Parser.ParseFrom(request.Typing);
                RequireIds(request.User, "-");
                if (!RefusedUnlessOwner(batch, index, s, typing.ConversationId))
                {
                    var reason = _typing?.Relay(new RemoteDevice(request.User, "-"), typing) ?? ReasonCode.ServerUnavailable;
                    batch.Reply(index, new SignalResult { Reason = (uint)reason, Answered = true }.ToByteArray());
                }

                return null;
            }

            case ClusterOpKind.KeysUpload:
            {
                var request = KeysUploadRequest.Parser.ParseFrom(payload);
                RequireIds(request.User, request.Device);
                var upload = Protocol.Messages.KeysUpload.Parser.ParseFrom(request.Upload);
                return RefusedUnlessHome(batch, index, s, request.User) ? null
                    : AnswerKeysAsync(batch, index, () => _keys!.UploadAsync(new RemoteDevice(request.User, request.Device), upload, cancellationToken));
            }

            case ClusterOpKind.FetchKeys:
            {
                var request = FetchKeysRequest.Parser.ParseFrom(payload);
                var fetch = Protocol.Messages.FetchKeys.Parser.ParseFrom(request.Fetch);
                RequireIds(fetch.UserId, "-");
                // The bundle must fit the device's frame and this reply.
                var maxFrame = (int)Math.Min(request.MaxFrameBytes == 0 ? int.MaxValue : request.MaxFrameBytes, _options.Mesh.MaxReplyBytes - 64);
                return RefusedUnlessHome(batch, index, s, fetch.UserId) ? null
                    : AnswerKeysAsync(batch, index, () => _keys!.FetchAsync(fetch, maxFrame, cancellationToken));
            }

            default:
                batch.Reject(index, (uint)ReasonCode.BadRequest);
                return null;
        }
    }

    private async Task ReadForGatewayAsync(MeshInboundBatch batch, int index, ReadReceipt read, CancellationToken cancellationToken)
    {
        SignalResult answer;
        try
        {
            var (error, text) = await _chat.ReadAsync(new RemoteDevice(read.User, read.Device), read.ConversationId, read.UpToSeq, null, cancellationToken).ConfigureAwait(false);
            answer = new SignalResult { Reason = (uint)error, Message = text ?? "", Answered = true };
        }
        catch (StorageException)
        {
            answer = new SignalResult { Reason = (uint)ReasonCode.ServerUnavailable, Message = "the read position could not be stored; repeat it", Answered = true };
        }

        batch.Reply(index, answer.ToByteArray());
    }

    private async Task AnswerKeysAsync<T>(MeshInboundBatch batch, int index, Func<Task<KeyDirectory.Outcome<T>>> run)
        where T : class, IMessage
    {
        SignalResult answer;
        try
        {
            var outcome = _keys is null
                ? new KeyDirectory.Outcome<T>(ReasonCode.ServerUnavailable, "keys are not routed on this node", null)
                : await run().ConfigureAwait(false);
            answer = new SignalResult { Reason = (uint)outcome.Error, Message = outcome.Message ?? "", Body = outcome.Answer?.ToByteString() ?? ByteString.Empty, Answered = true };
        }
        catch (StorageException)
        {
            answer = new SignalResult { Reason = (uint)ReasonCode.ServerUnavailable, Message = "keys are unavailable; retry", Answered = true };
        }
        catch (ArgumentException e)
        {
            answer = new SignalResult { Reason = (uint)ReasonCode.InvalidField, Message = e.Message, Answered = true };
        }

        Interlocked.Increment(ref SignalMetrics.KeyRequests);
        batch.Reply(index, answer.ToByteArray());
    }

    private static bool RefusedUnlessOwner(MeshInboundBatch batch, int index, RoutingState s, ulong conversationId) =>
        RefusedUnlessSelf(batch, index, s, s.OwnerIndexOf(conversationId));

    private static bool RefusedUnlessHome(MeshInboundBatch batch, int index, RoutingState s, string userId) =>
        RefusedUnlessSelf(batch, index, s, s.HomeIndexOf(userId));

    /// <summary>False when this node is the one at <paramref name="ringIndex"/>; else refuses with STALE_EPOCH naming it.</summary>
    private static bool RefusedUnlessSelf(MeshInboundBatch batch, int index, RoutingState s, int ringIndex)
    {
        if (s.IsSelf(ringIndex))
        {
            return false;
        }

        batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(ringIndex));
        return true;
    }

    /// <summary>Ids a remote node sends are checked as a device's are (<see cref="ChatIds"/>): refused (INVALID_FIELD),
    /// never thrown later from a store write, which would fail the stream and bring the same message back forever.</summary>
    private static void RequireIds(string user, string device)
    {
        if (ChatIds.Validate(user) != ReasonCode.Success || ChatIds.Validate(device) != ReasonCode.Success)
        {
            throw new ArgumentException(ChatIds.Describe(user) ?? ChatIds.Describe(device));
        }
    }

    /// <summary>Push jobs of a forwarded message on its recipients' home: one for each recipient other than the
    /// sender with no device online here or at another node, written with the copy (a resent copy stores nothing,
    /// so a job is created once). SYSTEM messages get none, as on one node.</summary>
    private string[] PushRecipientsOf(StoredMessage message, string[] recipients)
    {
        if (message.ContentType == (uint)ContentType.System)
        {
            return [];
        }

        List<string>? offline = null;
        foreach (var recipient in recipients)
        {
            if (!string.Equals(recipient, message.SenderUserId, StringComparison.Ordinal) && !_registry.IsOnline(recipient) && !IsOnlineElsewhere(recipient))
            {
                (offline ??= []).Add(recipient);
            }
        }

        return offline is null ? [] : [.. offline];
    }

    private static List<(string Node, List<string> Users)> ByHome(RoutingState s, IReadOnlyList<string> users)
    {
        var groups = new List<(string Node, List<string> Users)>();
        foreach (var user in users)
        {
            var home = s.HomeOf(user);
            if (home is null)
            {
                continue;
            }

            var found = -1;
            for (var i = 0; i < groups.Count && found < 0; i++)
            {
                found = string.Equals(groups[i].Node, home, StringComparison.Ordinal) ? i : -1;
            }

            if (found < 0)
            {
                groups.Add((home, [user]));
            }
            else
            {
                groups[found].Users.Add(user);
            }
        }

        return groups;
    }

    private bool Count(bool posted)
    {
        Interlocked.Increment(ref posted ? ref SignalMetrics.Posted : ref SignalMetrics.Dropped);
        return posted;
    }
}
