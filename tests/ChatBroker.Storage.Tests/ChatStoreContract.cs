using System.Text;

namespace ChatBroker.Storage.Tests;

/// <summary>The behaviour every <see cref="IChatStore"/> must have; run against each implementation.</summary>
public abstract class ChatStoreContract : IDisposable
{
    private readonly List<IChatStore> _stores = [];

    private protected ManualClock Clock { get; } = new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    private protected abstract IChatStore CreateStore(StorageOptions options);

    private protected IChatStore Open(Func<StorageOptions, StorageOptions>? configure = null)
    {
        var options = new StorageOptions { Clock = Clock, SweepInterval = Timeout.InfiniteTimeSpan, BlockCacheBytes = 4 << 20, WriteBufferBytes = 4 << 20 };
        var store = CreateStore(configure is null ? options : configure(options));
        _stores.Add(store);
        return store;
    }

    public virtual void Dispose()
    {
        foreach (var store in _stores)
        {
            store.Dispose();
        }

        GC.SuppressFinalize(this);
    }

    [Fact]
    public async Task Appends_to_one_conversation_get_gapless_seqs()
    {
        var store = Open();
        var results = await Task.WhenAll(Enumerable.Range(0, 500).Select(i => store.AppendAsync(Messages.To(7, "m" + i))));

        Assert.Equal(Enumerable.Range(1, 500).Select(i => (ulong)i), results.Select(r => r.Seq).Order());
        Assert.Equal(500UL, store.GetLastSeq(7));
        var stored = store.ReadRange(7, 1, 1000);
        Assert.Equal(Enumerable.Range(1, 500).Select(i => (ulong)i), stored.Select(m => m.Seq));
        foreach (var r in results)
        {
            Assert.False(r.IsDuplicate);
        }
    }

