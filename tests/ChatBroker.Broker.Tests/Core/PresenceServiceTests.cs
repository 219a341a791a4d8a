using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>Presence over the in-memory store and a manual clock: debounce, last-seen, permissions, bounds.</summary>
public sealed class PresenceServiceTests : IAsyncLifetime
{
    private const ulong Wants = (ulong)Capability.Presence;
    private static readonly TimeSpan Debounce = TimeSpan.FromSeconds(2);

    private readonly InMemoryChatStore _store = new();
    private readonly BrokerMetrics _metrics = new("test");
    private readonly ManualClock _clock = new();
    private PresenceService _presence = null!;

    public async Task InitializeAsync()
    {
        _presence = new PresenceService(_store, new ConversationDirectory(_store), _metrics, _clock,
            new PresenceOptions { Debounce = Debounce, MaxSubscriptions = 3 });
        await _store.GetOrCreateDirectAsync("alice", "bob");
        await _store.GetOrCreateDirectAsync("alice", "carol");
        await _store.GetOrCreateDirectAsync("alice", "dave");
        await _store.GetOrCreateDirectAsync("alice", "erin");
    }

    public async Task DisposeAsync()
    {
        _presence.Dispose();
        await _store.DisposeAsync();
        _metrics.Dispose();
    }

    private static PresenceSubscribe Subscribe(ulong requestId, params string[] users)
    {
        var s = new PresenceSubscribe { RequestId = requestId };
        s.UserIds.Add(users);
        return s;
    }

    private static List<Presence> Seen(FakeDevice device) => device.Notices.OfType<Presence>().ToList();

    [Fact]
    public void A_status_change_reaches_subscribers_only_after_it_has_held_for_the_debounce()
    {
        var bob = new FakeDevice("bob", "phone", Wants);
        var answer = _presence.Subscribe(bob, Subscribe(7, "alice"));
        Assert.Equal(ReasonCode.Success, answer.Error);
        Assert.Equal(7UL, answer.Answer!.RequestId);
        Assert.Equal(PresenceStatus.Offline, Assert.Single(answer.Answer.Current).Status);

        _presence.DeviceOnline(new FakeDevice("alice", "phone"));
        _clock.Advance(Debounce - TimeSpan.FromMilliseconds(1));
        Assert.Empty(Seen(bob));

        _clock.Advance(TimeSpan.FromMilliseconds(1));
        var presence = Assert.Single(Seen(bob));
        Assert.Equal(("alice", PresenceStatus.Online), (presence.UserId, presence.Status));
    }

    [Fact]
    public void A_flapping_connection_within_the_debounce_publishes_nothing()
    {
        var bob = new FakeDevice("bob", "phone", Wants);
        _presence.Subscribe(bob, Subscribe(1, "alice"));
        var first = new FakeDevice("alice", "phone");
        _presence.DeviceOnline(first);
        _clock.Advance(Debounce);
        Assert.Single(Seen(bob));

        var link = first;
        for (var i = 0; i < 10; i++)
        {
            _ = _presence.DeviceOffline(link);
            _clock.Advance(TimeSpan.FromMilliseconds(100));
            link = new FakeDevice("alice", "phone");
            _presence.DeviceOnline(link);
            _clock.Advance(TimeSpan.FromMilliseconds(100));
        }

        _clock.Advance(Debounce * 3);
        Assert.Single(Seen(bob)); // still only the first ONLINE
    }

    [Fact]
    public async Task The_last_device_going_offline_publishes_OFFLINE_with_last_seen_and_stores_it()
    {
        var bob = new FakeDevice("bob", "phone", Wants);
        _presence.Subscribe(bob, Subscribe(1, "alice"));
        var phone = new FakeDevice("alice", "phone");
        var laptop = new FakeDevice("alice", "laptop");
        _presence.DeviceOnline(phone);
        _presence.DeviceOnline(laptop);
        _clock.Advance(Debounce);

        await _presence.DeviceOffline(phone);
        _clock.Advance(Debounce);
        Assert.Single(Seen(bob)); // the laptop keeps alice online

        var offlineAt = _clock.GetUtcNow().ToUnixTimeMilliseconds();
        await _presence.DeviceOffline(laptop);
        _clock.Advance(Debounce);

        var last = Seen(bob)[^1];
        Assert.Equal(PresenceStatus.Offline, last.Status);
        Assert.Equal((ulong)offlineAt, last.LastSeenMs);
        Assert.Equal(offlineAt, _store.GetLastSeen("alice"));

        // A later subscriber gets the same answer, from memory or from the store.
        var carol = new FakeDevice("carol", "phone", Wants);
        await _store.GetOrCreateDirectAsync("carol", "alice");
        var current = Assert.Single(_presence.Subscribe(carol, Subscribe(2, "alice")).Answer!.Current);
        Assert.Equal((PresenceStatus.Offline, (ulong)offlineAt), (current.Status, current.LastSeenMs));
    }

