using System.Buffers;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>One-to-one messaging over real TCP against the real broker process, spoken frame by frame.</summary>
public sealed class MessagingTests : IAsyncLifetime
{
    private TestBroker _broker = null!;

    // Pipelined bursts of thousands of SENDs: the per-connection rate limit is not what these tests are about.
    public async Task InitializeAsync() => _broker = await TestBroker.StartAsync(null, "--set", "limits.sends_per_second=1000000");

    public async Task DisposeAsync() => await _broker.DisposeAsync();

    private static Send Text(ulong clientMsgId, string to, string text) =>
        new() { ClientMsgId = clientMsgId, ToUserId = to, Body = ByteString.CopyFromUtf8(text) };

    /// <summary>Writes many SENDs in one go (pipelined), as a phone flushing its outbox would.</summary>
    private static async Task SendManyAsync(RawDevice device, IEnumerable<Send> sends)
    {
        var buffer = new ArrayBufferWriter<byte>();
        foreach (var send in sends)
        {
            FrameWriter.Write(buffer, send);
        }

        await device.SendRawAsync(buffer.WrittenMemory);
    }

    [Fact]
    public async Task Alice_sends_1000_messages_to_online_Bob_who_gets_them_in_order_with_receipts_and_her_second_device_sees_them()
    {
        await using var alicePhone = await _broker.LoginAsync("alice", "phone");
        await using var aliceLaptop = await _broker.LoginAsync("alice", "laptop");
        await using var bob = await _broker.LoginAsync("bob", "phone");
        await bob.ReceiveAsync<SyncDone>();
        await aliceLaptop.ReceiveAsync<SyncDone>();
        const int count = 1000;

        await SendManyAsync(alicePhone, Enumerable.Range(1, count).Select(i => Text((ulong)i, "bob", "message " + i)));

        var sent = new Dictionary<ulong, Sent>();
        while (sent.Count < count)
        {
            var s = await alicePhone.ReceiveAsync<Sent>();
            Assert.True(sent.TryAdd(s.ClientMsgId, s), $"second SENT for {s.ClientMsgId}");
            // docs/protocol.md §5: SENTs of one conversation come back in the order of the SENDs.
            Assert.Equal((ulong)sent.Count, s.ClientMsgId);
        }

        Assert.Equal(Enumerable.Range(1, count).Select(i => (ulong)i), sent.Values.Select(s => s.Seq).Order());
        var conversation = sent[1].ConversationId;
        ulong lastInbox = 0;
        for (var i = 1; i <= count; i++)
        {
            var d = await bob.ReceiveAsync<Deliver>();
            Assert.Equal((ulong)i, d.Seq);
            Assert.Equal(conversation, d.ConversationId);
            Assert.Equal("message " + i, d.Body.ToStringUtf8());
            Assert.Equal("alice", d.SenderUserId);
            Assert.True(d.InboxSeq > lastInbox);
            lastInbox = d.InboxSeq;
        }

        for (var i = 1; i <= count; i++)
        {
            var d = await aliceLaptop.ReceiveAsync<Deliver>();
            Assert.Equal((ulong)i, d.Seq);
            Assert.Equal((ulong)i, d.ClientMsgId); // her own message, matched to its client id
        }

        await bob.SendAsync(new Ack { InboxSeq = lastInbox });
        var delivered = await alicePhone.ReceiveAsync<Receipt>();
        Assert.Equal(ReceiptKind.Delivered, delivered.Kind);
        Assert.Equal((ulong)count, delivered.UpToSeq);
        Assert.Equal("bob", delivered.ReaderUserId);

        await bob.SendAsync(new Read { ConversationId = conversation, UpToSeq = count });
        var read = await alicePhone.ReceiveAsync<Receipt>();
        Assert.Equal(ReceiptKind.Read, read.Kind);
        Assert.Equal((ulong)count, read.UpToSeq);
    }

    [Fact]
    public async Task Messages_for_offline_Bob_wait_and_arrive_in_order_on_connect_followed_by_live_ones()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        const int count = 1000;
        await SendManyAsync(alice, Enumerable.Range(1, count).Select(i => Text((ulong)i, "bob", "m" + i)));
        for (var i = 0; i < count; i++)
        {
            await alice.ReceiveAsync<Sent>();
        }

        await using var bob = await _broker.LoginAsync("bob", "phone");
        for (var i = 1; i <= count; i++)
        {
            var d = await bob.ReceiveAsync<Deliver>();
            Assert.Equal((ulong)i, d.Seq);
            Assert.Equal("m" + i, d.Body.ToStringUtf8());
        }

        var done = await bob.ReceiveAsync<SyncDone>();
        Assert.Equal((ulong)count, done.InboxSeq);

