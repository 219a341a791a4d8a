using System.Diagnostics;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>Presence, typing and the key directory over real TCP against the real broker process.</summary>
public sealed class PresenceTypingKeysTests
{
    private const ulong PresenceCaps = (ulong)(Capability.Presence | Capability.Receipts);
    private const ulong TypingCaps = (ulong)(Capability.Typing | Capability.Receipts);

    /// <summary>Alice sends Bob a message so that they share a conversation; returns its id.</summary>
    private static async Task<ulong> MakeDirectChatAsync(RawDevice from, string to)
    {
        await from.SendAsync(new Send { ClientMsgId = 1, ToUserId = to, Body = ByteString.CopyFromUtf8("hi") });
        return (await from.ReceiveAsync<Sent>()).ConversationId;
    }

    private static KeysUpload Upload(ulong requestId, int oneTimeKeys)
    {
        var upload = new KeysUpload
        {
            RequestId = requestId,
            IdentityKey = ByteString.CopyFrom(new byte[32]),
            SignedPrekey = new SignedPrekey { KeyId = 1, PublicKey = ByteString.CopyFrom(new byte[32]), Signature = ByteString.CopyFrom(new byte[64]) },
        };
        for (var i = 1; i <= oneTimeKeys; i++)
        {
            upload.OneTimePrekeys.Add(new OneTimePrekey { KeyId = (uint)i, PublicKey = ByteString.CopyFrom(BitConverter.GetBytes(i)) });
        }

        return upload;
    }

    /// <summary>Everything the device receives up to the PONG answering a PING sent now (a barrier, no sleep).</summary>
    private static async Task<List<IMessage>> DrainAsync(RawDevice device)
    {
        await device.SendAsync(new Ping());
        var seen = new List<IMessage>();
        while (true)
        {
            var message = await device.ReceiveAnyAsync() ?? throw new IOException("connection closed before PONG");
            if (message is Pong)
            {
                return seen;
            }

            seen.Add(message);
        }
    }

    [Fact]
    public async Task Fifty_concurrent_fetches_of_one_users_bundle_never_return_the_same_one_time_prekey_twice()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var bob = await broker.LoginAsync("bob", "phone");
        await bob.SendAsync(Upload(1, oneTimeKeys: 40));
        Assert.Equal(40U, (await bob.ReceiveAsync<KeysUploaded>()).OneTimePrekeysRemaining);

        var fetchers = await Task.WhenAll(Enumerable.Range(0, 10).Select(i => broker.LoginAsync("fetcher" + i, "phone")));
        try
        {
            var bundles = await Task.WhenAll(fetchers.Select(async fetcher =>
            {
                for (ulong r = 1; r <= 5; r++)
                {
                    await fetcher.SendAsync(new FetchKeys { RequestId = r, UserId = "bob" });
                }

                var got = new List<KeyBundle>();
                for (var r = 0; r < 5; r++)
                {
                    got.Add(await fetcher.ReceiveAsync<KeyBundle>());
                }

                return got;
            }));

            var devices = bundles.SelectMany(b => b).Select(b => Assert.Single(b.Devices)).ToList();
            Assert.Equal(50, devices.Count);
            Assert.All(devices, d => Assert.Equal("phone", d.DeviceId));
            var handedOut = devices.Where(d => d.OneTimePrekey is not null).Select(d => d.OneTimePrekey.KeyId).ToList();
            Assert.Equal(40, handedOut.Count);
            Assert.Equal(40, handedOut.Distinct().Count());
        }
        finally
        {
            foreach (var fetcher in fetchers)
            {
                await fetcher.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task Key_fetches_past_the_per_connection_rate_are_RATE_LIMITED_and_consume_nothing()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "limits.key_fetches_per_second=1");
        await using var bob = await broker.LoginAsync("bob", "phone");
        await using var mallory = await broker.LoginAsync("mallory", "phone");
        await bob.SendAsync(Upload(1, oneTimeKeys: 10));
        await bob.ReceiveAsync<KeysUploaded>();

        for (ulong r = 1; r <= 3; r++)
        {
            await mallory.SendAsync(new FetchKeys { RequestId = r, UserId = "bob" });
        }

        var answers = new List<IMessage>();
        while (answers.Count < 3)
        {
            var m = await mallory.ReceiveAnyAsync() ?? throw new IOException("closed");
            if (m is KeyBundle or Error)
            {
                answers.Add(m);
            }
        }

        Assert.Equal(2, answers.Count(m => m is KeyBundle)); // the burst: twice the rate
        var error = Assert.Single(answers.OfType<Error>());
        Assert.Equal((ReasonCode.RateLimited, 3UL), (error.Reason, error.RequestId));
        Assert.True(error.RetryAfterMs > 0);
        await bob.SendAsync(new KeysUpload { RequestId = 2, OneTimePrekeys = { new OneTimePrekey { KeyId = 99, PublicKey = ByteString.CopyFrom(1) } } });
        Assert.Equal(9U, (await bob.ReceiveAsync<KeysUploaded>()).OneTimePrekeysRemaining); // 10 - 2 + 1
    }