    [Fact]
    public void A_user_is_away_only_when_every_online_device_is_away()
    {
        var bob = new FakeDevice("bob", "phone", Wants);
        _presence.Subscribe(bob, Subscribe(1, "alice"));
        var phone = new FakeDevice("alice", "phone");
        var laptop = new FakeDevice("alice", "laptop");
        _presence.DeviceOnline(phone);
        _presence.DeviceOnline(laptop);
        _clock.Advance(Debounce);

        _presence.SetAway(phone, away: true);
        _clock.Advance(Debounce);
        Assert.Single(Seen(bob));

        _presence.SetAway(laptop, away: true);
        _clock.Advance(Debounce);
        Assert.Equal([PresenceStatus.Online, PresenceStatus.Away], Seen(bob).Select(p => p.Status));
    }

    [Fact]
    public void A_first_subscriber_hears_the_status_as_it_is_and_nothing_more_until_it_changes()
    {
        var phone = new FakeDevice("alice", "phone");
        _presence.DeviceOnline(phone);
        _presence.SetAway(phone, away: true);
        var bob = new FakeDevice("bob", "phone", Wants);

        var answer = _presence.Subscribe(bob, Subscribe(1, "alice"));
        Assert.Equal(PresenceStatus.Away, Assert.Single(answer.Answer!.Current).Status);
        _clock.Advance(Debounce);
        Assert.Empty(Seen(bob));

        _ = _presence.DeviceOffline(phone);
        _clock.Advance(Debounce);
        var offline = Assert.Single(Seen(bob));
        Assert.Equal((PresenceStatus.Offline, (ulong)_clock.GetUtcNow().ToUnixTimeMilliseconds() - (ulong)Debounce.TotalMilliseconds), (offline.Status, offline.LastSeenMs));
    }

    [Fact]
    public void Repeated_and_unmatched_calls_do_not_skew_the_device_counts()
    {
        var bob = new FakeDevice("bob", "phone", Wants);
        _presence.Subscribe(bob, Subscribe(1, "alice"));
        var phone = new FakeDevice("alice", "phone");
        var laptop = new FakeDevice("alice", "laptop");

        // A session that registered but failed before it went online still ends with DeviceOffline.
        _ = _presence.DeviceOffline(laptop);
        _presence.SetAway(laptop, away: true);
        _presence.DeviceOnline(phone);
        _presence.DeviceOnline(phone);
        _presence.SetAway(phone, away: true);
        _presence.SetAway(phone, away: true);
        _clock.Advance(Debounce);
        Assert.Equal([PresenceStatus.Away], Seen(bob).Select(p => p.Status));

        _presence.SetAway(phone, away: false);
        _clock.Advance(Debounce);
        _ = _presence.DeviceOffline(phone);
        _ = _presence.DeviceOffline(phone);
        _clock.Advance(Debounce);
        Assert.Equal([PresenceStatus.Away, PresenceStatus.Online, PresenceStatus.Offline], Seen(bob).Select(p => p.Status));

        _presence.Subscribe(bob, new PresenceSubscribe { RequestId = 2, Unsubscribe = true, UserIds = { "alice" } });
        Assert.Equal(0, _presence.TrackedUsers);
    }

    [Fact]
    public void A_subscription_to_someone_who_shares_no_conversation_is_refused_whole_with_NOT_A_MEMBER()
    {
        var bob = new FakeDevice("bob", "phone", Wants);

        var result = _presence.Subscribe(bob, Subscribe(3, "alice", "carol"));

        Assert.Equal(ReasonCode.NotAMember, result.Error);
        Assert.Contains("carol", result.Message, StringComparison.Ordinal);
        Assert.Equal(0, _presence.TrackedUsers); // not even alice was subscribed
    }

    [Fact]
    public void Subscriptions_past_the_bound_get_TOO_MANY_SUBSCRIPTIONS_and_repeats_do_not_count()
    {
        var alice = new FakeDevice("alice", "phone", Wants);
        Assert.Equal(ReasonCode.Success, _presence.Subscribe(alice, Subscribe(1, "bob", "carol")).Error);
        Assert.Equal(ReasonCode.Success, _presence.Subscribe(alice, Subscribe(2, "bob", "carol", "dave")).Error);

        Assert.Equal(ReasonCode.TooManySubscriptions, _presence.Subscribe(alice, Subscribe(3, "erin")).Error);

        _presence.Subscribe(alice, new PresenceSubscribe { RequestId = 4, Unsubscribe = true, UserIds = { "dave" } });
        Assert.Equal(ReasonCode.Success, _presence.Subscribe(alice, Subscribe(5, "erin")).Error);
    }