        await alice.SendAsync(Text(count + 1, "bob", "live"));
        var live = await bob.ReceiveAsync<Deliver>();
        Assert.Equal((ulong)count + 1, live.Seq);
        Assert.Equal("live", live.Body.ToStringUtf8());
    }

    [Fact]
    public async Task Messages_sent_while_Bob_resumes_arrive_exactly_once_in_order()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        const int before = 2000;
        const int during = 500;
        await SendManyAsync(alice, Enumerable.Range(1, before).Select(i => Text((ulong)i, "bob", "m" + i)));
        for (var i = 0; i < before; i++)
        {
            await alice.ReceiveAsync<Sent>();
        }

        // Bob connects and starts draining the backlog while Alice keeps sending.
        var bobTask = _broker.LoginAsync("bob", "phone");
        await SendManyAsync(alice, Enumerable.Range(before + 1, during).Select(i => Text((ulong)i, "bob", "m" + i)));
        await using var bob = await bobTask;

        for (var i = 1; i <= before + during; i++)
        {
            var d = await bob.ReceiveAsync<Deliver>();
            Assert.Equal((ulong)i, d.Seq);
        }

        // Nothing more: no duplicate follows. A PING's PONG proves the stream is drained up to now.
        await bob.SendAsync(new Ping());
        while (await bob.ReceiveAnyAsync() is { } next && next is not Pong)
        {
            Assert.IsNotType<Deliver>(next);
        }
    }

    [Fact]
    public async Task Resume_from_a_cursor_delivers_only_what_follows_it()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        await SendManyAsync(alice, Enumerable.Range(1, 10).Select(i => Text((ulong)i, "bob", "m" + i)));
        for (var i = 0; i < 10; i++)
        {
            await alice.ReceiveAsync<Sent>();
        }

        await using (var bob = await _broker.LoginAsync("bob", "phone"))
        {
            for (var i = 1; i <= 6; i++)
            {
                await bob.ReceiveAsync<Deliver>();
            }
        }

        await using var again = await _broker.LoginAsync("bob", "phone", resumeInboxSeq: 6);
        for (var i = 7; i <= 10; i++)
        {
            Assert.Equal((ulong)i, (await again.ReceiveAsync<Deliver>()).Seq);
        }

        Assert.Equal(10UL, (await again.ReceiveAsync<SyncDone>()).InboxSeq);
    }

    [Fact]
    public async Task A_retried_SEND_is_stored_once_and_answered_with_the_same_seq()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        await alice.SendAsync(Text(42, "bob", "once"));
        var first = await alice.ReceiveAsync<Sent>();

        await alice.SendAsync(Text(42, "bob", "once"), FrameFlags.Dup);
        var second = await alice.ReceiveAsync<Sent>();
        await alice.SendAsync(Text(43, "bob", "next"));
        var third = await alice.ReceiveAsync<Sent>();

        Assert.Equal(first.Seq, second.Seq);
        Assert.Equal(first.TimestampMs, second.TimestampMs);
        Assert.Equal(first.Seq + 1, third.Seq);
        await using var bob = await _broker.LoginAsync("bob", "phone");
        Assert.Equal("once", (await bob.ReceiveAsync<Deliver>()).Body.ToStringUtf8());
        Assert.Equal("next", (await bob.ReceiveAsync<Deliver>()).Body.ToStringUtf8());
        Assert.Equal(2UL, (await bob.ReceiveAsync<SyncDone>()).InboxSeq);
    }

    [Fact]
    public async Task Receipts_reach_a_sender_that_was_offline_when_they_happened()
    {
        ulong conversation;
        await using (var alice = await _broker.LoginAsync("alice", "phone"))
        {
            await alice.SendAsync(Text(1, "bob", "are you there?"));
            conversation = (await alice.ReceiveAsync<Sent>()).ConversationId;
        }

        await using (var bob = await _broker.LoginAsync("bob", "phone"))
        {
            var d = await bob.ReceiveAsync<Deliver>();
            await bob.SendAsync(new Ack { InboxSeq = d.InboxSeq });
            await bob.SendAsync(new Read { ConversationId = conversation, UpToSeq = d.Seq });
            await bob.SendAsync(new Ping());
            await bob.ReceiveAsync<Pong>();
        }

        await using var back = await _broker.LoginAsync("alice", "phone");
        var receipts = new List<Receipt> { await back.ReceiveAsync<Receipt>(), await back.ReceiveAsync<Receipt>() };
        Assert.Contains(receipts, r => r.Kind == ReceiptKind.Delivered && r.UpToSeq == 1 && r.ReaderUserId == "bob");
        Assert.Contains(receipts, r => r.Kind == ReceiptKind.Read && r.UpToSeq == 1 && r.ReaderUserId == "bob");
    }

    [Fact]
    public async Task Sending_to_a_conversation_you_are_not_in_is_refused_and_the_session_stays()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        await alice.SendAsync(Text(1, "bob", "hi"));
        var conversation = (await alice.ReceiveAsync<Sent>()).ConversationId;

        await using var carol = await _broker.LoginAsync("carol", "phone");
        await carol.SendAsync(new Send { ClientMsgId = 7, ConversationId = conversation, Body = ByteString.CopyFromUtf8("intrude") });
        var error = await carol.ReceiveAsync<Error>();
        Assert.Equal(ReasonCode.NotAMember, error.Reason);
        Assert.Equal(7UL, error.RequestId);

        await carol.SendAsync(new History { RequestId = 3, ConversationId = conversation });
        Assert.Equal(ReasonCode.NotAMember, (await carol.ReceiveAsync<Error>()).Reason);
        await carol.SendAsync(new Ping());
        await carol.ReceiveAsync<Pong>();
    }

    [Fact]
    public async Task History_pages_backwards_for_members()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        await SendManyAsync(alice, Enumerable.Range(1, 30).Select(i => Text((ulong)i, "bob", "h" + i)));
        Sent last = null!;
        for (var i = 0; i < 30; i++)
        {
            last = await alice.ReceiveAsync<Sent>();
        }

        await alice.SendAsync(new History { RequestId = 9, ConversationId = last.ConversationId, BeforeSeq = 21, Limit = 10 });
        var page = await alice.ReceiveAsync<HistoryPage>();

        Assert.Equal(9UL, page.RequestId);
        Assert.Equal(Enumerable.Range(11, 10).Select(i => (ulong)i), page.Messages.Select(m => m.Seq));
        Assert.True(page.More);
    }
}
