using System.Buffers;
using System.Runtime.InteropServices;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

public class SendReaderTests
{
    private static Frame SendFrame(ReadOnlySequence<byte> body, FrameFlags flags = FrameFlags.None) => new(PacketType.Send, flags, body, 2);

    /// <summary>What Google.Protobuf plus PacketValidator say about the same body.</summary>
    private static (bool Ok, ReasonCode Error, Send? Message) Reference(byte[] body)
    {
        var writer = new ArrayBufferWriter<byte>();
        var span = writer.GetSpan(body.Length + 5);
        var header = FrameWriter.WriteHeader(span, PacketType.Send, FrameFlags.None, body.Length);
        body.CopyTo(span[header..]);
        writer.Advance(header + body.Length);
        FrameReader.TryRead(new ReadOnlySequence<byte>(writer.WrittenMemory), ProtocolConstants.MaxRemainingLength, out var frame, out _, out _);
        var ok = PacketDecoder.TryDecode(frame, Send.Parser, out var message, out var error);
        return (ok, error, message);
    }

    private static void AssertAgrees(byte[] body, ReadOnlySequence<byte> sequence)
    {
        var (ok, error, message) = Reference(body);
        var readOk = SendReader.TryRead(SendFrame(sequence), out var fields, out var slice, out var readError);
        Assert.True(ok == readOk && error == readError, $"protobuf {ok}/{error}, SendReader {readOk}/{readError}, body {Convert.ToHexString(body)}");
        if (ok)
        {
            Assert.Equal(message!.ClientMsgId, fields.ClientMsgId);
            Assert.Equal(message.ConversationId, fields.ConversationId);
            Assert.Equal(message.ToUserId, fields.ToUserId);
            Assert.Equal(message.ContentType, fields.ContentType);
            Assert.Equal(message.Media, fields.Media);
            Assert.Equal(message.Body.ToByteArray(), slice.ToArray());
        }
    }

    [Fact]
    public void Send_fields_are_read_and_the_body_is_a_slice_of_the_frame_not_a_copy()
    {
        var send = Samples.All().OfType<Send>().Single();
        var bytes = send.ToByteArray();
        var sequence = new ReadOnlySequence<byte>(bytes);

        Assert.True(SendReader.TryRead(SendFrame(sequence), out var fields, out var body, out var error));
        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(send.ClientMsgId, fields.ClientMsgId);
        Assert.Equal(send.ConversationId, fields.ConversationId);
        Assert.Equal(send.ContentType, fields.ContentType);
        Assert.Equal(send.Media, fields.Media);
        Assert.Equal(send.Body.ToByteArray(), body.ToArray());
        Assert.True(MemoryMarshal.TryGetArray(body.First, out var segment));
        Assert.Same(bytes, segment.Array);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Agrees_with_protobuf_on_random_valid_sends_with_unknown_and_repeated_fields(int seed)
    {
        var random = new Random(seed);
        for (var round = 0; round < 300; round++)
        {
            var body = RandomSendBody(random);
            AssertAgrees(body, new ReadOnlySequence<byte>(body));
            var cuts = ChunkedReader.RandomSplits(body.Length, random, 1 + random.Next(16));
            var pieces = new List<ReadOnlyMemory<byte>>();
            var offset = 0;
            foreach (var cut in cuts)
            {
                pieces.Add(body.AsMemory(offset, cut));
                offset += cut;
            }

            AssertAgrees(body, Segment.Sequence(pieces));
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void Agrees_with_protobuf_on_random_garbage_and_never_throws(int seed)
    {
        var random = new Random(seed);
        for (var round = 0; round < 3000; round++)
        {
            byte[] body;
            if (round % 3 == 0)
            {
                body = new byte[random.Next(0, 40)];
                random.NextBytes(body);
                AssertAgrees(body, new ReadOnlySequence<byte>(body));
                continue;
            }

            body = RandomSendBody(random);

            // Corrupt a few bytes, or truncate.
            for (var i = random.Next(4); i > 0 && body.Length > 0; i--)
            {
                body[random.Next(body.Length)] = (byte)random.Next(256);
            }

            if (random.Next(4) == 0 && body.Length > 0)
            {
                body = body[..random.Next(body.Length)];
            }

            AssertAgrees(body, new ReadOnlySequence<byte>(body));
        }
    }

    [Fact]
    public void Reading_a_send_into_an_existing_conversation_allocates_nothing()
    {
        var bytes = new Send { ClientMsgId = 1UL << 40, ConversationId = 1UL << 32, Body = ByteString.CopyFrom(Samples.Body(100)) }.ToByteArray();
        var frame = SendFrame(new ReadOnlySequence<byte>(bytes));
        SendReader.TryRead(frame, out _, out _, out _);

        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 100; i++)
        {
            SendReader.TryRead(frame, out _, out _, out _);
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void A_frame_that_is_not_a_send_is_a_caller_bug()
    {
        Assert.Throws<ArgumentException>(() => SendReader.TryRead(new Frame(PacketType.Ping, FrameFlags.None, default, 2), out _, out _, out _));
    }

    private static byte[] RandomSendBody(Random random)
    {
        var parts = new List<byte[]>();
        for (var n = random.Next(1, 3); n > 0; n--)
        {
            var send = new Send();
            if (random.Next(5) != 0)
            {
                send.ClientMsgId = (ulong)random.NextInt64(0, long.MaxValue);
            }

            switch (random.Next(4))
            {
                case 0: send.ConversationId = (ulong)random.Next(1, int.MaxValue); break;
                case 1: send.ToUserId = "user-" + random.Next(); break;
                case 2: send.ConversationId = 5; send.ToUserId = "both"; break;
                default: break;
            }

            if (random.Next(2) == 0)
            {
                send.ContentType = (ContentType)random.Next(-3, 100);
            }

            if (random.Next(3) != 0)
            {
                send.Body = ByteString.CopyFrom(Samples.Body(random.Next(0, 300), random.Next()));
            }

            if (random.Next(4) == 0)
            {
                send.Media = new MediaRef { MediaId = "m" + random.Next(), Width = (uint)random.Next(1000) };
            }

            parts.Add(send.ToByteArray());
            parts.Add(RandomUnknownField(random));
        }

        // Shuffle whole fields is not possible on encoded bytes; concatenation (a protobuf merge) is.
        return parts.SelectMany(p => p).ToArray();
    }

    private static byte[] RandomUnknownField(Random random)
    {
        var field = random.Next(7, 40);
        return random.Next(6) switch
        {
            0 => [],
            1 => [.. Tag(field, 0), 0x96, 0x01],
            2 => [.. Tag(field, 1), 1, 2, 3, 4, 5, 6, 7, 8],
            3 => [.. Tag(field, 2), 3, 0xAA, 0xBB, 0xCC],
            4 => [.. Tag(field, 5), 1, 2, 3, 4],
            _ => [.. Tag(field, 3), .. Tag(field + 1, 0), 0x01, .. Tag(field, 4)],
        };
    }

    private static byte[] Tag(int field, int wireType)
    {
        var value = (uint)((field << 3) | wireType);
        return value < 0x80 ? [(byte)value] : [(byte)(value | 0x80), (byte)(value >> 7)];
    }
}