    [Fact]
    public async Task Fetching_keys_of_a_user_who_uploaded_none_is_KEYS_NOT_FOUND()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = await broker.LoginAsync("alice", "phone");

        await alice.SendAsync(new FetchKeys { RequestId = 5, UserId = "nobody" });

        var error = await alice.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.KeysNotFound, 5UL, PacketType.FetchKeys), (error.Reason, error.RequestId, error.InReplyTo));
    }

    [Fact]
    public async Task A_device_running_low_on_one_time_prekeys_is_told_to_upload_more_live_and_on_reconnect()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "keys.low_watermark=3");
        var bob = await broker.LoginAsync("bob", "phone");
        await using var carol = await broker.LoginAsync("carol", "phone");
        await bob.SendAsync(Upload(1, oneTimeKeys: 4));
        Assert.Equal(4U, (await bob.ReceiveAsync<KeysUploaded>()).OneTimePrekeysRemaining);

        await carol.SendAsync(new FetchKeys { RequestId = 1, UserId = "bob", DeviceId = "phone" });
        await carol.ReceiveAsync<KeyBundle>();
        Assert.DoesNotContain(await DrainAsync(bob), m => m is KeysUploaded); // 3 left: not below 3

        await carol.SendAsync(new FetchKeys { RequestId = 2, UserId = "bob", DeviceId = "phone" });
        await carol.ReceiveAsync<KeyBundle>();
        var notice = await bob.ReceiveAsync<KeysUploaded>();
        Assert.Equal((0UL, 2U), (notice.RequestId, notice.OneTimePrekeysRemaining));

        await bob.DisposeAsync();
        await carol.SendAsync(new FetchKeys { RequestId = 3, UserId = "bob" });
        await carol.ReceiveAsync<KeyBundle>();
        await using var bobAgain = await broker.LoginAsync("bob", "phone");
        Assert.Equal(1U, (await bobAgain.ReceiveAsync<KeysUploaded>()).OneTimePrekeysRemaining);
    }

    [Fact]
    public async Task A_non_members_presence_subscription_is_refused_with_the_permission_reason_code()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = await broker.LoginAsync("alice", "phone", capabilities: PresenceCaps);
        await using var bob = await broker.LoginAsync("bob", "phone", capabilities: PresenceCaps);
        await using var mallory = await broker.LoginAsync("mallory", "phone", capabilities: PresenceCaps);
        await MakeDirectChatAsync(bob, "alice");

        await mallory.SendAsync(new PresenceSubscribe { RequestId = 41, UserIds = { "alice" } });
        var error = await mallory.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, 41UL, PacketType.PresenceSubscribe), (error.Reason, error.RequestId, error.InReplyTo));

        await bob.SendAsync(new PresenceSubscribe { RequestId = 42, UserIds = { "alice" } });
        var subscribed = await bob.ReceiveAsync<PresenceSubscribed>();
        Assert.Equal(42UL, subscribed.RequestId);
        Assert.Equal("alice", Assert.Single(subscribed.Current).UserId);
    }

    [Fact]
    public async Task Presence_subscriptions_past_the_bound_get_TOO_MANY_SUBSCRIPTIONS()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "presence.max_subscriptions=1");
        await using var alice = await broker.LoginAsync("alice", "phone", capabilities: PresenceCaps);
        await MakeDirectChatAsync(alice, "bob");
        await alice.SendAsync(new Send { ClientMsgId = 2, ToUserId = "carol", Body = ByteString.CopyFromUtf8("hi") });
        await alice.ReceiveAsync<Sent>();

        await alice.SendAsync(new PresenceSubscribe { RequestId = 1, UserIds = { "bob", "carol" } });

        var error = await alice.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.TooManySubscriptions, 1UL), (error.Reason, error.RequestId));
    }

    [Fact]
    public async Task A_member_whose_connection_drops_is_seen_offline_by_a_subscriber_within_1_5x_keepalive_with_last_seen()
    {
        var debounce = TimeSpan.FromMilliseconds(200);
        await using var broker = await TestBroker.StartAsync(null, "--set", "session.min_keepalive=1s", "--set", "presence.debounce=200ms");
        await using var bob = await broker.LoginAsync("bob", "phone", capabilities: PresenceCaps);
        await MakeDirectChatAsync(bob, "alice");
        await bob.SendAsync(new PresenceSubscribe { RequestId = 1, UserIds = { "alice" } });
        Assert.Equal(PresenceStatus.Offline, Assert.Single((await bob.ReceiveAsync<PresenceSubscribed>()).Current).Status);

        // Alice connects with a 1 s keepalive and then falls silent without closing: a phone losing its radio.
        await using var alice = await broker.LoginAsync("alice", "phone", keepaliveS: 1);
        var silentSince = Stopwatch.StartNew();
        var before = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        Assert.Equal(PresenceStatus.Online, (await bob.ReceiveAsync<Presence>()).Status);

        var offline = await bob.ReceiveAsync<Presence>(TimeSpan.FromSeconds(10));
        var elapsed = silentSince.Elapsed;

        Assert.Equal(("alice", PresenceStatus.Offline), (offline.UserId, offline.Status));
        // The broker closes a session silent for 1.5 x keepalive; its sweep runs once a second, so detection
        // lands between 1.5 s and 1.5 s + one sweep, then the debounce; the last second is scheduling slack on a
        // loaded test machine (the suite runs broker processes in parallel on two cores).
        var sweep = TimeSpan.FromSeconds(1); // KeepaliveMonitor.SweepInterval
        var bound = TimeSpan.FromSeconds(1.5) + sweep + debounce + TimeSpan.FromSeconds(1);
        Assert.InRange(elapsed, TimeSpan.FromSeconds(1.4), bound);
        Assert.InRange((long)offline.LastSeenMs, before + 1400, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());

        // A device subscribing later reads the same last-seen (the broker stored it).
        await using var bobLaptop = await broker.LoginAsync("bob", "laptop", capabilities: PresenceCaps);
        await bobLaptop.SendAsync(new PresenceSubscribe { RequestId = 2, UserIds = { "alice" } });
        var current = Assert.Single((await bobLaptop.ReceiveAsync<PresenceSubscribed>()).Current);
        Assert.Equal((PresenceStatus.Offline, offline.LastSeenMs), (current.Status, current.LastSeenMs));
    }

    [Fact]
    public async Task Last_seen_survives_a_broker_crash()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-lastseen-" + Guid.NewGuid().ToString("N"));
        try
        {
            ulong lastSeen;
            await using (var broker = await TestBroker.StartAsync(dataDir, "--set", "presence.debounce=0s"))
            {
                await using var bob = await broker.LoginAsync("bob", "phone", capabilities: PresenceCaps);
                await MakeDirectChatAsync(bob, "alice");
                var alice = await broker.LoginAsync("alice", "phone");
                await bob.SendAsync(new PresenceSubscribe { RequestId = 1, UserIds = { "alice" } });
                await bob.ReceiveAsync<PresenceSubscribed>();
                await alice.SendAsync(new Disconnect { Reason = ReasonCode.NormalDisconnect });
                await alice.DisposeAsync();
                Presence offline;
                do
                {
                    offline = await bob.ReceiveAsync<Presence>();
                }
                while (offline.Status != PresenceStatus.Offline);

                lastSeen = offline.LastSeenMs;
                Assert.NotEqual(0UL, lastSeen);

                // A write queued after the last-seen one: once it is durable, so is the last-seen (one writer, in order).
                await bob.SendAsync(new Send { ClientMsgId = 2, ToUserId = "alice", Body = ByteString.CopyFromUtf8("later") });
                await bob.ReceiveAsync<Sent>();
                await broker.Process.KillAsync();
            }

            await using var restarted = await TestBroker.StartAsync(dataDir);
            await using var bobAgain = await restarted.LoginAsync("bob", "phone", capabilities: PresenceCaps);
            await bobAgain.SendAsync(new PresenceSubscribe { RequestId = 2, UserIds = { "alice" } });
            var current = Assert.Single((await bobAgain.ReceiveAsync<PresenceSubscribed>()).Current);
            Assert.Equal((PresenceStatus.Offline, lastSeen), (current.Status, current.LastSeenMs));
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }

    [Fact]
    public async Task A_flapping_connection_is_coalesced_by_the_debounce_and_subscribers_see_only_the_change_that_held()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "presence.debounce=1s");
        await using var bob = await broker.LoginAsync("bob", "phone", capabilities: PresenceCaps);
        await MakeDirectChatAsync(bob, "alice");
        var alice = await broker.LoginAsync("alice", "phone");
        await bob.SendAsync(new PresenceSubscribe { RequestId = 1, UserIds = { "alice" } });
        // Nobody followed alice before: the answer carries her status as it is (docs/protocol.md).
        Assert.Equal(PresenceStatus.Online, Assert.Single((await bob.ReceiveAsync<PresenceSubscribed>()).Current).Status);

        // Five drops and reconnects, each far shorter than the debounce.
        for (var i = 0; i < 5; i++)
        {
            await alice.DisposeAsync();
            alice = await broker.LoginAsync("alice", "phone");
        }

        // Then a change that holds: the next PRESENCE bob sees is AWAY, with no OFFLINE/ONLINE before it.
        await alice.SendAsync(new PresenceSet { Status = PresenceStatus.Away });
        var next = await bob.ReceiveAsync<Presence>();
        Assert.Equal(PresenceStatus.Away, next.Status);
        await alice.DisposeAsync();
    }

    [Fact]
    public async Task Typing_reaches_online_members_and_is_never_stored()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = await broker.LoginAsync("alice", "phone", capabilities: TypingCaps);
        await using var bob = await broker.LoginAsync("bob", "phone", capabilities: TypingCaps);
        await using var bobWatch = await broker.LoginAsync("bob", "watch", capabilities: (ulong)Capability.Receipts);
        var conversation = await MakeDirectChatAsync(alice, "bob");
        await bob.ReceiveAsync<Deliver>();

        await alice.SendAsync(new Typing { ConversationId = conversation });
        var notice = await bob.ReceiveAsync<TypingNotice>();
        Assert.Equal((conversation, "alice", false), (notice.ConversationId, notice.UserId, notice.Stopped));
        await alice.SendAsync(new Typing { ConversationId = conversation, Stopped = true });
        Assert.True((await bob.ReceiveAsync<TypingNotice>()).Stopped);

        // Alice's PONG means both relays ran; the watch (no TYPING capability) got nothing, alice no echo.
        Assert.DoesNotContain(await DrainAsync(alice), m => m is TypingNotice or Error);
        Assert.DoesNotContain(await DrainAsync(bobWatch), m => m is TypingNotice);

        // Never stored: the conversation holds only the one message, and a device connecting later gets no notice.
        await alice.SendAsync(new History { RequestId = 1, ConversationId = conversation });
        var page = await alice.ReceiveAsync<HistoryPage>();
        Assert.Equal(1UL, Assert.Single(page.Messages).Seq);
        await using var bobLaptop = await broker.LoginAsync("bob", "laptop", capabilities: TypingCaps);
        Assert.DoesNotContain(await DrainAsync(bobLaptop), m => m is TypingNotice);
    }

    [Fact]
    public async Task Typing_from_a_non_member_is_NOT_A_MEMBER_and_typing_past_the_rate_is_dropped_silently()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "limits.typing_per_second=2");
        await using var alice = await broker.LoginAsync("alice", "phone", capabilities: TypingCaps);
        await using var bob = await broker.LoginAsync("bob", "phone", capabilities: TypingCaps);
        await using var mallory = await broker.LoginAsync("mallory", "phone", capabilities: TypingCaps);
        var conversation = await MakeDirectChatAsync(alice, "bob");

        await mallory.SendAsync(new Typing { ConversationId = conversation });
        var error = await mallory.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, conversation, PacketType.Typing), (error.Reason, error.RequestId, error.InReplyTo));

        for (var i = 0; i < 20; i++)
        {
            await alice.SendAsync(new Typing { ConversationId = conversation });
        }

        Assert.DoesNotContain(await DrainAsync(alice), m => m is Error);
        var notices = (await DrainAsync(bob)).OfType<TypingNotice>().Count();
        Assert.InRange(notices, 1, 5); // a burst of twice the rate (4), plus what refilled meanwhile
    }
}
