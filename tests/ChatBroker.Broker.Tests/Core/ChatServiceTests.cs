using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>The messaging core over the in-memory store and in-memory devices: no sockets.</summary>
public sealed class ChatServiceTests : IAsyncLifetime
{
    private readonly InMemoryChatStore _store = new();
    private readonly SessionRegistry _registry = new();
    private readonly BrokerMetrics _metrics = new("test");
    private ChatService _chat = null!;

    public Task InitializeAsync()
    {
        _chat = new ChatService(_store, _registry, new ConversationDirectory(_store), _metrics, TimeProvider.System);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _store.DisposeAsync();
        _metrics.Dispose();
    }

    private FakeDevice Online(string user, string device)
    {
        var d = new FakeDevice(user, device);
        _registry.Register(d, 10, out _);
        return d;
    }

    private static Send Text(ulong id, string to, string text) => new() { ClientMsgId = id, ToUserId = to, Body = ByteString.CopyFromUtf8(text) };

    [Fact]
    public async Task Send_notifies_every_online_device_of_every_member_including_the_senders_own()
    {
        var alicePhone = Online("alice", "phone");
        var aliceLaptop = Online("alice", "laptop");
        var bob = Online("bob", "phone");

        var outcome = await _chat.SendAsync(alicePhone, Text(1, "bob", "hi"), default);

        Assert.Equal(ReasonCode.Success, outcome.Error);
        Assert.Equal(1UL, outcome.Result!.Seq);
        var (bobInbox, message) = Assert.Single(bob.Inbox);
        Assert.Equal(1UL, bobInbox);
        Assert.Equal("hi", System.Text.Encoding.UTF8.GetString(message.Body.Span));
        Assert.Single(aliceLaptop.Inbox);
        Assert.Single(alicePhone.Inbox); // the session itself skips writing its own message
    }

    [Fact]
    public async Task Send_to_an_offline_user_records_a_push_job_in_the_same_commit()
    {
        var alice = Online("alice", "phone");

        var outcome = await _chat.SendAsync(alice, Text(1, "bob", "hi"), default);

        var job = Assert.Single(_store.ListDuePushJobs(long.MaxValue, 10));
        Assert.Equal("bob", job.UserId);
        Assert.Equal(outcome.Result!.Seq, job.Seq);
    }

    [Fact]
    public async Task Retried_send_is_a_duplicate_with_the_same_seq_and_notifies_nobody()
    {
        var alice = Online("alice", "phone");
        var bob = Online("bob", "phone");
        var first = await _chat.SendAsync(alice, Text(5, "bob", "once"), default);

        var again = await _chat.SendAsync(alice, Text(5, "bob", "once"), default);

        Assert.True(again.Result!.IsDuplicate);
        Assert.Equal(first.Result!.Seq, again.Result.Seq);
        Assert.Single(bob.Inbox);
        Assert.Equal(1UL, _store.GetLastSeq(first.Result.ConversationId));
    }

    [Fact]
    public async Task Non_members_and_unknown_conversations_are_refused_and_nothing_is_stored()
    {
        var alice = Online("alice", "phone");
        var carol = Online("carol", "phone");
        var sent = await _chat.SendAsync(alice, Text(1, "bob", "hi"), default);
        var conversation = sent.Result!.ConversationId;

        var intruder = await _chat.SendAsync(carol, new Send { ClientMsgId = 1, ConversationId = conversation, Body = ByteString.CopyFromUtf8("x") }, default);
        var unknown = await _chat.SendAsync(carol, new Send { ClientMsgId = 2, ConversationId = 999_999, Body = ByteString.CopyFromUtf8("x") }, default);
        var self = await _chat.SendAsync(carol, Text(3, "carol", "me"), default);

        Assert.Equal(ReasonCode.NotAMember, intruder.Error);
        Assert.Equal(ReasonCode.ConversationNotFound, unknown.Error);
        Assert.Equal(ReasonCode.BadRequest, self.Error);
        Assert.Equal(1UL, _store.GetLastSeq(conversation));
    }

