using System.Runtime.InteropServices;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Who is online, away or offline, and who wants to know. A device is ONLINE from CONNECT, AWAY after
/// PRESENCE_SET(AWAY), and gone when its session ends (keepalive timeout included). A user's status is the
/// most online of its devices. A change of a user's status is published to subscribers only once it has held
/// for <see cref="PresenceOptions.Debounce"/>: a connection that drops and comes back within it publishes
/// nothing, so a flapping phone cannot flood its contacts.
/// <para>
/// Memory: an entry per user that has an online device, a subscriber or a pending change, removed when it has
/// none; a subscription set per session, bounded by <see cref="PresenceOptions.MaxSubscriptions"/> and dropped
/// with the session.
/// </para>
/// <para>
/// One lock guards every entry and subscription set. Presence changes happen per connect, disconnect and
/// PRESENCE_SET, not per message, so contention is low. PRESENCE packets are queued to subscribers while it
/// is held, so two changes of one user reach every subscriber in the order they were decided (lock order:
/// presence → outbox; the outbox never calls back under its lock).
/// </para>
/// </summary>
public sealed class PresenceService : IDisposable
{
    private readonly IChatStore _store;
    private readonly ConversationDirectory _directory;
    private readonly BrokerMetrics _metrics;
    private readonly TimeProvider _clock;
    private readonly TimeSpan _debounce;
    private readonly int _maxSubscriptions;
    private readonly Lock _lock = new();
    // Users somebody subscribed to (or whose change is still being debounced for subscribers): what they
    // were last told, the debounce timer, the subscribers.
    private readonly Dictionary<string, UserPresence> _users = new(StringComparer.Ordinal);
    // Every online device and whether it is away, and per user how many devices are online and away: flat
    // maps rather than objects per user, because this is held for every idle connection (≈ 60 bytes a
    // device here, against ≈ 390 for a per-user record with a dictionary and a set; docs/performance.md).
    private readonly Dictionary<IDeviceLink, bool> _devices = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<string, DeviceCounts> _online = new(StringComparer.Ordinal);
    private readonly Dictionary<IDeviceLink, HashSet<string>> _subscriptions = new(ReferenceEqualityComparer.Instance);
    private bool _disposed;
    private ISignalRouter? _router;

    public PresenceService(IChatStore store, ConversationDirectory directory, BrokerMetrics metrics, TimeProvider clock, PresenceOptions options)
    {
        _store = store;
        _directory = directory;
        _metrics = metrics;
        _clock = clock;
        _debounce = options.Debounce;
        _maxSubscriptions = options.MaxSubscriptions;
    }

    /// <summary>Users with an in-memory entry (for tests: entries must not outlive their reason to exist).</summary>
    public int TrackedUsers
    {
        get
        {
            lock (_lock)
            {
                return _users.Count + _online.Count;
            }
        }
    }

    /// <summary>
    /// Cluster mode: a user's presence is kept by the user's home node. Devices connected here whose user's home is
    /// another node are counted there (the home learns of them from the device registration, and of PRESENCE_SET
    /// through <see cref="ISignalRouter.ReportAway"/>); subscriptions to users whose home is another node are held
    /// there, and here only in the session's set (for the bound and for ending them with the session). Called once,
    /// before the node serves devices.
    /// </summary>
    public void UseRouter(ISignalRouter router) => _router = router ?? throw new ArgumentNullException(nameof(router));

    /// <summary>True when the user's presence is kept by another node (cluster mode).</summary>
    private bool IsRemote(string userId) => _router is { } router && !router.IsHomeOf(userId);

    /// <summary>The device's session opened: it is ONLINE.</summary>
    public void DeviceOnline(IDeviceLink device)
    {
        if (IsRemote(device.UserId))
        {
            return; // its home counts it
        }

        lock (_lock)
        {
            if (_devices.TryAdd(device, false))
            {
                CollectionsMarshal.GetValueRefOrAddDefault(_online, device.UserId, out _).Online++;
                if (_users.TryGetValue(device.UserId, out var entry))
                {
                    ChangedLocked(entry);
                }
            }
        }
    }