    [Fact]
    public void Subscriptions_and_entries_die_with_the_sessions()
    {
        var bob = new FakeDevice("bob", "phone", Wants);
        var alice = new FakeDevice("alice", "phone", Wants);
        _presence.DeviceOnline(bob);
        _presence.DeviceOnline(alice);
        _presence.Subscribe(bob, Subscribe(1, "alice"));
        _presence.Subscribe(alice, Subscribe(1, "bob", "carol"));
        _clock.Advance(Debounce);

        _ = _presence.DeviceOffline(bob);
        _ = _presence.DeviceOffline(alice);
        _clock.Advance(Debounce);

        Assert.Equal(0, _presence.TrackedUsers);
    }

    /// <summary>A presence service without debounce over <paramref name="store"/>: every change is published at once.</summary>
    private PresenceService Immediate(IChatStore store) =>
        new(store, new ConversationDirectory(store), _metrics, _clock, new PresenceOptions { Debounce = TimeSpan.Zero, MaxSubscriptions = 10 });

    [Fact]
    public void With_no_debounce_every_change_is_published_at_once_in_order()
    {
        using var immediate = Immediate(_store);
        var bob = new FakeDevice("bob", "phone", Wants);
        immediate.Subscribe(bob, Subscribe(1, "alice"));
        var alice = new FakeDevice("alice", "phone");

        immediate.DeviceOnline(alice);
        immediate.SetAway(alice, away: true);
        _ = immediate.DeviceOffline(alice);

        Assert.Equal([PresenceStatus.Online, PresenceStatus.Away, PresenceStatus.Offline], Seen(bob).Select(p => p.Status));
    }

    [Fact]
    public async Task The_last_seen_write_is_handed_to_the_store_before_subscribers_hear_offline()
    {
        // A subscriber that writes on hearing "offline" must have its write committed after the last-seen (one
        // writer, in order): a crash then cannot keep its write and lose the last-seen.
        var events = new List<string>();
        // Every call goes to the store; the last-seen writes are recorded in the shared list, in order.
        var store = ObservedStore.Over(_store, (method, args) =>
        {
            if (method.Name == nameof(IChatStore.SetLastSeenAsync))
            {
                lock (events)
                {
                    events.Add($"SetLastSeenAsync {args![0]} {args[1]}");
                }
            }
        });
        using var immediate = Immediate(store);
        var bob = new FakeDevice("bob", "phone", Wants);
        immediate.Subscribe(bob, Subscribe(1, "alice"));
        var alice = new FakeDevice("alice", "phone");
        immediate.DeviceOnline(alice);
        bob.OnNoticeArrived = notice =>
        {
            if (notice is Presence { Status: PresenceStatus.Offline } presence)
            {
                lock (events)
                {
                    events.Add($"bob hears alice offline, last seen {presence.LastSeenMs}");
                }
            }
        };

        _clock.Advance(TimeSpan.FromSeconds(5));
        await immediate.DeviceOffline(alice);

        var lastSeen = (ulong)_clock.GetUtcNow().ToUnixTimeMilliseconds();
        Assert.Equal([$"SetLastSeenAsync alice {lastSeen}", $"bob hears alice offline, last seen {lastSeen}"], events);
        Assert.Equal((long)lastSeen, _store.GetLastSeen("alice"));
    }

    [Fact]
    public void A_user_may_subscribe_to_itself_to_follow_its_other_devices()
    {
        var phone = new FakeDevice("frank", "phone", Wants);
        var result = _presence.Subscribe(phone, Subscribe(1, "frank"));

        Assert.Equal(ReasonCode.Success, result.Error);
        _presence.DeviceOnline(new FakeDevice("frank", "laptop"));
        _clock.Advance(Debounce);
        Assert.Equal(PresenceStatus.Online, Assert.Single(Seen(phone)).Status);
    }

    [Fact]
    public void Devices_without_the_presence_capability_get_no_PRESENCE_packets()
    {
        var quiet = new FakeDevice("bob", "watch", capabilities: 0);
        _presence.Subscribe(quiet, Subscribe(1, "alice"));

        _presence.DeviceOnline(new FakeDevice("alice", "phone"));
        _clock.Advance(Debounce);

        Assert.Empty(quiet.Notices);
    }
}