    [Fact]
    public async Task Ack_advances_the_cursor_and_sends_one_delivered_receipt_per_conversation_to_the_other_side()
    {
        var alice = Online("alice", "phone");
        var bob = Online("bob", "phone");
        for (ulong i = 1; i <= 5; i++)
        {
            await _chat.SendAsync(alice, Text(i, "bob", "m" + i), default);
        }

        await _chat.AckAsync(bob, 3, default);
        await _chat.AckAsync(bob, 2, default); // going backwards changes nothing
        await _chat.AckAsync(bob, 99, default); // beyond the inbox is clamped to its end

        Assert.Equal(5UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Collection(alice.Receipts,
            r => Assert.Equal((ReceiptKind.Delivered, 3UL, "bob"), (r.Kind, r.UpToSeq, r.ReaderUserId)),
            r => Assert.Equal((ReceiptKind.Delivered, 5UL, "bob"), (r.Kind, r.UpToSeq, r.ReaderUserId)));
        Assert.Empty(bob.Receipts);
    }

    [Fact]
    public async Task A_second_device_acknowledging_what_the_first_did_moves_its_own_cursor_and_sends_no_receipt()
    {
        var alice = Online("alice", "phone");
        var bobPhone = Online("bob", "phone");
        var bobLaptop = Online("bob", "laptop");
        for (ulong i = 1; i <= 3; i++)
        {
            await _chat.SendAsync(alice, Text(i, "bob", "m" + i), default);
        }

        await _chat.AckAsync(bobPhone, 3, default);
        await _chat.AckAsync(bobLaptop, 3, default); // bob's delivered receipt is at 3 already

        Assert.Equal(3UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(3UL, _store.GetCursor("bob", "laptop", CursorStream.Inbox));
        var receipt = Assert.Single(alice.Receipts);
        Assert.Equal((ReceiptKind.Delivered, 3UL, "bob"), (receipt.Kind, receipt.UpToSeq, receipt.ReaderUserId));
    }

    [Fact]
    public async Task Ack_past_entries_that_retention_removed_moves_the_cursor_without_receipts_for_them()
    {
        var clock = new ManualClock();
        await using var store = new InMemoryChatStore(new StorageOptions { Clock = clock, SweepInterval = Timeout.InfiniteTimeSpan, Retention = RetentionPolicy.ForDays(30) });
        using var metrics = new BrokerMetrics("test");
        var registry = new SessionRegistry();
        var chat = new ChatService(store, registry, new ConversationDirectory(store), metrics, clock);
        var alice = new FakeDevice("alice", "phone");
        var bob = new FakeDevice("bob", "phone");
        registry.Register(alice, 10, out _);
        registry.Register(bob, 10, out _);
        for (ulong i = 1; i <= 3; i++)
        {
            await chat.SendAsync(alice, Text(i, "bob", "old" + i), default);
        }

        clock.Advance(TimeSpan.FromDays(31));
        await chat.SendAsync(alice, Text(4, "bob", "new"), default);
        await store.SweepAsync();
        Assert.Equal([4UL], store.ReadInbox("bob", 0, 10).Select(e => e.InboxSeq)); // 1-3 expired

        await chat.AckAsync(bob, 2, default); // nothing stored in (0, 2] any more: the cursor still moves
        Assert.Equal(2UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Empty(alice.Receipts);

        await chat.AckAsync(bob, 99, default);
        Assert.Equal(4UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
        var receipt = Assert.Single(alice.Receipts);
        Assert.Equal((ReceiptKind.Delivered, 4UL, "bob"), (receipt.Kind, receipt.UpToSeq, receipt.ReaderUserId));
    }

    [Fact]
    public async Task Catch_up_of_an_inbox_reads_entries_in_order_with_expired_ones_as_positions_only()
    {
        var clock = new ManualClock();
        await using var store = new InMemoryChatStore(new StorageOptions { Clock = clock, SweepInterval = Timeout.InfiniteTimeSpan });
        using var metrics = new BrokerMetrics("test");
        var chat = new ChatService(store, new SessionRegistry(), new ConversationDirectory(store), metrics, clock,
            retention: new ChatBroker.Broker.Configuration.RetentionOptions { Policy = ChatBroker.Broker.Configuration.RetentionPolicy.Days, Days = 30 });
        var alice = new FakeDevice("alice", "phone");
        var carol = new FakeDevice("carol", "phone");
        await chat.SendAsync(alice, Text(1, "bob", "old"), default);
        clock.Advance(TimeSpan.FromDays(31));
        await chat.SendAsync(alice, Text(2, "bob", "a1"), default);
        await chat.SendAsync(carol, Text(1, "bob", "c1"), default);
        await chat.SendAsync(alice, Text(3, "bob", "a2"), default);

        var items = new List<DeliveryItem>();
        chat.ReadInboxAfter("bob", 0, 10, items);

        Assert.Equal([1UL, 2UL, 3UL, 4UL], items.Select(i => i.Position));
        Assert.Null(items[0].Message); // expired: the position moves past it, nothing is delivered
        Assert.Equal(["a1", "c1", "a2"], items.Skip(1).Select(i => System.Text.Encoding.UTF8.GetString(i.Message!.Body.Span)));
        Assert.Equal([2UL, 1UL, 3UL], items.Skip(1).Select(i => i.Message!.Seq)); // seqs of two conversations
        items.Clear();
        chat.ReadInboxAfter("bob", 2, 1, items);
        Assert.Equal(3UL, Assert.Single(items).Position);
    }

    [Fact]
    public void A_DELIVER_carries_the_client_msg_id_only_to_the_senders_own_devices()
    {
        var message = new DeliveryMessage(7, 3, "alice", "phone", 1_700_000_000_000, ContentType.Text, "hi"u8.ToArray(), null, 42);

        var toBob = message.DeliverFieldsFor("bob", inboxSeq: 9);
        var toAlicesLaptop = message.DeliverFieldsFor("alice", inboxSeq: 5);
        var inHistory = message.ToDeliver("alice");

        Assert.Equal((7UL, 3UL, 9UL, 0UL), (toBob.ConversationId, toBob.Seq, toBob.InboxSeq, toBob.ClientMsgId));
        Assert.Equal((5UL, 42UL), (toAlicesLaptop.InboxSeq, toAlicesLaptop.ClientMsgId));
        Assert.Equal((7UL, 3UL, 0UL, 42UL, "hi"), (inHistory.ConversationId, inHistory.Seq, inHistory.InboxSeq, inHistory.ClientMsgId, inHistory.Body.ToStringUtf8()));
        Assert.True(message.IsFrom("alice", "phone"));
        Assert.False(message.IsFrom("alice", "laptop"));
    }

    [Fact]
    public async Task Read_receipts_are_stored_and_replayed_to_a_sender_that_connects_later()
    {
        var alice = new FakeDevice("alice", "phone");
        var bob = Online("bob", "phone");
        var sent = await _chat.SendAsync(bob, Text(1, "alice", "hello"), default);
        await _chat.SendAsync(alice, Text(1, "bob", "hi bob"), default);

        var (error, _) = await _chat.ReadAsync(bob, sent.Result!.ConversationId, 2, default);

        Assert.Equal(ReasonCode.Success, error);
        var stored = _chat.StoredReceiptsFor("alice", 10);
        var read = Assert.Single(stored, r => r.Kind == ReceiptKind.Read);
        Assert.Equal(2UL, read.UpToSeq);
        Assert.Equal("bob", read.ReaderUserId);
    }

    [Fact]
    public async Task History_pages_backwards_and_refuses_non_members()
    {
        var alice = Online("alice", "phone");
        ulong conversation = 0;
        for (ulong i = 1; i <= 12; i++)
        {
            conversation = (await _chat.SendAsync(alice, Text(i, "bob", "m" + i), default)).Result!.ConversationId;
        }

        var (error, _, page) = _chat.History("bob", new History { ConversationId = conversation, BeforeSeq = 0, Limit = 5 });
        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(new ulong[] { 8, 9, 10, 11, 12 }, page!.Messages.Select(m => m.Seq));
        Assert.True(page.More);

        Assert.Equal(ReasonCode.NotAMember, _chat.History("mallory", new History { ConversationId = conversation }).Error);
    }
}

/// <summary>Retention as the read paths see it: an expired message is never returned, swept or not.</summary>
public sealed class RetentionTests : IAsyncLifetime
{
    private readonly InMemoryChatStore _store = new();
    private readonly BrokerMetrics _metrics = new("test");

    private sealed class ShiftedClock(TimeSpan shift) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + shift;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _store.DisposeAsync();
        _metrics.Dispose();
    }

    private ChatService Chat(TimeSpan shift, ChatBroker.Broker.Configuration.RetentionOptions retention) =>
        new(_store, new SessionRegistry(), new ConversationDirectory(_store), _metrics, new ShiftedClock(shift), null, retention);

    [Fact]
    public async Task History_never_returns_messages_older_than_the_retention_days()
    {
        var now = Chat(TimeSpan.Zero, new ChatBroker.Broker.Configuration.RetentionOptions { Policy = ChatBroker.Broker.Configuration.RetentionPolicy.Days, Days = 30 });
        var alice = new FakeDevice("alice", "phone");
        var sent = await now.SendAsync(alice, new Send { ClientMsgId = 1, ToUserId = "bob", Body = ByteString.CopyFromUtf8("old") }, default);
        var request = new History { ConversationId = sent.Result!.ConversationId };

        Assert.Single(now.History("bob", request).Page!.Messages);

        var later = Chat(TimeSpan.FromDays(31), new ChatBroker.Broker.Configuration.RetentionOptions { Policy = ChatBroker.Broker.Configuration.RetentionPolicy.Days, Days = 30 });
        var page = later.History("bob", request).Page!;
        Assert.Empty(page.Messages);
        Assert.False(page.More);
        Assert.True(later.IsExpired(sent.Result.TimestampMs));

        var keep = Chat(TimeSpan.FromDays(3650), new ChatBroker.Broker.Configuration.RetentionOptions { Policy = ChatBroker.Broker.Configuration.RetentionPolicy.Keep });
        Assert.Single(keep.History("bob", request).Page!.Messages);
        Assert.False(keep.IsExpired(sent.Result.TimestampMs));
    }
}
