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
        Count(s.LinkOf(owner)?.TryPost(ClusterOpKind.DeliveredReport, s.Epoch, new DeliveredReport { Reader = reader, ConversationId = conversationId, UpToSeq = upToSeq }.ToByteArray()) == true);
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

        Count(s.LinkOf(home)?.TryPost(ClusterOpKind.ReceiptForUser, s.Epoch, new ReceiptForUser { User = userId, Receipt = receipt.ToByteString() }.ToByteArray()) == true);
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

    // ---- presence ----

    public bool IsOnlineElsewhere(string userId) => _remoteDevices.TryGetValue(userId, out var devices) && !devices.IsEmpty;

    /// <summary>
    /// Home, after a device registration (from a gateway, or a session here): the presence service counts the user's
    /// devices at other nodes through one link per device, kept equal to the device table (a device that moved from
    /// one gateway to another stays counted; one that connected here is counted by its session). A device that came
    /// online elsewhere also hears whether its one-time prekeys run low, as a session here does.
    /// </summary>
    private void OnRegistered(DeviceRegistration registration, string gateway)
    {
        var key = registration.User + "\n" + registration.Device;
        bool connectedElsewhere;
        lock (_signalsLock)
        {
            // Read under the lock: of two registrations of one device handled at once, the one that takes the lock
            // last sees the table after both, so the link ends up matching it.
            connectedElsewhere = IsConnectedElsewhere(registration.User, registration.Device);
            if (_presence is { } presence)
            {
                if (connectedElsewhere && !_presenceDevices.ContainsKey(key))
                {
                    var link = new RemoteDevice(registration.User, registration.Device);
                    _presenceDevices[key] = link;
                    presence.DeviceOnline(link);
                }
                else if (!connectedElsewhere && _presenceDevices.TryRemove(key, out var link))
                {
                    _ = presence.DeviceOffline(link); // last-seen is written here, the user's home
                }
            }
        }

        if (connectedElsewhere && registration.Online && !string.Equals(gateway, NodeId, StringComparison.Ordinal))
        {
            try
            {
                _keys?.NotifyIfLow(registration.User, registration.Device);
            }
            catch (StorageException)
            {
                // Only a hint; the next fetch of its keys checks again.
            }
        }
    }

    private bool IsConnectedElsewhere(string userId, string deviceId)
    {
        if (_remoteDevices.TryGetValue(userId, out var devices))
        {
            foreach (var (device, _) in devices)
            {
                if (string.Equals(device, deviceId, StringComparison.Ordinal))
                {
                    return true;
                }
            }
        }

        return false;
    }

    public async Task<bool> SharesConversationAsync(string userA, string userB, CancellationToken cancellationToken)
    {
        for (var attempt = 0; attempt < ClusterOps.DirectIdProbes; attempt++)
        {
            var id = ClusterOps.DirectConversationId(userA, userB, attempt);
            var s = State;
            var owner = s?.OwnerOf(id);
            string[]? members;
            if (owner is null || string.Equals(owner, NodeId, StringComparison.Ordinal))
            {
                members = _directory.MembersOf(id);
            }
            else
            {
                var reply = ConversationMembersResult.Parser.ParseFrom(await ReadFromAsync(s, owner, ClusterOpKind.ConversationMembers,
                    new ConversationMembersRequest { ConversationId = id }.ToByteArray(), cancellationToken).ConfigureAwait(false));
                members = reply.Found ? [.. reply.Members] : null;
            }

            if (members is null)
            {
                return false; // the pair's id is free: they never wrote to each other
            }

            if (ConversationDirectory.Contains(members, userA) && ConversationDirectory.Contains(members, userB))
            {
                return true;
            }

            // Another pair holds this id (a hash collision): the pair's next candidate.
        }

        return false;
    }

    public async Task<List<Presence>> WatchAsync(IDeviceLink subscriber, IReadOnlyList<string> users, CancellationToken cancellationToken)
    {
        var s = State ?? throw new RouteUnavailableException("no cluster map yet");
        var current = new List<Presence>(users.Count);
        foreach (var (home, watched) in ByHome(s, users))
        {
            var request = new PresenceSubscribe { UserIds = { watched } };
            if (string.Equals(home, NodeId, StringComparison.Ordinal))
            {
                var local = (_presence ?? throw new RouteUnavailableException("presence is not routed")).SubscribeChecked(subscriber, request);
                current.AddRange(local.Answer?.Current ?? []);
                continue;
            }

            var watch = new PresenceWatch { WatchId = WatchIdOf(subscriber), User = subscriber.UserId, Device = subscriber.DeviceId, Users = { watched } };
            var reply = SignalResult.Parser.ParseFrom(await ReadFromAsync(s, home, ClusterOpKind.PresenceWatch, watch.ToByteArray(), cancellationToken).ConfigureAwait(false));
            if (reply.Reason != 0)
            {
                throw new RouteUnavailableException($"node {home} refused the presence subscription: {reply.Message}");
            }

            current.AddRange(PresenceSubscribed.Parser.ParseFrom(reply.Body).Current);
        }

        Interlocked.Add(ref SignalMetrics.PresenceWatches, users.Count);
        return current;
    }

    public void Unwatch(IDeviceLink subscriber, IReadOnlyList<string> users)
    {
        if (State is not { } s)
        {
            return;
        }

        foreach (var (home, watched) in ByHome(s, users))
        {
            if (string.Equals(home, NodeId, StringComparison.Ordinal))
            {
                _presence?.SubscribeChecked(subscriber, new PresenceSubscribe { UserIds = { watched }, Unsubscribe = true });
                continue;
            }

            var watch = new PresenceWatch { WatchId = WatchIdOf(subscriber), User = subscriber.UserId, Device = subscriber.DeviceId, Users = { watched }, Unsubscribe = true };
            Count(s.LinkOf(home)?.TryPost(ClusterOpKind.PresenceWatch, s.Epoch, watch.ToByteArray()) == true);
        }
    }

    public void ReportAway(IDeviceLink device, bool away)
    {
        if (State is { } s && s.HomeOf(device.UserId) is { } home)
        {
            Count(s.LinkOf(home)?.TryPost(ClusterOpKind.PresenceAway, s.Epoch, new PresenceAway { User = device.UserId, Device = device.DeviceId, Away = away }.ToByteArray()) == true);
        }
    }

    private ulong WatchIdOf(IDeviceLink subscriber)
    {
        var box = _watchIds.GetValue(subscriber, static _ => new StrongBox<long>());
        if (Volatile.Read(ref box.Value) == 0)
        {
            Interlocked.CompareExchange(ref box.Value, Interlocked.Increment(ref _nextWatchId), 0);
        }

        return (ulong)Volatile.Read(ref box.Value);
    }

    /// <summary>Home: a subscription of a session at another node.</summary>
    private void Watch(MeshInboundBatch batch, int index, PresenceWatch watch)
    {
        if (_presence is not { } presence)
        {
            batch.Reject(index, (uint)ReasonCode.ServerUnavailable);
            return;
        }

        var key = batch.Origin + "\n" + watch.WatchId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var request = new PresenceSubscribe { UserIds = { watch.Users }, Unsubscribe = watch.Unsubscribe };
        lock (_signalsLock)
        {
            if (watch.Unsubscribe)
            {
                if (_watchers.TryGetValue(key, out var watcher))
                {
                    presence.SubscribeChecked(watcher, request);
                    watcher.Watched.ExceptWith(watch.Users);
                    if (watcher.Watched.Count == 0)
                    {
                        _watchers.TryRemove(key, out _);
                    }
                }

                return;
            }

            var subscriber = _watchers.GetOrAdd(key, _ => new RemoteSubscriber(this, batch.Origin, watch.User, watch.Device));
            var result = presence.SubscribeChecked(subscriber, request);
            if (result.Error == ReasonCode.Success)
            {
                subscriber.Watched.UnionWith(watch.Users);
            }
            else if (subscriber.Watched.Count == 0)
            {
                _watchers.TryRemove(key, out _);
            }

            batch.Reply(index, new SignalResult
            {
                Reason = (uint)result.Error,
                Message = result.Message ?? "",
                Body = result.Answer?.ToByteString() ?? ByteString.Empty,
                Answered = true,
            }.ToByteArray());
        }
    }

    // ---- typing and notices ----

    public void RelayTyping(IDeviceLink from, Typing typing) => _ = RelayTypingAsync(from, typing);

    private async Task RelayTypingAsync(IDeviceLink from, Typing typing)
    {
        var s = State;
        var owner = s?.OwnerOf(typing.ConversationId);
        if (s is null || owner is null)
        {
            return;
        }

        Interlocked.Increment(ref SignalMetrics.TypingForwarded);
        var request = new TypingRequest { User = from.UserId, Typing = typing.ToByteString() }.ToByteArray();
        try
        {
            var reply = SignalResult.Parser.ParseFrom(await ReadFromAsync(s, owner, ClusterOpKind.Typing, request, _stop.Token).ConfigureAwait(false));
            if (reply.Reason == (uint)ReasonCode.NotAMember)
            {
                from.OnNotice(new Error
                {
                    Reason = ReasonCode.NotAMember,
                    Message = "not a member of this conversation",
                    RequestId = typing.ConversationId,
                    InReplyTo = PacketType.Typing,
                });
            }
        }
        catch (Exception e) when (e is RouteUnavailableException or InvalidProtocolBufferException or OperationCanceledException)
        {
            // Typing is best effort: a hint that expires by itself.
        }
    }

    public int NotifyUsers(IReadOnlyList<string> users, IMessage packet)
    {
        if (State is not { } s)
        {
            return 0;
        }

        var kind = KindOf(packet);
        var told = 0;
        foreach (var (home, here) in ByHome(s, users))
        {
            if (string.Equals(home, NodeId, StringComparison.Ordinal))
            {
                foreach (var user in here)
                {
                    told += NotifyHere(user, null, kind, packet);
                    NotifyRemoteDevices(s, user, null, kind, packet);
                }

                continue;
            }

            Count(s.LinkOf(home)?.TryPost(ClusterOpKind.UserNotice, s.Epoch, new UserNotice { Users = { here }, Kind = kind, Body = packet.ToByteString() }.ToByteArray()) == true);
        }

        return told;
    }

    public bool NotifyRemoteDevice(string userId, string deviceId, IMessage packet) =>
        State is { } s && NotifyRemoteDevices(s, userId, deviceId, KindOf(packet), packet) > 0;

    /// <summary>Tells the devices of <paramref name="userId"/> connected here (one, or all when
    /// <paramref name="deviceId"/> is null) that want the packet; returns how many.</summary>
    private int NotifyHere(string userId, string? deviceId, NoticeKind kind, IMessage packet)
    {
        var told = 0;
        var wanted = kind switch
        {
            NoticeKind.NoticeTyping => (ulong)Capability.Typing,
            NoticeKind.NoticePresence => (ulong)Capability.Presence,
            _ => 0UL, // receipts: OnReceipt checks; low prekeys: every device
        };
        foreach (var device in _registry.DevicesOf(userId))
        {
            if ((deviceId is not null && !string.Equals(device.DeviceId, deviceId, StringComparison.Ordinal)) || (device.Capabilities & wanted) != wanted)
            {
                continue;
            }

            if (kind == NoticeKind.NoticeReceipt)
            {
                device.OnReceipt((Receipt)packet);
            }
            else
            {
                device.OnNotice(packet);
            }

            told++;
        }

        return told;
    }

    /// <summary>Home: posts the packet to every gateway (one notice each) where the user's devices (or the one
    /// device) are connected; returns how many notices were posted.</summary>
    private int NotifyRemoteDevices(RoutingState s, string userId, string? deviceId, NoticeKind kind, IMessage packet)
    {
        if (!_remoteDevices.TryGetValue(userId, out var devices) || devices.IsEmpty)
        {
            return 0;
        }

        byte[]? payload = null;
        var posted = 0;
        for (var i = 0; i < devices.Length; i++)
        {
            var (device, gateway) = devices[i];
            if (deviceId is not null ? !string.Equals(device, deviceId, StringComparison.Ordinal) : SeenGatewayBefore(devices, i))
            {
                continue;
            }

            payload ??= new DeviceNotice { User = userId, Device = deviceId ?? "", Kind = kind, Body = packet.ToByteString() }.ToByteArray();
            if (Count(s.LinkOf(gateway)?.TryPost(ClusterOpKind.DeviceNotice, s.Epoch, payload) == true))
            {
                posted++;
            }
        }

        return posted;
    }

    private static bool SeenGatewayBefore(System.Collections.Immutable.ImmutableArray<(string Device, string Gateway)> devices, int index)
    {
        for (var j = 0; j < index; j++)
        {
            if (string.Equals(devices[j].Gateway, devices[index].Gateway, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    private static NoticeKind KindOf(IMessage packet) => packet switch
    {
        Receipt => NoticeKind.NoticeReceipt,
        TypingNotice => NoticeKind.NoticeTyping,
        Presence => NoticeKind.NoticePresence,
        KeysUploaded => NoticeKind.NoticeKeysLow,
        _ => throw new ArgumentException($"{packet.Descriptor.Name} is not a notice", nameof(packet)),
    };

    private static IMessage ParseNotice(NoticeKind kind, ByteString body) => kind switch
    {
        NoticeKind.NoticeReceipt => Receipt.Parser.ParseFrom(body),
        NoticeKind.NoticeTyping => TypingNotice.Parser.ParseFrom(body),
        NoticeKind.NoticePresence => Presence.Parser.ParseFrom(body),
        NoticeKind.NoticeKeysLow => KeysUploaded.Parser.ParseFrom(body),
        _ => throw new ArgumentException($"unknown notice kind {kind}"),
    };

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

    private static bool RefusedUnlessOwner(MeshInboundBatch batch, int index, RoutingState s, ulong conversationId)
    {
        var owner = s.OwnerIndexOf(conversationId);
        if (s.IsSelf(owner))
        {
            return false;
        }

        batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(owner));
        return true;
    }

    private static bool RefusedUnlessHome(MeshInboundBatch batch, int index, RoutingState s, string userId)
    {
        var home = s.HomeIndexOf(userId);
        if (s.IsSelf(home))
        {
            return false;
        }

        batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(home));
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

    /// <summary>A session at another node subscribed to presence here: what the presence service publishes to it
    /// goes to that node as a <see cref="DeviceNotice"/>.</summary>
    private sealed class RemoteSubscriber(ClusterNode node, string gateway, string userId, string deviceId) : IDeviceLink
    {
        public HashSet<string> Watched { get; } = new(StringComparer.Ordinal);

        public string UserId { get; } = userId;

        public string DeviceId { get; } = deviceId;

        // The gateway checks the session's own capabilities before it writes the packet.
        public ulong Capabilities => (ulong)Capability.Presence;

        public void OnNotice(IMessage packet)
        {
            if (node.State is { } s)
            {
                var notice = new DeviceNotice { User = UserId, Device = DeviceId, Kind = KindOf(packet), Body = packet.ToByteString() };
                node.Count(s.LinkOf(gateway)?.TryPost(ClusterOpKind.DeviceNotice, s.Epoch, notice.ToByteArray()) == true);
            }
        }

        public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message)
        {
        }

        public void OnGroupLogAppended(DeliveryMessage message, bool write)
        {
        }

        public void OnReceipt(Receipt receipt)
        {
        }

        public void Close(ReasonCode reason, string message)
        {
        }
    }
}

/// <summary>Counters of receipts, presence, typing and keys across nodes (<see cref="ClusterNode.SignalMetrics"/>).</summary>
public sealed class SignalMetrics
{
    /// <summary>Receipts the owner sent to a recipient's home (or kept, when the home is the owner).</summary>
    public long ReceiptsRouted;

    /// <summary>Receipts a home stored for its user (and told the user's devices).</summary>
    public long ReceiptsStored;

    /// <summary>Receipts that could not be recorded or kept (a store failure).</summary>
    public long ReceiptsFailed;

    /// <summary>Stored-receipt reads at CONNECT that the home did not answer.</summary>
    public long StoredReceiptReadsFailed;

    /// <summary>Presence subscriptions made at other nodes' homes.</summary>
    public long PresenceWatches;

    /// <summary>TYPING sent to a conversation's owner.</summary>
    public long TypingForwarded;

    /// <summary>KEYS_UPLOAD and FETCH_KEYS answered for other nodes.</summary>
    public long KeyRequests;

    /// <summary>Notices, reports and subscriptions posted to other nodes, and those dropped (a full or missing link).</summary>
    public long Posted;

    public long Dropped;
}