    /// <summary>PRESENCE_SET: the device went to the background (AWAY) or came back (ONLINE).</summary>
    public void SetAway(IDeviceLink device, bool away)
    {
        if (IsRemote(device.UserId))
        {
            _router!.ReportAway(device, away);
            return;
        }

        lock (_lock)
        {
            if (_devices.TryGetValue(device, out var wasAway) && wasAway != away)
            {
                _devices[device] = away;
                CollectionsMarshal.GetValueRefOrNullRef(_online, device.UserId).Away += away ? 1 : -1;
                if (_users.TryGetValue(device.UserId, out var entry))
                {
                    ChangedLocked(entry);
                }
            }
        }
    }

    /// <summary>
    /// The device's session ended: it is offline and its subscriptions are gone. When it was the user's last
    /// device, last-seen is written to the store; the returned task is that write (callers need not wait).
    /// </summary>
    public Task DeviceOffline(IDeviceLink device)
    {
        long lastSeen = 0;
        List<string>? remote = null;
        lock (_lock)
        {
            if (_subscriptions.Remove(device, out var subscribed))
            {
                foreach (var user in subscribed)
                {
                    if (IsRemote(user))
                    {
                        (remote ??= []).Add(user);
                    }
                    else if (_users.TryGetValue(user, out var target))
                    {
                        target.RemoveSubscriber(device);
                        RemoveIfIdleLocked(target);
                    }
                }

                _metrics.PresenceSubscriptions.Add(-subscribed.Count);
            }

            if (_devices.Remove(device, out var wasAway))
            {
                ref var counts = ref CollectionsMarshal.GetValueRefOrNullRef(_online, device.UserId);
                counts.Online--;
                counts.Away -= wasAway ? 1 : 0;
                if (counts.Online == 0)
                {
                    _online.Remove(device.UserId);
                    lastSeen = _clock.GetUtcNow().ToUnixTimeMilliseconds();
                }

                if (_users.TryGetValue(device.UserId, out var entry))
                {
                    if (lastSeen != 0)
                    {
                        entry.LastSeenMs = lastSeen;
                    }
                    else
                    {
                        ChangedLocked(entry);
                    }
                }
            }
        }

        if (remote is not null)
        {
            _router!.Unwatch(device, remote);
        }

        if (lastSeen == 0)
        {
            return Task.CompletedTask;
        }

        // The user went offline: the last-seen write is queued before anyone hears "offline", so a write a
        // subscriber makes after hearing it is committed after the last-seen (one writer, in order) and a crash
        // cannot keep the one and lose the other. Then the change is published (or debounced) as usual.
        var persisting = PersistLastSeenAsync(device.UserId, lastSeen);
        lock (_lock)
        {
            if (_users.TryGetValue(device.UserId, out var entry))
            {
                ChangedLocked(entry);
            }
        }

        return persisting;
    }

    public readonly record struct SubscribeResult(ReasonCode Error, string? Message, PresenceSubscribed? Answer);

    /// <summary>
    /// PRESENCE_SUBSCRIBE: all or nothing. Every user must share a conversation with the subscriber (or be the
    /// subscriber), else NOT_A_MEMBER; past the per-session bound, TOO_MANY_SUBSCRIPTIONS. The answer carries
    /// each user's status as last published, so it agrees with the PRESENCE packets that follow it.
    /// </summary>
    public SubscribeResult Subscribe(IDeviceLink subscriber, PresenceSubscribe request) => Subscribe(subscriber, request, checkPeers: true);

    /// <summary>
    /// Cluster mode, on the watched users' home: the subscription of a session at another node (whose gateway checked
    /// the permission; <paramref name="subscriber"/> stands for that session here).
    /// </summary>
    public SubscribeResult SubscribeChecked(IDeviceLink subscriber, PresenceSubscribe request) => Subscribe(subscriber, request, checkPeers: false);