    [Fact]
    public async Task Conversations_are_sequenced_independently()
    {
        var store = Open();
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(1, "a"))).Seq);
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(2, "b"))).Seq);
        Assert.Equal(2UL, (await store.AppendAsync(Messages.To(1, "c"))).Seq);
        Assert.Equal(0UL, store.GetLastSeq(3));
        Assert.Empty(store.ReadRange(3, 1, 10));
    }

    [Fact]
    public async Task A_stored_message_reads_back_with_every_field()
    {
        var store = Open();
        var body = new byte[300];
        new Random(1).NextBytes(body);
        var sent = await store.AppendAsync(new AppendRequest
        {
            ConversationId = 42,
            SenderUserId = "alice",
            SenderDeviceId = "laptop",
            ClientMsgId = 9,
            ContentType = 3,
            Body = body,
            MediaRef = "media/abc",
        });

        var message = Assert.Single(store.ReadRange(42, 1, 10));
        Assert.Equal((42UL, 1UL, sent.TimestampMs), (message.ConversationId, message.Seq, message.TimestampMs));
        Assert.Equal(("alice", "laptop", 9UL, 3U, "media/abc"), (message.SenderUserId, message.SenderDeviceId, message.ClientMsgId, message.ContentType, message.MediaRef));
        Assert.Equal(body, message.Body.ToArray());
        Assert.Equal(Clock.GetUtcNow().ToUnixTimeMilliseconds(), sent.TimestampMs);
    }

    [Fact]
    public async Task ReadRange_starts_at_fromSeq_and_stops_at_limit()
    {
        var store = Open();
        for (var i = 1; i <= 10; i++)
        {
            await store.AppendAsync(Messages.To(5, "m" + i));
        }

        await store.AppendAsync(Messages.To(6, "other"));
        Assert.Equal(["m4", "m5", "m6"], store.ReadRange(5, 4, 3).Select(m => m.Text()));
        Assert.Equal(["m9", "m10"], store.ReadRange(5, 9, 100).Select(m => m.Text()));
    }

    [Fact]
    public async Task ReadBefore_returns_the_page_just_before_a_seq_in_ascending_order()
    {
        var store = Open();
        for (var i = 1; i <= 10; i++)
        {
            await store.AppendAsync(Messages.To(5, "m" + i));
        }

        Assert.Equal([5UL, 6UL, 7UL], store.ReadBefore(5, 8, 3).Select(m => m.Seq));
        Assert.Equal([8UL, 9UL, 10UL], store.ReadBefore(5, ulong.MaxValue, 3).Select(m => m.Seq));
        Assert.Equal([1UL, 2UL], store.ReadBefore(5, 3, 50).Select(m => m.Seq));
        Assert.Empty(store.ReadBefore(5, 1, 50));
    }

    [Fact]
    public async Task Repeated_client_msg_id_returns_the_original_result_and_stores_nothing()
    {
        var store = Open();
        var first = await store.AppendAsync(Messages.To(1, "hello", clientMsgId: 77));
        Clock.Advance(TimeSpan.FromMinutes(5));
        var again = await store.AppendAsync(Messages.To(1, "hello", clientMsgId: 77));

        Assert.True(again.IsDuplicate);
        Assert.Equal((first.ConversationId, first.Seq, first.TimestampMs), (again.ConversationId, again.Seq, again.TimestampMs));
        Assert.Single(store.ReadRange(1, 1, 10));

        // Another device of the same user, or another user, may use the same client_msg_id.
        Assert.False((await store.AppendAsync(Messages.To(1, "x", clientMsgId: 77, device: "tablet"))).IsDuplicate);
        Assert.False((await store.AppendAsync(Messages.To(1, "y", clientMsgId: 77, sender: "bob"))).IsDuplicate);
        Assert.Equal(3UL, store.GetLastSeq(1));
    }

    [Fact]
    public async Task Client_msg_ids_in_any_order_are_deduplicated_past_the_device_cache()
    {
        // The writer skips the lookup for a client_msg_id above the device's newest; one below it,
        // or a device evicted from the one-device cache, must still be looked up.
        var store = Open(o => o with { IdempotencyCacheDevices = 1 });
        Assert.False((await store.AppendAsync(Messages.To(1, "ten", clientMsgId: 10))).IsDuplicate);
        Assert.False((await store.AppendAsync(Messages.To(1, "five", clientMsgId: 5))).IsDuplicate);
        Assert.False((await store.AppendAsync(Messages.To(1, "tablet", clientMsgId: 10, device: "tablet"))).IsDuplicate);
        var five = await store.AppendAsync(Messages.To(1, "five", clientMsgId: 5));
        var ten = await store.AppendAsync(Messages.To(1, "ten", clientMsgId: 10));
        Assert.True(five.IsDuplicate);
        Assert.Equal(2UL, five.Seq);
        Assert.True(ten.IsDuplicate);
        Assert.Equal(1UL, ten.Seq);
        Assert.True((await store.AppendAsync(Messages.To(1, "tablet", clientMsgId: 10, device: "tablet"))).IsDuplicate);
        Assert.False((await store.AppendAsync(Messages.To(1, "eleven", clientMsgId: 11))).IsDuplicate);
        Assert.Equal(4UL, store.GetLastSeq(1));
    }

    [Fact]
    public async Task Concurrent_duplicates_in_one_batch_store_one_message()
    {
        var store = Open();
        var results = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => store.AppendAsync(Messages.To(3, "same", clientMsgId: 5))));

        Assert.Single(results, r => !r.IsDuplicate);
        Assert.All(results, r => Assert.Equal(1UL, r.Seq));
        Assert.Single(store.ReadRange(3, 1, 100));
    }

    [Fact]
    public async Task Idempotency_key_expires_after_the_window()
    {
        var store = Open(o => o with { IdempotencyWindow = TimeSpan.FromHours(1) });
        await store.AppendAsync(Messages.To(1, "a", clientMsgId: 1));
        Clock.Advance(TimeSpan.FromMinutes(59));
        Assert.True((await store.AppendAsync(Messages.To(1, "a", clientMsgId: 1))).IsDuplicate);

        Clock.Advance(TimeSpan.FromMinutes(2));
        var late = await store.AppendAsync(Messages.To(1, "a", clientMsgId: 1));
        Assert.False(late.IsDuplicate);
        Assert.Equal(2UL, late.Seq);
    }

    [Fact]
    public async Task Sweep_removes_expired_idempotency_keys_only()
    {
        var store = Open(o => o with { IdempotencyWindow = TimeSpan.FromHours(1), Retention = RetentionPolicy.Keep });
        await store.AppendAsync(Messages.To(1, "old", clientMsgId: 1));
        Clock.Advance(TimeSpan.FromMinutes(90));
        await store.AppendAsync(Messages.To(1, "new", clientMsgId: 2));

        Assert.Equal(1, await store.SweepAsync());
        Assert.True((await store.AppendAsync(Messages.To(1, "new", clientMsgId: 2))).IsDuplicate);
        Assert.Equal(2, store.ReadRange(1, 1, 10).Count);
    }

    [Fact]
    public async Task Fan_out_gives_each_recipient_a_gapless_inbox()
    {
        var store = Open();
        var results = await Task.WhenAll(Enumerable.Range(0, 100).Select(i => store.AppendAsync(Messages.To((ulong)(1 + (i % 3)), "m" + i) with
        {
            InboxRecipients = i % 2 == 0 ? ["bob", "carol"] : ["bob"],
        })));

        var bob = store.ReadInbox("bob", 0, 1000);
        Assert.Equal(Enumerable.Range(1, 100).Select(i => (ulong)i), bob.Select(e => e.InboxSeq));
        Assert.Equal(50, store.ReadInbox("carol", 0, 1000).Count);
        Assert.Equal(100UL, store.GetLastInboxSeq("bob"));
        Assert.Equal(0UL, store.GetLastInboxSeq("dave"));

        // Every inbox entry points at the message that produced it.
        foreach (var r in results)
        {
            var entry = Assert.Single(bob, e => e.InboxSeq == r.InboxSeqs[0]);
            Assert.Equal((r.ConversationId, r.Seq, r.TimestampMs), (entry.ConversationId, entry.Seq, entry.TimestampMs));
        }

        Assert.Equal([98UL, 99UL, 100UL], store.ReadInbox("bob", 97, 10).Select(e => e.InboxSeq));
    }

    [Fact]
    public async Task User_ids_that_are_prefixes_of_each_other_have_separate_inboxes()
    {
        var store = Open();
        await store.AppendAsync(Messages.To(1, "x") with { InboxRecipients = ["bob"] });
        await store.AppendAsync(Messages.To(1, "y") with { InboxRecipients = ["bobby"] });
        await store.AppendAsync(Messages.To(1, "z") with { InboxRecipients = ["bobby"] });

        Assert.Single(store.ReadInbox("bob", 0, 10));
        Assert.Equal(2, store.ReadInbox("bobby", 0, 10).Count);
        Assert.Equal(1UL, store.GetLastInboxSeq("bob"));
    }

    [Fact]
    public async Task Several_cursors_move_forward_only_in_one_write_and_report_before_and_after()
    {
        var store = Open();
        await store.AdvanceCursorAsync("bob", "#delivered", CursorStream.Conversation(7), 9);

        var moves = await store.AdvanceCursorsAsync("bob",
        [
            new("phone", CursorStream.Inbox, 5),
            new("#delivered", CursorStream.Conversation(7), 4), // behind: stays at 9
            new("#delivered", CursorStream.Conversation(8), 3),
        ]);

        Assert.Equal([new CursorMove(0, 5), new CursorMove(9, 9), new CursorMove(0, 3)], moves);
        Assert.Equal(5UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(9UL, store.GetCursor("bob", "#delivered", CursorStream.Conversation(7)));
        Assert.Equal(3UL, store.GetCursor("bob", "#delivered", CursorStream.Conversation(8)));

        // Racing single advances and multi-cursor advances of the same cursors: still the maximum.
        await Task.WhenAll(Enumerable.Range(1, 40).Select(i => i % 2 == 0
            ? (Task)store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, (ulong)i)
            : store.AdvanceCursorsAsync("bob", [new("phone", CursorStream.Inbox, (ulong)i), new("#delivered", CursorStream.Conversation(8), (ulong)i)])));
        Assert.Equal(40UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(39UL, store.GetCursor("bob", "#delivered", CursorStream.Conversation(8)));

        Assert.Empty(await store.AdvanceCursorsAsync("bob", []));
        Assert.Throws<ArgumentException>(() => { _ = store.AdvanceCursorsAsync("bob", [new("phone", CursorStream.Inbox, 1), new("phone", CursorStream.Inbox, 2)]); });
    }

    [Fact]
    public async Task Cursor_moves_forward_only()
    {
        var store = Open();
        Assert.Equal(0UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(10UL, await store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 10));
        Assert.Equal(10UL, await store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 4));
        await Task.WhenAll(Enumerable.Range(1, 40).Select(i => store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, (ulong)i)));

        Assert.Equal(40UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(0UL, store.GetCursor("bob", "laptop", CursorStream.Inbox));
        Assert.Equal(0UL, store.GetCursor("bob", "phone", CursorStream.Conversation(9)));
    }

    [Fact]
    public async Task Direct_conversation_is_created_once_whatever_the_order_of_users()
    {
        var store = Open();
        var all = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => i % 2 == 0
            ? store.GetOrCreateDirectAsync("alice", "bob")
            : store.GetOrCreateDirectAsync("bob", "alice")));

        Assert.Single(all.Select(c => c.Id).Distinct());
        Assert.Equal(ConversationKind.Direct, all[0].Kind);
        Assert.Equal(["alice", "bob"], store.ListMembers(all[0].Id).Select(m => m.UserId).Order());
        Assert.Equal([all[0].Id], store.ListConversations("alice"));
        Assert.NotEqual(all[0].Id, (await store.GetOrCreateDirectAsync("alice", "carol")).Id);
    }

    [Fact]
    public async Task Group_members_are_added_changed_removed_and_listed()
    {
        var store = Open();
        var group = await store.CreateGroupAsync("alice", "friends", ["bob", "carol"]);

        Assert.Equal(group, store.GetConversation(group.Id));
        Assert.Equal(MemberRole.Admin, store.GetMember(group.Id, "alice")?.Role);
        Assert.Equal(MemberRole.Member, store.GetMember(group.Id, "bob")?.Role);

        await store.SetMemberAsync(group.Id, "dave", MemberRole.Member);
        await store.SetMemberAsync(group.Id, "bob", MemberRole.Admin);
        Assert.True(await store.RemoveMemberAsync(group.Id, "carol"));
        Assert.False(await store.RemoveMemberAsync(group.Id, "carol"));

        Assert.Equal(["alice", "bob", "dave"], store.ListMembers(group.Id).Select(m => m.UserId).Order());
        Assert.Equal(MemberRole.Admin, store.GetMember(group.Id, "bob")?.Role);
        Assert.Null(store.GetMember(group.Id, "carol"));
        Assert.Empty(store.ListConversations("carol"));
        Assert.Equal([group.Id], store.ListConversations("dave"));
        Assert.Null(store.GetConversation(group.Id + 100));
        var missing = await Assert.ThrowsAsync<StorageException>(() => store.SetMemberAsync(group.Id + 100, "x", MemberRole.Member));
        Assert.Equal(StorageFailure.NotFound, missing.Failure);
    }

    [Fact]
    public async Task Push_jobs_are_durable_until_completed()
    {
        var store = Open();
        var sent = await store.AppendAsync(Messages.To(1, "hi") with { PushRecipients = ["bob", "carol"] });
        var extra = await store.EnqueuePushJobAsync("dave", 1, sent.Seq);
        var now = Clock.GetUtcNow().ToUnixTimeMilliseconds();

        var due = store.ListDuePushJobs(now, 10);
        Assert.Equal(["bob", "carol", "dave"], due.Select(j => j.UserId));
        Assert.All(due, j => Assert.Equal((1UL, sent.Seq), (j.ConversationId, j.Seq)));
        Assert.Equal(3, due.Select(j => j.Id).Distinct().Count());

        Assert.True(await store.ReschedulePushJobAsync(due[0].Id, now + 60_000));
        await store.CompletePushJobAsync(extra.Id);
        var stillDue = Assert.Single(store.ListDuePushJobs(now, 10));
        Assert.Equal("carol", stillDue.UserId);
        var later = store.ListDuePushJobs(now + 60_000, 10);
        Assert.Equal(1, Assert.Single(later, j => j.UserId == "bob").Attempts);
        Assert.False(await store.ReschedulePushJobAsync(extra.Id, now));
    }

    [Fact]
    public async Task Last_seen_is_stored_per_user()
    {
        var store = Open();
        Assert.Null(store.GetLastSeen("bob"));
        await store.SetLastSeenAsync("bob", 1234);
        await store.SetLastSeenAsync("bob", 5678);
        Assert.Equal(5678, store.GetLastSeen("bob"));
    }

    // Issue 18: account records kept with presence (settings, revoked devices) and the direct lookup.
    [Fact]
    public async Task User_settings_and_revocations_are_stored_per_user_beside_last_seen()
    {
        var store = Open();
        Assert.Equal(UserSettings.Default, store.GetUserSettings("bob"));
        await store.SetLastSeenAsync("bob", 42);
        await store.SetUserSettingsAsync("bob", new UserSettings(PresenceVisibility.Contacts, ["carol", "dave"]));
        var settings = store.GetUserSettings("bob");
        Assert.Equal(PresenceVisibility.Contacts, settings.Visibility);
        Assert.Equal(["carol", "dave"], settings.Contacts);
        Assert.True(settings.Shows("bob", "carol") && settings.Shows("bob", "bob") && !settings.Shows("bob", "eve"));
        Assert.Equal(42, store.GetLastSeen("bob")); // same family, other key

        Assert.Null(store.GetDeviceRevokedAt("bob", "phone"));
        await store.RevokeDeviceAsync("bob", "phone", 2000);
        await store.RevokeDeviceAsync("bob", "phone", 1000); // an earlier time changes nothing
        await store.RevokeDeviceAsync("bob", "#all", 1500);
        Assert.Equal(2000, store.GetDeviceRevokedAt("bob", "phone"));
        Assert.Equal([new RevokedDevice("#all", 1500), new RevokedDevice("phone", 2000)], store.ListRevokedDevices("bob"));
        Assert.Empty(store.ListRevokedDevices("bo"));
        Assert.Equal(UserSettings.Default, store.GetUserSettings("carol"));
    }

    [Fact]
    public async Task FindDirect_finds_a_direct_conversation_either_way_round_and_creates_nothing()
    {
        var store = Open();
        Assert.Null(store.FindDirect("alice", "bob"));
        Assert.Empty(store.ListConversations("alice"));
        var direct = await store.GetOrCreateDirectAsync("alice", "bob");
        Assert.Equal(direct.Id, store.FindDirect("bob", "alice"));
        Assert.Null(store.FindDirect("alice", "carol"));
    }

    [Fact]
    public async Task Fifty_concurrent_takers_never_get_the_same_prekey()
    {
        var store = Open();
        var bundle = new PrekeyBundle(new byte[] { 1, 2 }, 7, new byte[] { 3 }, new byte[] { 4, 5 });
        var prekeys = Enumerable.Range(1, 40).Select(i => new OneTimePrekey((uint)i, new[] { (byte)i })).ToList();
        await store.UploadPrekeysAsync("bob", "phone", bundle, prekeys);
        Assert.Equal(40, store.CountOneTimePrekeys("bob", "phone"));
        Assert.Equal(25, store.CountOneTimePrekeys("bob", "phone", upTo: 25));
        Assert.Equal(40, store.CountOneTimePrekeys("bob", "phone", upTo: 41));

        var takes = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => Task.Run(() => store.TakePrekeysAsync("bob", "phone"))));

        var taken = takes.Select(t => t!.OneTimePrekey).Where(k => k is not null).Select(k => k!.Value.Id).ToList();
        Assert.Equal(40, taken.Count);
        Assert.Equal(40, taken.Distinct().Count());
        Assert.Equal(10, takes.Count(t => t!.OneTimePrekey is null));
        Assert.All(takes, t => Assert.Equal(7U, t!.Bundle.SignedPrekeyId));
        Assert.Equal(new byte[] { 4, 5 }, takes[0]!.Bundle.Signature.ToArray());
        Assert.Equal(0, store.CountOneTimePrekeys("bob", "phone"));
        Assert.Null(await store.TakePrekeysAsync("bob", "laptop"));
    }

    [Fact]
    public async Task Key_devices_are_the_devices_with_a_bundle_and_their_bundle_reads_without_consuming()
    {
        var store = Open();
        var bundle = new PrekeyBundle(new byte[] { 1 }, 3, new byte[] { 2 }, new byte[] { 3 });
        await store.UploadPrekeysAsync("bob", "phone", bundle, [new OneTimePrekey(1, new byte[] { 9 }), new OneTimePrekey(2, new byte[] { 8 })]);
        await store.UploadPrekeysAsync("bob", "laptop", bundle, []);
        await store.UploadPrekeysAsync("bob", "tablet", null, [new OneTimePrekey(1, new byte[] { 7 })]);
        await store.UploadPrekeysAsync("bobby", "phone", bundle, []);
        await store.UploadPrekeysAsync("bo", "phone", bundle, []);

        Assert.Equal(["laptop", "phone"], store.ListKeyDevices("bob").Order(StringComparer.Ordinal));
        Assert.Empty(store.ListKeyDevices("carol"));
        Assert.Equal(3U, store.GetPrekeyBundle("bob", "phone")!.SignedPrekeyId);
        Assert.Null(store.GetPrekeyBundle("bob", "tablet"));
        Assert.Equal(2, store.CountOneTimePrekeys("bob", "phone"));
    }

    [Fact]
    public async Task Upload_then_take_in_the_same_batch_sees_the_upload()
    {
        var store = Open();
        var bundle = new PrekeyBundle(new byte[] { 1 }, 1, new byte[] { 2 }, new byte[] { 3 });
        var upload = store.UploadPrekeysAsync("bob", "phone", bundle, [new OneTimePrekey(1, new byte[] { 9 })]);
        var take = store.TakePrekeysAsync("bob", "phone");
        await upload;
        Assert.Equal(1U, (await take)!.OneTimePrekey!.Value.Id);
    }

    [Fact]
    public async Task Retention_removes_expired_messages_but_keeps_the_newest_and_the_sequence()
    {
        var store = Open(o => o with { Retention = RetentionPolicy.ForDays(30) });
        for (var i = 0; i < 5; i++)
        {
            await store.AppendAsync(Messages.To(1, "old" + i) with { InboxRecipients = ["bob"] });
        }

        await store.AppendAsync(Messages.To(2, "only") with { InboxRecipients = ["carol"] });
        Clock.Advance(TimeSpan.FromDays(20));
        await store.AppendAsync(Messages.To(1, "recent") with { InboxRecipients = ["bob"] });
        Clock.Advance(TimeSpan.FromDays(11));

        var removed = await store.SweepAsync();

        Assert.Equal(5 + 5, removed); // five messages and five inbox entries
        Assert.Equal([6UL], store.ReadRange(1, 1, 100).Select(m => m.Seq));
        Assert.Equal([1UL], store.ReadRange(2, 1, 100).Select(m => m.Seq)); // newest of its conversation: kept
        Assert.Equal([6UL], store.ReadInbox("bob", 0, 100).Select(e => e.InboxSeq));
        Assert.Equal(7UL, (await store.AppendAsync(Messages.To(1, "next"))).Seq);
        Assert.Equal(2UL, (await store.AppendAsync(Messages.To(2, "next"))).Seq);
    }

    [Fact]
    public async Task Retention_removes_a_backlog_larger_than_one_delete_chunk()
    {
        var store = Open(o => o with { Retention = RetentionPolicy.ForDays(30) });
        var appends = new List<Task<AppendResult>>();
        for (var i = 0; i < 2_500; i++)
        {
            appends.Add(store.AppendAsync(Messages.To(1 + (ulong)(i % 2), "old" + i) with { InboxRecipients = ["bob"] }));
        }

        await Task.WhenAll(appends);
        Clock.Advance(TimeSpan.FromDays(31));
        await store.AppendAsync(Messages.To(1, "recent") with { InboxRecipients = ["bob"] });

        // Conversation 1: 1,250 old, all expired; conversation 2: 1,250 old, the newest kept; bob's
        // inbox: 2,500 old, all expired. Deletes reach the writer in chunks of 1,024 keys.
        Assert.Equal(1_250 + 1_249 + 2_500, await store.SweepAsync());
        Assert.Equal([1_251UL], store.ReadRange(1, 1, 10_000).Select(m => m.Seq));
        Assert.Equal([1_250UL], store.ReadRange(2, 1, 10_000).Select(m => m.Seq));
        Assert.Equal([2_501UL], store.ReadInbox("bob", 0, 10_000).Select(e => e.InboxSeq));
        Assert.Equal(0, await store.SweepAsync());
    }

    [Fact]
    public async Task Keep_retention_removes_nothing()
    {
        var store = Open(o => o with { Retention = RetentionPolicy.Keep });
        await store.AppendAsync(Messages.To(1, "a"));
        await store.AppendAsync(Messages.To(1, "b"));
        Clock.Advance(TimeSpan.FromDays(3650));

        Assert.Equal(0, await store.SweepAsync());
        Assert.Equal(2, store.ReadRange(1, 1, 10).Count);
    }

    [Fact]
    public async Task Appends_proceed_while_a_sweep_runs()
    {
        var store = Open(o => o with { Retention = RetentionPolicy.ForDays(1) });
        for (var i = 0; i < 200; i++)
        {
            await store.AppendAsync(Messages.To((ulong)(1 + (i % 20)), "old"));
        }

        Clock.Advance(TimeSpan.FromDays(2));
        var sweep = store.SweepAsync();
        var appends = await Task.WhenAll(Enumerable.Range(0, 200).Select(i => store.AppendAsync(Messages.To((ulong)(1 + (i % 20)), "new"))));
        await sweep;

        for (ulong c = 1; c <= 20; c++)
        {
            var seqs = store.ReadRange(c, 1, 100).Select(m => m.Seq).ToList();
            Assert.Equal(20UL, seqs.Max());
            Assert.Equal(Enumerable.Range(0, seqs.Count).Select(i => seqs[0] + (ulong)i), seqs);
        }

        Assert.Equal(200, appends.Length);
    }

    [Fact]
    public async Task A_closed_store_refuses_writes()
    {
        var store = Open();
        await store.AppendAsync(Messages.To(1, "a"));
        store.Dispose();
        var closed = await Assert.ThrowsAsync<StorageException>(() => store.AppendAsync(Messages.To(1, "b")));
        Assert.Equal(StorageFailure.Closed, closed.Failure);
    }

    [Fact]
    public void Nonsensical_options_are_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Open(o => o with { MaxBatchCount = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => Open(o => o with { QueueCapacity = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => Open(o => o with { SweepInterval = TimeSpan.Zero }));
    }

    [Fact]
    public async Task A_batch_bound_of_one_still_sequences_correctly()
    {
        var store = Open(o => o with { MaxBatchCount = 1, MaxBatchBytes = 1 });
        var results = await Task.WhenAll(Enumerable.Range(0, 50).Select(i => store.AppendAsync(Messages.To(1, "m" + i) with { InboxRecipients = ["bob"] })));
        Assert.Equal(Enumerable.Range(1, 50).Select(i => (ulong)i), results.Select(r => r.Seq).Order());
        Assert.Equal(Enumerable.Range(1, 50).Select(i => (ulong)i), results.Select(r => r.InboxSeqs[0]).Order());
    }

    [Fact]
    public async Task Invalid_arguments_are_rejected_before_queueing()
    {
        var store = Open();
        await Assert.ThrowsAsync<ArgumentException>(() => store.AppendAsync(Messages.To(1, "a", sender: "")));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.AppendAsync(Messages.To(0, "a")));
        Assert.Throws<ArgumentOutOfRangeException>(() => store.ReadRange(1, 1, 0));
        Assert.Throws<ArgumentException>(() => store.ReadInbox(new string('x', 2000), 0, 1));
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(1, Encoding.UTF8.GetString(new byte[] { 65 })))).Seq);
    }

    [Fact]
    public async Task A_copied_message_is_stored_at_its_seq_with_its_inbox_entries_once()
    {
        var store = Open();
        var message = new StoredMessage(42, 7, 1_700_000_000_123, "alice", "phone", 99, 1, null, Encoding.UTF8.GetBytes("hi"));
        var first = await store.StoreCopyAsync(message, ["bob", "carol"]);
        Assert.False(first.IsDuplicate);
        Assert.Equal([1UL, 1UL], first.InboxSeqs);
        var again = await store.StoreCopyAsync(message, ["bob", "carol"]);
        Assert.True(again.IsDuplicate);
        Assert.Empty(again.InboxSeqs);
        var older = await store.StoreCopyAsync(message with { Seq = 3 }, ["bob"]);
        Assert.True(older.IsDuplicate);

        Assert.Equal(7UL, store.GetLastSeq(42));
        var stored = Assert.Single(store.ReadRange(42, 1, 10));
        Assert.Equal((7UL, 1_700_000_000_123L, "alice", "phone", 99UL, "hi"), (stored.Seq, stored.TimestampMs, stored.SenderUserId, stored.SenderDeviceId, stored.ClientMsgId, stored.Text()));
        var entry = Assert.Single(store.ReadInbox("bob", 0, 10));
        Assert.Equal((1UL, 42UL, 7UL), (entry.InboxSeq, entry.ConversationId, entry.Seq));

        // A later seq may skip; the inbox seqs of the recipient keep counting.
        var next = await store.StoreCopyAsync(message with { Seq = 9 }, ["bob"]);
        Assert.Equal([2UL], next.InboxSeqs);
        Assert.Equal([7UL, 9UL], store.ReadRange(42, 1, 10).Select(m => m.Seq));
    }

    [Fact]
    public async Task A_copy_never_replaces_a_log_record_the_store_has()
    {
        // A copy that differs from the log (a failed-over owner's stale message at a seq the new owner gave to another)
        // adds the recipient's entry at most; the log keeps its own message, even below the log's last seq.
        var store = Open();
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(42, "m1", clientMsgId: 1))).Seq);
        Assert.Equal(2UL, (await store.AppendAsync(Messages.To(42, "m2", clientMsgId: 2))).Seq);
        var stale = new StoredMessage(42, 1, Clock.GetUtcNow().ToUnixTimeMilliseconds(), "mallory", "phone", 9, 1, null, Encoding.UTF8.GetBytes("stale"));
        await store.StoreCopyAsync(stale, ["bob"]);
        Assert.Equal(["m1", "m2"], store.ReadRange(42, 1, 10).Select(m => m.Text()));

        // A seq the log lacks (a home holds only what was copied to it) is written, even below the log's last.
        var other = new StoredMessage(43, 5, Clock.GetUtcNow().ToUnixTimeMilliseconds(), "alice", "phone", 5, 1, null, Encoding.UTF8.GetBytes("m5"));
        await store.StoreCopyAsync(other, ["bob"]);
        await store.StoreCopyAsync(other with { Seq = 3, ClientMsgId = 3, Body = Encoding.UTF8.GetBytes("m3") }, ["carol"]);
        Assert.Equal(["m3", "m5"], store.ReadRange(43, 1, 10).Select(m => m.Text()));
    }

    [Fact]
    public async Task A_copied_message_brings_its_idempotency_mark_so_a_retry_of_its_send_here_gets_its_seq()
    {
        // A node that later sequences the conversation (a failover) may hold the message only as a home's copy: a
        // retry of the SEND must resolve to it, not to a new seq.
        var store = Open();
        var copy = new StoredMessage(42, 7, Clock.GetUtcNow().ToUnixTimeMilliseconds(), "alice", "phone", 7, 1, null, Encoding.UTF8.GetBytes("m7"));
        Assert.False((await store.StoreCopyAsync(copy, ["bob"])).IsDuplicate);
        var retry = await store.AppendAsync(Messages.To(42, "m7", clientMsgId: 7));
        Assert.True(retry.IsDuplicate);
        Assert.Equal(7UL, retry.Seq);
        Assert.Equal(8UL, (await store.AppendAsync(Messages.To(42, "m8", clientMsgId: 8))).Seq);
    }

    [Fact]
    public async Task A_direct_conversation_at_a_derived_id_is_created_once_and_not_reused_by_the_counter()
    {
        var store = Open();
        var id = ChatStore.FirstDerivedConversationId + 12345;
        var created = await store.GetOrCreateDirectAtAsync(id, "alice", "bob");
        Assert.Equal((id, ConversationKind.Direct), (created.Id, created.Kind));
        Assert.Equal(["alice", "bob"], store.ListMembers(id).Select(m => m.UserId).Order());
        Assert.Contains(id, store.ListConversations("bob"));

        // The id is taken: another pair gets the existing record back and sees that it is not theirs.
        var collision = await store.GetOrCreateDirectAtAsync(id, "carol", "dave");
        Assert.Equal("alice", collision.CreatedBy);
        Assert.Equal(["alice", "bob"], store.ListMembers(id).Select(m => m.UserId).Order());

        var group = await store.CreateGroupAsync("alice", "g", ["bob"]);
        Assert.True(group.Id < ChatStore.FirstDerivedConversationId);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.GetOrCreateDirectAtAsync(5, "alice", "bob"));
    }

    [Fact]
    public async Task A_group_at_a_drawn_id_is_created_only_if_the_id_is_free()
    {
        var store = Open();
        var id = ChatStore.FirstDrawnGroupId + 777;
        var created = await store.CreateGroupAtAsync(id, "alice", "trip", ["bob", "alice"]);
        Assert.Equal((id, ConversationKind.Group, "trip"), (created!.Id, created.Kind, created.Title));
        Assert.Equal([("alice", MemberRole.Admin), ("bob", MemberRole.Member)], store.ListMembers(id).Select(m => (m.UserId, m.Role)).Order());
        Assert.Contains(id, store.ListConversations("bob"));

        // Taken: nothing is written, the caller draws again.
        Assert.Null(await store.CreateGroupAtAsync(id, "carol", "other", ["dave"]));
        Assert.Equal("trip", store.GetConversation(id)!.Title);
        Assert.Null(store.GetMember(id, "dave"));

        // The counter never allocates in the drawn range, which is below the derived one.
        Assert.True((await store.CreateGroupAsync("alice", "g", ["bob"])).Id < ChatStore.FirstDrawnGroupId);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.CreateGroupAtAsync(5, "alice", null, []));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.CreateGroupAtAsync(ChatStore.FirstDerivedConversationId, "alice", null, []));
    }
}

