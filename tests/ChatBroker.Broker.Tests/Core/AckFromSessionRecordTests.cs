using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Sessions;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>
/// ACK with the session's record of its inbox (<see cref="InboxRecord"/>): the same cursor and receipts as from the
/// store, without reading the cursor or the inbox when the record covers the range, and from the store when not.
/// </summary>
public sealed class AckFromSessionRecordTests : IAsyncLifetime
{
    private readonly InMemoryChatStore _store = new();
    private readonly Dictionary<string, int> _calls = [];
    private readonly SessionRegistry _registry = new();
    private readonly BrokerMetrics _metrics = new("test");
    private ChatService _chat = null!;

    public Task InitializeAsync()
    {
        var counted = ObservedStore.Over(_store, (method, _) =>
        {
            lock (_calls)
            {
                _calls[method.Name] = _calls.GetValueOrDefault(method.Name) + 1;
            }
        });
        _chat = new ChatService(counted, _registry, new ConversationDirectory(_store), _metrics, TimeProvider.System);
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

    private int Reads => _calls.GetValueOrDefault(nameof(IChatStore.GetCursor)) + _calls.GetValueOrDefault(nameof(IChatStore.ReadInbox));

    /// <summary>What a session does: notes each inbox entry its device is notified of, in order.</summary>
    private static RecordOf Record(FakeDevice device) => new RecordOf().With(device, from: 0);

    private async Task SendAsync(FakeDevice from, string to, ulong id) =>
        await _chat.SendAsync(from, new Send { ClientMsgId = id, ToUserId = to, Body = ByteString.CopyFromUtf8("m" + id) }, default);

    /// <summary>Alice and Bob online, and <paramref name="messages"/> messages from Alice in Bob's inbox.</summary>
    private async Task<(FakeDevice Alice, FakeDevice Bob)> ChattingAsync(ulong messages)
    {
        var alice = Online("alice", "phone");
        var bob = Online("bob", "phone");
        for (ulong i = 1; i <= messages; i++)
        {
            await SendAsync(alice, "bob", i);
        }

        return (alice, bob);
    }

    [Fact]
    public async Task An_ack_of_what_the_session_passed_reads_neither_the_cursor_nor_the_inbox_after_the_first()
    {
        var (alice, bob) = await ChattingAsync(3);

        var record = Record(bob);
        var before = Reads;
        await _chat.AckAsync(bob, record, 3);
        Assert.Equal(before + 1, Reads); // the first ACK of a session reads the stored cursor, not the inbox
        Assert.Equal(3UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));

        await SendAsync(alice, "bob", 4);
        await SendAsync(bob, "alice", 5); // bob's own message is an entry of his inbox too
        await SendAsync(alice, "bob", 6);
        record = record.With(bob, from: 4);
        before = Reads;
        await _chat.AckAsync(bob, record, 6);

        Assert.Equal(before, Reads);
        Assert.Equal(6UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Collection(alice.Receipts,
            r => Assert.Equal((ReceiptKind.Delivered, 3UL, "bob"), (r.Kind, r.UpToSeq, r.ReaderUserId)),
            r => Assert.Equal((ReceiptKind.Delivered, 6UL, "bob"), (r.Kind, r.UpToSeq, r.ReaderUserId)));
        Assert.Equal(0, record.Inner.Count);
    }

    [Fact]
    public async Task An_ack_reaching_outside_the_record_is_answered_from_the_store_with_the_same_outcome()
    {
        var (alice, bob) = await ChattingAsync(4);

        var record = new RecordOf();
        record.Inner.Note(3, bob.Inbox.ElementAt(2).Message.ConversationId, bob.Inbox.ElementAt(2).Message.Seq);
        record.Inner.Note(4, bob.Inbox.ElementAt(3).Message.ConversationId, bob.Inbox.ElementAt(3).Message.Seq); // 1 and 2 came before the session

        await _chat.AckAsync(bob, record, 4);
        Assert.Equal(1, _calls.GetValueOrDefault(nameof(IChatStore.ReadInbox)));
        Assert.Equal(4UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));
        var receipt = Assert.Single(alice.Receipts);
        Assert.Equal((ReceiptKind.Delivered, 4UL, "bob"), (receipt.Kind, receipt.UpToSeq, receipt.ReaderUserId));

        await _chat.AckAsync(bob, record, 99); // beyond the inbox: nothing more stored, no receipt, no move
        Assert.Equal(4UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Single(alice.Receipts);
    }

    [Fact]
    public async Task A_cursor_another_path_moved_ahead_gives_no_second_receipt()
    {
        var (alice, bob) = await ChattingAsync(2);

        var record = Record(bob);
        record.Inner.Acked(0); // this session's last ACK stored 0
        await _chat.AckAsync(bob, 2); // another path acknowledged 1..2 meanwhile
        Assert.Single(alice.Receipts);

        await _chat.AckAsync(bob, record, 2); // the record still starts at 0: its receipts are already given

        Assert.Single(alice.Receipts);
        Assert.Equal(2UL, _store.GetCursor("bob", "phone", CursorStream.Inbox));
    }

    /// <summary>The session's side of <see cref="IInboxAckRecord"/> without its lock (one test thread).</summary>
    private sealed class RecordOf : IInboxAckRecord
    {
        public InboxRecord Inner { get; } = new();

        public RecordOf With(FakeDevice device, ulong from)
        {
            foreach (var (inboxSeq, message) in device.Inbox)
            {
                if (inboxSeq >= from)
                {
                    Inner.Note(inboxSeq, message.ConversationId, message.Seq);
                }
            }

            return this;
        }

        public bool TryGetAckedCursor(out ulong cursor)
        {
            cursor = Inner.AckedCursor;
            return Inner.HasAcked;
        }

        public bool TryCollect(ulong after, ulong through, Dictionary<ulong, ulong> highest) => Inner.TryCollect(after, through, highest);

        public void Acked(ulong cursor) => Inner.Acked(cursor);

        public void Forget(ulong through) => Inner.Forget(through);
    }
}