    /// <summary>
    /// PRESENCE_SUBSCRIBE wherever the users' presence is kept. On one node this is <see cref="Subscribe(IDeviceLink, PresenceSubscribe)"/>;
    /// in cluster mode the permission is also asked of the owners of direct conversations this node does not hold,
    /// and users whose home is another node are subscribed to there (their current status comes from there).
    /// </summary>
    public async ValueTask<SubscribeResult> SubscribeAsync(IDeviceLink subscriber, PresenceSubscribe request, CancellationToken cancellationToken)
    {
        if (_router is not { } router || request.Unsubscribe)
        {
            return Subscribe(subscriber, request);
        }

        HashSet<string>? peers = null;
        List<string>? remote = null;
        foreach (var user in request.UserIds)
        {
            if (user != subscriber.UserId && !(peers ??= PeersOf(subscriber.UserId)).Contains(user)
                && !await router.SharesConversationAsync(subscriber.UserId, user, cancellationToken).ConfigureAwait(false))
            {
                return new(ReasonCode.NotAMember, $"you share no conversation with {user}", null);
            }

            if (IsRemote(user))
            {
                (remote ??= []).Add(user);
            }
        }

        var result = Subscribe(subscriber, request, checkPeers: false);
        if (result.Error != ReasonCode.Success || remote is null)
        {
            return result;
        }

        try
        {
            result.Answer!.Current.Add(await router.WatchAsync(subscriber, remote, cancellationToken).ConfigureAwait(false));
            return result;
        }
        catch (RouteUnavailableException)
        {
            Unsubscribe(subscriber, remote);
            return new(ReasonCode.ServerUnavailable, "presence is unavailable; retry", null);
        }
    }

    private SubscribeResult Subscribe(IDeviceLink subscriber, PresenceSubscribe request, bool checkPeers)
    {
        if (request.Unsubscribe)
        {
            Unsubscribe(subscriber, request.UserIds);
            return new(ReasonCode.Success, null, new PresenceSubscribed { RequestId = request.RequestId });
        }

        var peers = checkPeers ? PeersOf(subscriber.UserId) : null;
        var stored = new long[request.UserIds.Count];
        var settings = new UserSettings?[request.UserIds.Count];
        for (var i = 0; i < request.UserIds.Count; i++)
        {
            var user = request.UserIds[i];
            if (peers is not null && user != subscriber.UserId && !peers.Contains(user))
            {
                return new(ReasonCode.NotAMember, $"you share no conversation with {user}", null);
            }

            stored[i] = IsRemote(user) ? 0 : _store.GetLastSeen(user) ?? 0;
            settings[i] = IsRemote(user) ? null : _store.GetUserSettings(user);
        }

        var answer = new PresenceSubscribed { RequestId = request.RequestId };
        lock (_lock)
        {
            if (_disposed)
            {
                return new(ReasonCode.ServerUnavailable, "the broker is shutting down", null);
            }

            _subscriptions.TryGetValue(subscriber, out var subscribed);
            var fresh = new HashSet<string>(StringComparer.Ordinal);
            foreach (var user in request.UserIds)
            {
                if (subscribed is null || !subscribed.Contains(user))
                {
                    fresh.Add(user);
                }
            }

            var current = subscribed?.Count ?? 0;
            if (current + fresh.Count > _maxSubscriptions)
            {
                _metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "presence_subscriptions"));
                return new(ReasonCode.TooManySubscriptions, $"at most {_maxSubscriptions} presence subscriptions per connection; {current} held", null);
            }

            if (subscribed is null)
            {
                subscribed = new HashSet<string>(StringComparer.Ordinal);
                _subscriptions[subscriber] = subscribed;
            }

            for (var i = 0; i < request.UserIds.Count; i++)
            {
                var user = request.UserIds[i];
                if (IsRemote(user))
                {
                    subscribed.Add(user); // held by its home; the caller subscribes there
                    continue;
                }

                var entry = Entry(user, settings[i]!);
                entry.AddSubscriber(subscriber);
                subscribed.Add(user);
                if (!entry.Settings.Shows(user, subscriber.UserId))
                {
                    // The user's privacy setting: the subscriber learns nothing, not even last seen.
                    _metrics.PresenceHidden.Add(1);
                    answer.Current.Add(new Presence { UserId = user, Status = PresenceStatus.Hidden });
                    continue;
                }

                answer.Current.Add(new Presence
                {
                    UserId = user,
                    Status = entry.Published,
                    LastSeenMs = entry.Published == PresenceStatus.Offline ? (ulong)Math.Max(entry.LastSeenMs, stored[i]) : 0,
                });
            }