public sealed class InMemoryChatStoreTests : ChatStoreContract
{
    private protected override IChatStore CreateStore(StorageOptions options) => new InMemoryChatStore(options);
}

public class RocksDbChatStoreTests : ChatStoreContract
{
    private readonly List<TempDirectory> _directories = [];

    private protected virtual Durability Durability => Durability.Sync;

    private protected override IChatStore CreateStore(StorageOptions options)
    {
        var directory = new TempDirectory();
        _directories.Add(directory);
        return RocksDbChatStore.Open(options with { Path = directory.Path, Durability = Durability });
    }

    public override void Dispose()
    {
        base.Dispose();
        foreach (var directory in _directories)
        {
            directory.Dispose();
        }
    }
}

/// <summary>The same contract with <see cref="Durability.Async"/>, where an idle store lets the caller
/// write its own op (CommitWriter.TryWriteHere) instead of the builder thread.</summary>
public sealed class RocksDbChatStoreAsyncTests : RocksDbChatStoreTests
{
    private protected override Durability Durability => Durability.Async;

    [Fact]
    public async Task An_append_to_an_idle_store_completes_on_the_callers_thread()
    {
        var store = Open(o => o with { CallerWritesAfterIdle = TimeSpan.Zero });
        var first = store.AppendAsync(Messages.To(1, "a"));
        Assert.True(first.IsCompleted);
        Assert.Equal(1UL, (await first).Seq);
        var second = store.AppendAsync(Messages.To(1, "b") with { InboxRecipients = ["bob"] });
        Assert.True(second.IsCompleted);
        Assert.Equal(2UL, (await second).Seq);
        Assert.Equal(["a", "b"], store.ReadRange(1, 1, 10).Select(m => Encoding.UTF8.GetString(m.Body.Span)));
    }

