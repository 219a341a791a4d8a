using System.Runtime.CompilerServices;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>Presence, typing and the notices a home sends to gateways, across nodes (docs/cluster.md, "Presence",
/// "Typing"); see ClusterNode.Signals.cs.</summary>
public sealed partial class ClusterNode
{
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