            _metrics.PresenceSubscriptions.Add(fresh.Count);
        }

        return new(ReasonCode.Success, null, answer);
    }

    private void Unsubscribe(IDeviceLink subscriber, IList<string> users)
    {
        List<string>? remote = null;
        lock (_lock)
        {
            if (!_subscriptions.TryGetValue(subscriber, out var subscribed))
            {
                return;
            }

            foreach (var user in users)
            {
                if (subscribed.Remove(user))
                {
                    _metrics.PresenceSubscriptions.Add(-1);
                    if (IsRemote(user))
                    {
                        (remote ??= []).Add(user);
                    }
                    else if (_users.TryGetValue(user, out var entry))
                    {
                        entry.RemoveSubscriber(subscriber);
                        RemoveIfIdleLocked(entry);
                    }
                }
            }

            if (subscribed.Count == 0)
            {
                _subscriptions.Remove(subscriber);
            }
        }

        if (remote is not null)
        {
            _router!.Unwatch(subscriber, remote);
        }
    }

    /// <summary>Every user who shares a conversation with <paramref name="userId"/>.</summary>
    private HashSet<string> PeersOf(string userId)
    {
        var peers = new HashSet<string>(StringComparer.Ordinal);
        foreach (var conversation in _store.ListConversations(userId))
        {
            var members = _directory.MembersOf(conversation);
            if (members is not null && ConversationDirectory.Contains(members, userId))
            {
                peers.UnionWith(members);
            }
        }

        return peers;
    }

    private UserPresence Entry(string userId, UserSettings settings)
    {
        if (!_users.TryGetValue(userId, out var entry))
        {
            // Nobody was told anything about this user yet: the first subscriber hears the status as it is.
            entry = new UserPresence(userId) { Published = CurrentOf(userId), Settings = settings };
            _users[userId] = entry;
        }

        return entry;
    }

    /// <summary>
    /// The user changed its settings (stored by the caller): subscribers whose view changed hear it at once, HIDDEN
    /// for those it now hides, the status as published for those it now shows. Later publishes check the new
    /// settings for every subscriber.
    /// </summary>
    public void SettingsChanged(string userId, UserSettings settings)
    {
        lock (_lock)
        {
            if (!_users.TryGetValue(userId, out var entry))
            {
                return; // nobody follows the user: the next subscription reads the settings from the store
            }

            var old = entry.Settings;
            entry.Settings = settings;
            if (entry.Subscribers is not { } subscribers)
            {
                return;
            }

            foreach (var subscriber in subscribers)
            {
                var shown = settings.Shows(userId, subscriber.UserId);
                if (shown == old.Shows(userId, subscriber.UserId) || (subscriber.Capabilities & (ulong)Capability.Presence) == 0)
                {
                    continue;
                }

                if (!shown)
                {
                    _metrics.PresenceHidden.Add(1);
                }

                subscriber.OnNotice(shown
                    ? new Presence { UserId = userId, Status = entry.Published, LastSeenMs = entry.Published == PresenceStatus.Offline ? (ulong)entry.LastSeenMs : 0 }
                    : new Presence { UserId = userId, Status = PresenceStatus.Hidden });
                _metrics.PresenceOut.Add(1);
            }
        }
    }

    /// <summary>The most online of the user's devices.</summary>
    private PresenceStatus CurrentOf(string userId) =>
        !_online.TryGetValue(userId, out var counts) || counts.Online == 0 ? PresenceStatus.Offline
        : counts.Away < counts.Online ? PresenceStatus.Online
        : PresenceStatus.Away;

    /// <summary>After any device change: start (or restart) the debounce, or cancel it if the change reverted.</summary>
    private void ChangedLocked(UserPresence entry)
    {
        var status = CurrentOf(entry.UserId);
        if (status == entry.Published)
        {
            if (entry.Pending is not null)
            {
                // A flap: the status came back before the debounce ran out; nobody hears of it.
                entry.Pending.Dispose();
                entry.Pending = null;
                _metrics.PresenceCoalesced.Add(1);
            }

            RemoveIfIdleLocked(entry);
            return;
        }

        if (_debounce <= TimeSpan.Zero)
        {
            PublishLocked(entry);
            return;
        }

        entry.Pending?.Dispose();
        var generation = ++entry.Generation;
        if (!_disposed)
        {
            entry.Pending = _clock.CreateTimer(OnDebounceElapsed, (entry, generation), _debounce, Timeout.InfiniteTimeSpan);
        }
    }

    private void OnDebounceElapsed(object? state)
    {
        var (entry, generation) = ((UserPresence, long))state!;
        lock (_lock)
        {
            if (entry.Generation != generation || entry.Pending is null)
            {
                return; // superseded by a later change
            }

            entry.Pending.Dispose();
            entry.Pending = null;
            if (CurrentOf(entry.UserId) != entry.Published)
            {
                PublishLocked(entry);
            }

            RemoveIfIdleLocked(entry);
        }
    }

    private void PublishLocked(UserPresence entry)
    {
        entry.Published = CurrentOf(entry.UserId);
        _metrics.PresencePublished.Add(1);
        Presence? packet = null;
        var sent = 0;
        if (entry.Subscribers is { } subscribers)
        {
            foreach (var subscriber in subscribers)
            {
                // Checked on every publish, not only at subscribe time: a subscriber the user's privacy setting
                // hides hears nothing, not even that something changed (it was told HIDDEN once).
                if ((subscriber.Capabilities & (ulong)Capability.Presence) != 0 && entry.Settings.Shows(entry.UserId, subscriber.UserId))
                {
                    packet ??= new Presence
                    {
                        UserId = entry.UserId,
                        Status = entry.Published,
                        LastSeenMs = entry.Published == PresenceStatus.Offline ? (ulong)entry.LastSeenMs : 0,
                    };
                    subscriber.OnNotice(packet);
                    sent++;
                }
            }
        }

        _metrics.PresenceOut.Add(sent);
    }

    private void RemoveIfIdleLocked(UserPresence entry)
    {
        if (entry.Subscribers is null && entry.Pending is null)
        {
            _users.Remove(entry.UserId);
        }
    }

    private async Task PersistLastSeenAsync(string userId, long lastSeenMs)
    {
        try
        {
            await _store.SetLastSeenAsync(userId, lastSeenMs).ConfigureAwait(false);
        }
        catch (StorageException)
        {
            // Best effort: the in-memory entry still answers subscribers; a lost write only ages last-seen.
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var entry in _users.Values)
            {
                entry.Pending?.Dispose();
                entry.Pending = null;
            }
        }
    }

    private sealed class UserPresence(string userId)
    {
        public string UserId { get; } = userId;

        /// <summary>Sessions subscribed to this user; null while there are none (most users, most of the time).</summary>
        public HashSet<IDeviceLink>? Subscribers { get; private set; }

        public void AddSubscriber(IDeviceLink subscriber) => (Subscribers ??= new(ReferenceEqualityComparer.Instance)).Add(subscriber);

        public void RemoveSubscriber(IDeviceLink subscriber)
        {
            if (Subscribers is not null && Subscribers.Remove(subscriber) && Subscribers.Count == 0)
            {
                Subscribers = null;
            }
        }

        /// <summary>What subscribers were last told (set from the devices when the first one subscribes).</summary>
        public PresenceStatus Published { get; set; } = PresenceStatus.Offline;

        /// <summary>When the last device went offline here; 0 when not since this broker started.</summary>
        public long LastSeenMs { get; set; }

        public ITimer? Pending { get; set; }

        /// <summary>The user's privacy settings, read when the entry was made and kept current by <see cref="SettingsChanged"/>.</summary>
        public UserSettings Settings { get; set; } = UserSettings.Default;

        public long Generation { get; set; }
    }

    private struct DeviceCounts
    {
        public int Online;
        public int Away;
    }
}
