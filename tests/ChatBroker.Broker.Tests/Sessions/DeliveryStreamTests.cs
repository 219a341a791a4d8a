using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Sessions;
using ChatBroker.Broker.Tests.Core;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>
/// The one rule of ordered delivery (inbox and large groups alike): live, catch-up through the core, and the seam
/// between them, over the in-memory store and a recording target instead of a connection.
/// </summary>
public sealed class DeliveryStreamTests : IAsyncLifetime
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    private readonly InMemoryChatStore _store = new();
    private readonly BrokerMetrics _metrics = new("test");
    private readonly FakeDevice _alice = new("alice", "phone");
    private ChatService _chat = null!;
    private ulong _nextClientMsgId;

    public Task InitializeAsync()
    {
        // No device is registered: the tests hand the notifications to the stream themselves, in the order they choose.
        _chat = new ChatService(_store, new SessionRegistry(), new ConversationDirectory(_store), _metrics, TimeProvider.System);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _store.DisposeAsync();
        _metrics.Dispose();
    }

    /// <summary>Alice sends Bob a message; returns it as the core announces it, with Bob's inbox position.</summary>
    private async Task<(ulong InboxSeq, DeliveryMessage Message)> SendToBobAsync(string text)
    {
        var id = ++_nextClientMsgId;
        var outcome = await _chat.SendAsync(_alice, new Send { ClientMsgId = id, ToUserId = "bob", Body = ByteString.CopyFromUtf8(text) }, default);
        var result = outcome.Result!;
        var message = new DeliveryMessage(result.ConversationId, result.Seq, "alice", "phone", result.TimestampMs, ContentType.Text,
            System.Text.Encoding.UTF8.GetBytes(text), null, id);
        return (result.InboxSeqs[1], message); // members are (alice, bob), in order
    }

    /// <summary>Three messages to Bob, of which only the third's notification reaches a live stream: a gap. Returns
    /// the third and what the stream answered (true: catch up).</summary>
    private async Task<((ulong InboxSeq, DeliveryMessage Message) Third, bool CatchUp)> ThirdBeforeTheOthersAsync(RecordingTarget bob, DeliveryStream stream)
    {
        await SendToBobAsync("one");
        await SendToBobAsync("two");
        var third = await SendToBobAsync("three");
        lock (bob.Lock)
        {
            return (third, stream.OnAppended(bob, third.InboxSeq, third.Message, write: true));
        }
    }

    private RecordingTarget Bob(int resumeBatch = 256) => new(_chat, "bob", "phone", new SessionOptions { ResumeBatch = resumeBatch });

    [Fact]
    public async Task Live_messages_in_order_are_written_at_once_and_repeats_are_not()
    {
        var bob = Bob();
        var stream = new DeliveryStream(conversationId: 0, position: 0);
        stream.GoLive();
        var first = await SendToBobAsync("one");
        var second = await SendToBobAsync("two");

        lock (bob.Lock)
        {
            Assert.False(stream.OnAppended(bob, first.InboxSeq, first.Message, write: true));
            Assert.False(stream.OnAppended(bob, first.InboxSeq, first.Message, write: true));
            Assert.False(stream.OnAppended(bob, second.InboxSeq, second.Message, write: true));
        }

        Assert.Equal([1UL, 2UL], bob.Written.Select(w => w.InboxSeq));
        Assert.Equal([0UL, 0UL], bob.Written.Select(w => w.ClientMsgId)); // Bob did not send them
        Assert.Equal(2UL, stream.Position);
        Assert.False(stream.CatchingUp);
    }

    [Fact]
    public async Task A_gap_on_the_live_path_is_caught_up_from_the_store_in_batches_then_live_again()
    {
        var bob = Bob(resumeBatch: 2);
        var stream = new DeliveryStream(conversationId: 0, position: 0);
        stream.GoLive();

        // The notifications of 1 and 2 are still on their way: 3 is a gap.
        var (third, catchUp) = await ThirdBeforeTheOthersAsync(bob, stream);
        Assert.True(catchUp);

        Assert.True(stream.CatchingUp);
        Assert.Empty(bob.Written);
        var items = new List<DeliveryItem>();
        Assert.Equal(CatchUpResult.Read, await stream.CatchUpBatchAsync(bob, items));
        Assert.True(stream.CatchingUp); // a full batch: there may be more
        Assert.Equal(CatchUpResult.Read, await stream.CatchUpBatchAsync(bob, items));
        Assert.False(stream.CatchingUp); // a short read with no notification since: live

        var fourth = await SendToBobAsync("four");
        lock (bob.Lock)
        {
            Assert.False(stream.OnAppended(bob, third.InboxSeq, third.Message, write: true)); // late: already sent
            Assert.False(stream.OnAppended(bob, fourth.InboxSeq, fourth.Message, write: true));
        }

        Assert.Equal([1UL, 2UL, 3UL, 4UL], bob.Written.Select(w => w.InboxSeq));
    }

    [Fact]
    public async Task The_inbox_stream_records_each_entry_it_passes_live_or_caught_up_until_it_jumps()
    {
        var bob = Bob(resumeBatch: 2);
        var stream = new DeliveryStream(conversationId: 0, position: 0);
        stream.GoLive();
        Assert.True((await ThirdBeforeTheOthersAsync(bob, stream)).CatchUp); // a gap: caught up from the store

        var items = new List<DeliveryItem>();
        await stream.CatchUpBatchAsync(bob, items);
        await stream.CatchUpBatchAsync(bob, items);
        var fourth = await SendToBobAsync("four");
        lock (bob.Lock)
        {
            stream.OnAppended(bob, fourth.InboxSeq, fourth.Message, write: true); // live
        }

        var highest = new Dictionary<ulong, ulong>();
        Assert.True(stream.Record.TryCollect(0, 4, highest));
        Assert.Equal(new Dictionary<ulong, ulong> { [fourth.Message.ConversationId] = fourth.Message.Seq }, highest);

        stream.MoveTo(2); // a SYNC: the stream reads from 2 again, and what it recorded is no run with that
        Assert.False(stream.Record.TryCollect(0, 4, []));
        Assert.Equal(0, stream.Record.Count);
    }

    [Fact]
    public async Task A_message_notified_while_catching_up_is_read_by_one_more_batch_and_sent_once()
    {
        var bob = Bob();
        var stream = new DeliveryStream(conversationId: 0, position: 0); // a new stream catches up first
        await SendToBobAsync("one");
        await SendToBobAsync("two");
        var items = new List<DeliveryItem>();

        var batch = bob.PauseAtTheWatermark(() => stream.CatchUpBatchAsync(bob, items));
        await bob.WaitingForRoom.Task.WaitAsync(Wait);
        var third = await SendToBobAsync("three"); // committed after the batch was read
        lock (bob.Lock)
        {
            Assert.True(stream.OnAppended(bob, third.InboxSeq, third.Message, write: true)); // only marks the stream
        }

        bob.MakeRoom();
        Assert.Equal(CatchUpResult.Read, await batch.WaitAsync(Wait));
        Assert.True(stream.CatchingUp); // notified during the read: not live yet
        Assert.Equal([1UL, 2UL], bob.Written.Select(w => w.InboxSeq));

        Assert.Equal(CatchUpResult.Read, await stream.CatchUpBatchAsync(bob, items));
        Assert.False(stream.CatchingUp);
        Assert.Equal([1UL, 2UL, 3UL], bob.Written.Select(w => w.InboxSeq));
    }

    [Fact]
    public async Task A_SYNC_back_to_an_earlier_position_during_a_batch_drops_the_batch_and_skips_nothing()
    {
        var bob = Bob();
        var stream = new DeliveryStream(conversationId: 0, position: 2); // resuming after 2
        for (var i = 1; i <= 4; i++)
        {
            await SendToBobAsync("m" + i);
        }

        var items = new List<DeliveryItem>();
        var batch = bob.PauseAtTheWatermark(() => stream.CatchUpBatchAsync(bob, items)); // read 3 and 4
        await bob.WaitingForRoom.Task.WaitAsync(Wait);
        lock (bob.Lock)
        {
            stream.MoveTo(0); // the device asks for everything again
        }

        bob.MakeRoom();
        await batch.WaitAsync(Wait);
        Assert.Empty(bob.Written); // 3 and 4 now would skip 1 and 2
        Assert.True(stream.CatchingUp);

        await stream.CatchUpBatchAsync(bob, items);
        Assert.Equal([1UL, 2UL, 3UL, 4UL], bob.Written.Select(w => w.InboxSeq));
        Assert.False(stream.CatchingUp);
    }

    [Fact]
    public async Task A_device_that_takes_nothing_for_the_stall_timeout_while_catching_up_is_a_slow_consumer()
    {
        var bob = Bob();
        var stream = new DeliveryStream(conversationId: 0, position: 0);
        await SendToBobAsync("one");
        var items = new List<DeliveryItem>();

        var batch = bob.PauseAtTheWatermark(() => stream.CatchUpBatchAsync(bob, items));
        await bob.WaitingForRoom.Task.WaitAsync(Wait);
        bob.Stall();

        Assert.Equal(CatchUpResult.Stopped, await batch.WaitAsync(Wait));
        Assert.Equal(ReasonCode.SlowConsumer, bob.ClosedWith?.Reason);
        Assert.Empty(bob.Written);
    }

    [Fact]
    public async Task The_sending_device_is_not_sent_its_own_message_and_its_other_devices_get_the_client_msg_id()
    {
        var phone = new RecordingTarget(_chat, "alice", "phone", new SessionOptions());
        var laptop = new RecordingTarget(_chat, "alice", "laptop", new SessionOptions());
        var onPhone = new DeliveryStream(conversationId: 0, position: 0);
        var onLaptop = new DeliveryStream(conversationId: 0, position: 0);
        onPhone.GoLive();
        onLaptop.GoLive();
        var sent = await SendToBobAsync("hi"); // alice's inbox position of it is 1 too (first message of both)

        lock (phone.Lock)
        {
            onPhone.OnAppended(phone, 1, sent.Message, write: true);
        }

        lock (laptop.Lock)
        {
            onLaptop.OnAppended(laptop, 1, sent.Message, write: true);
        }

        Assert.Empty(phone.Written);
        Assert.Equal(1UL, onPhone.Position); // the position moves all the same
        Assert.Equal(sent.Message.ClientMsgId, Assert.Single(laptop.Written).ClientMsgId);
    }

    [Fact]
    public async Task A_large_group_stream_delivers_with_inbox_seq_0_and_ends_for_a_removed_member()
    {
        var directory = new ConversationDirectory(_store);
        var chat = new ChatService(_store, new SessionRegistry(), directory, _metrics, TimeProvider.System, new FanoutOptions { WriteThreshold = 2 });
        var groups = new GroupService(_store, directory, chat, new GroupsOptions());
        var create = new GroupCreate { Title = "big" };
        create.MemberUserIds.Add(["bob", "carol"]);
        var group = (await groups.HandleAsync("alice", new GroupRequest { Create = create }, 65536, default)).Result!.ConversationId;
        await chat.SendAsync(_alice, new Send { ClientMsgId = 1, ConversationId = group, Body = ByteString.CopyFromUtf8("hello") }, default);
        var bob = new RecordingTarget(chat, "bob", "phone", new SessionOptions());
        var stream = new DeliveryStream(group, position: 0);

        Assert.Equal(CatchUpResult.Read, await stream.CatchUpBatchAsync(bob, []));

        var deliver = Assert.Single(bob.Written); // GROUP_CREATED (seq 1) came through the inbox
        Assert.Equal((group, 2UL, 0UL), (deliver.ConversationId, deliver.Seq, deliver.InboxSeq));
        Assert.Equal(2UL, stream.Position);

        var remove = new GroupMembers { ConversationId = group };
        remove.UserIds.Add("bob");
        await groups.HandleAsync("alice", new GroupRequest { RemoveMembers = remove }, 65536, default);
        Assert.Equal(CatchUpResult.NotAMember, await stream.CatchUpBatchAsync(bob, []));
    }

    /// <summary>A device's session as a delivery stream sees it: records DELIVERs; the test decides when there is room.</summary>
    private sealed class RecordingTarget(ChatService chat, string user, string device, SessionOptions options) : IDeliveryTarget
    {
        private TaskCompletionSource<bool>? _room;

        public object Lock { get; } = new();

        public string UserId => user;

        public string DeviceId => device;

        public bool IsClosed => false;

        public ChatService Chat => chat;

        public SessionOptions Options => options;

        public int PendingBytes { get; private set; }

        public bool IsClosing { get; private set; }

        public List<DeliverFields> Written { get; } = [];

        public (ReasonCode Reason, string Message)? ClosedWith { get; private set; }

        public TaskCompletionSource WaitingForRoom { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Starts <paramref name="catchUp"/> with the outbox over its high watermark: it waits before its first write.</summary>
        public Task<CatchUpResult> PauseAtTheWatermark(Func<ValueTask<CatchUpResult>> catchUp)
        {
            PendingBytes = int.MaxValue;
            _room = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            return catchUp().AsTask();
        }

        public void MakeRoom()
        {
            PendingBytes = 0;
            _room!.SetResult(true);
        }

        public void Stall() => _room!.SetResult(false);

        public void WriteDeliver(in DeliverFields fields, ReadOnlySpan<byte> body) => Written.Add(fields);

        public Task<bool> WhenBelowAsync(int bytes, TimeSpan stallTimeout)
        {
            WaitingForRoom.TrySetResult();
            return _room!.Task;
        }

        public void Close(ReasonCode reason, string message)
        {
            ClosedWith = (reason, message);
            IsClosing = true;
        }
    }
}