    [Fact]
    public async Task Appends_issued_in_order_by_one_caller_keep_their_order_while_others_race()
    {
        var store = Open(o => o with { CallerWritesAfterIdle = TimeSpan.Zero });
        using var stop = new CancellationTokenSource();
        // Others keep the writer busy and idle by turns, so the ordered caller's appends go now inline,
        // now through the queue.
        var others = Enumerable.Range(0, 3).Select(i => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await store.AppendAsync(Messages.To(1, "other" + i));
                // An append written by its caller completes before AppendAsync returns, so this loop would
                // never give its thread back; a session always waits for its socket between bursts.
                await Task.Yield();
            }
        })).ToList();

        var ordered = new List<Task<AppendResult>>();
        for (var i = 0; i < 2_000; i++)
        {
            ordered.Add(store.AppendAsync(Messages.To(1, "mine" + i))); // not awaited: pipelined, like a session
            if (i % 7 == 0)
            {
                await Task.Yield();
            }
        }

        var seqs = (await Task.WhenAll(ordered)).Select(r => r.Seq).ToList();
        await stop.CancelAsync();
        await Task.WhenAll(others);
        Assert.Equal(seqs.Order(), seqs);
        var all = store.ReadRange(1, 1, 10_000).Select(m => m.Seq).ToList();
        Assert.Equal(Enumerable.Range(1, all.Count).Select(i => (ulong)i), all);
    }

    [Fact]
    public void Appends_of_callers_in_completion_scopes_keep_each_callers_order_when_handed_to_one_another()
    {
        // Like the broker's read loops: each thread appends inside a completion scope without waiting for
        // the append (pipelined), so when threads meet at the writer, ops are handed to the one writing.
        var store = Open(o => o with { CallerWritesAfterIdle = TimeSpan.Zero });
        const int Threads = 3;
        const int PerThread = 1_500;
        var issued = new List<Task<AppendResult>>[Threads];
        var threads = Enumerable.Range(0, Threads).Select(t => new Thread(() =>
        {
            var mine = issued[t] = new List<Task<AppendResult>>(PerThread);
            var completions = new AppendCompletionScope(); // this thread's, as a session's read loop owns one
            for (var i = 0; i < PerThread; i++)
            {
                var scoped = completions.Enter();
                try
                {
                    mine.Add(store.AppendAsync(Messages.To(1, $"t{t}-{i}"), completions));
                }
                finally
                {
                    if (scoped)
                    {
                        completions.Exit();
                    }
                }

                if (i % 32 == 31)
                {
                    Task.WaitAll(mine[(i - 31)..]); // a bounded window, as a session's socket would impose
                }
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        var seqs = issued.Select(list => list.Select(task => task.Result.Seq).ToList()).ToList();
        foreach (var mine in seqs)
        {
            Assert.Equal(mine.Order(), mine); // each caller's appends in the order it issued them
        }

        Assert.Equal(Enumerable.Range(1, Threads * PerThread).Select(i => (ulong)i), seqs.SelectMany(x => x).Order());
        Assert.Equal(Threads * PerThread, store.ReadRange(1, 1, 10_000).Count);
    }
}
