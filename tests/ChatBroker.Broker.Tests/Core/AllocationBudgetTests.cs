using System.Buffers;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>Runs alone: the budget counts the bytes every thread allocates, so no other test may run meanwhile.</summary>
[CollectionDefinition(nameof(AllocationBudgetCollection), DisableParallelization = true)]
public sealed class AllocationBudgetCollection;

/// <summary>
/// The allocation budget of the broker's SEND→SENT→DELIVER path, so that a regression (a per-message array, a
/// closure, a LINQ call) fails the suite rather than waiting for the next load report: as the protocol's
/// AllocationTests do for framing, and as Garnet's CI does with its allocation budgets.
/// </summary>
[Collection(nameof(AllocationBudgetCollection))]
public sealed class AllocationBudgetTests
{
    // Measured 2026-12-05 on the in-memory store (the same commit writer as RocksDB, durability = sync), one SEND
    // at a time, a 100-byte body, one online recipient device and the sender's: 2,120 B per message, the least of
    // five rounds, in each of ten runs (alone and within the whole suite; single rounds ranged 2,120-2,125, with an
    // occasional outlier round of +500 to +1,000 B while the runtime tiered up). What it is: the Send the session
    // parses (with its ByteString and strings), the append request, op and task, the memory engine's keys and values
    // for the message, two inbox entries and the idempotency record, the async state machines that wait for the
    // writer thread, the DeliveryMessage, the SENT. The budget leaves 30 B: one more per-message object, array or
    // closure (24 B at the least) takes it over; a 40-byte array per message (new byte[16]) was checked to fail it.
    private const long BudgetBytesPerMessage = 2_150;

    private const int WarmUp = 1_000;
    private const int Rounds = 5;
    private const int PerRound = 1_000;

    [Fact]
    public async Task Send_sent_deliver_allocates_at_most_the_budget_per_message()
    {
        await using var store = new InMemoryChatStore();
        using var metrics = new BrokerMetrics("allocation-budget");
        var registry = new SessionRegistry();
        var chat = new ChatService(store, registry, new ConversationDirectory(store), metrics, TimeProvider.System);
        var alice = new FrameWritingDevice("alice", "phone");
        var bob = new FrameWritingDevice("bob", "phone");
        registry.Register(alice, 10, out _);
        registry.Register(bob, 10, out _);

        // Every SEND needs its own client_msg_id (a repeat is an idempotent duplicate): the frames are made first.
        var frames = new byte[WarmUp + (Rounds * PerRound)][];
        var body = new byte[100];
        Random.Shared.NextBytes(body);
        for (var i = 0; i < frames.Length; i++)
        {
            var writer = new ArrayBufferWriter<byte>();
            FrameWriter.Write(writer, new Send { ClientMsgId = (ulong)(1_000_000_000_000 + i), ToUserId = "bob", Body = ByteString.CopyFrom(body) });
            frames[i] = writer.WrittenSpan.ToArray();
        }

        await SendAllAsync(chat, alice, frames, 0, WarmUp);
        // The least of several rounds: a regression adds to every round, while the runtime's own work (tiered
        // compilation finishing in the background, a thread-pool thread starting) lands in some rounds only.
        var perMessage = long.MaxValue;
        var rounds = new long[Rounds];
        for (var round = 0; round < Rounds; round++)
        {
            var before = GC.GetTotalAllocatedBytes(precise: true);
            await SendAllAsync(chat, alice, frames, WarmUp + (round * PerRound), PerRound);
            rounds[round] = (GC.GetTotalAllocatedBytes(precise: true) - before) / PerRound;
            perMessage = Math.Min(perMessage, rounds[round]);
        }

        // The path ran: every SEND was answered and delivered to the recipient, none to the sending device.
        Assert.Equal(frames.Length, alice.Sent);
        Assert.Equal(frames.Length, bob.Delivered);
        Assert.Equal(0, alice.Delivered);
        Assert.True(perMessage <= BudgetBytesPerMessage,
            $"SEND→SENT→DELIVER allocated {perMessage} B per message (rounds: {string.Join(", ", rounds)}); the budget is {BudgetBytesPerMessage} B");
    }

    // What a session does per SEND, minus the socket: parse the frame, prepare, commit (durable, fanned out), SENT.
    private static async Task SendAllAsync(ChatService chat, FrameWritingDevice sender, byte[][] frames, int from, int count)
    {
        for (var i = from; i < from + count; i++)
        {
            Assert.True(FrameReader.TryRead(new ReadOnlySequence<byte>(frames[i]), ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _));
            Assert.True(PacketDecoder.TryDecode(frame, Send.Parser, out var send, out _));
            var prepared = await chat.PrepareAsync(sender, send, CancellationToken.None);
            var outcome = await chat.CommitAsync(sender, send, prepared, completions: null, CancellationToken.None);
            var result = outcome.Result!;
            sender.WriteSent(new Sent { ClientMsgId = send.ClientMsgId, ConversationId = result.ConversationId, Seq = result.Seq, TimestampMs = (ulong)result.TimestampMs });
        }
    }

    /// <summary>
    /// A device link that writes what a session's outbox writes (DELIVER from the message's fields, SENT) into a
    /// fixed buffer, so the test's own bookkeeping allocates nothing per message.
    /// </summary>
    private sealed class FrameWritingDevice(string user, string device) : IDeviceLink, IBufferWriter<byte>
    {
        private readonly byte[] _buffer = new byte[64 * 1024];
        private readonly Lock _lock = new();
        private int _written;

        public string UserId { get; } = user;

        public string DeviceId { get; } = device;

        public ulong Capabilities => (ulong)Capability.Receipts;

        public int Delivered { get; private set; }

        public int Sent { get; private set; }

        public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message)
        {
            lock (_lock)
            {
                if (!message.IsFrom(UserId, DeviceId))
                {
                    DeliverWriter.Write(this, message.DeliverFieldsFor(UserId, inboxSeq), message.Body.Span);
                    Delivered++;
                }
            }
        }

        public void WriteSent(Sent sent)
        {
            lock (_lock)
            {
                FrameWriter.Write(this, sent);
                Sent++;
            }
        }

        public void OnGroupLogAppended(DeliveryMessage message, bool write) => throw new InvalidOperationException("no large group here");

        public void OnReceipt(Receipt receipt)
        {
        }

        public void OnNotice(IMessage packet)
        {
        }

        public void Close(ReasonCode reason, string message) => throw new InvalidOperationException($"closed: {reason} {message}");

        public void Advance(int count) => _written += count;

        public Memory<byte> GetMemory(int sizeHint = 0) => _buffer.AsMemory(Reserve(sizeHint));

        public Span<byte> GetSpan(int sizeHint = 0) => _buffer.AsSpan(Reserve(sizeHint));

        // Frames are not kept: start over at the front when the next one might not fit.
        private int Reserve(int sizeHint)
        {
            if (_written + Math.Max(sizeHint, 1024) > _buffer.Length)
            {
                _written = 0;
            }

            return _written;
        }
    }
}
