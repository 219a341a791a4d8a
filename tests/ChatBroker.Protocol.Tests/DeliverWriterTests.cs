using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

public class DeliverWriterTests
{
    private static Deliver ToMessage(in DeliverFields fields, byte[] body) => new()
    {
        ConversationId = fields.ConversationId,
        Seq = fields.Seq,
        SenderUserId = fields.SenderUserId ?? string.Empty,
        SenderDeviceId = fields.SenderDeviceId ?? string.Empty,
        TimestampMs = fields.TimestampMs,
        ContentType = fields.ContentType,
        Body = ByteString.CopyFrom(body),
        Media = fields.Media,
        InboxSeq = fields.InboxSeq,
        ClientMsgId = fields.ClientMsgId,
    };

    public static TheoryData<int> Seeds() => [1, 2, 3, 4, 5, 6, 7, 8];

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Hand_rolled_deliver_is_byte_identical_to_protobuf_encoding(int seed)
    {
        var random = new Random(seed);
        for (var round = 0; round < 200; round++)
        {
            var fields = RandomFields(random);
            var bodyLength = random.Next(4) switch { 0 => 0, 1 => random.Next(1, 128), 2 => random.Next(128, 20_000), _ => random.Next(1, 600) };
            var body = new byte[bodyLength];
            random.NextBytes(body);
            var flags = random.Next(2) == 0 ? FrameFlags.None : FrameFlags.Dup;

            var expected = new ArrayBufferWriter<byte>();
            FrameWriter.Write(expected, ToMessage(fields, body), flags);

            var fromSpan = new ArrayBufferWriter<byte>();
            var written = DeliverWriter.Write(fromSpan, fields, body, flags);
            Assert.Equal(expected.WrittenCount, written);
            Assert.Equal(expected.WrittenSpan.ToArray(), fromSpan.WrittenSpan.ToArray());

            // The same body as a multi-segment sequence (as sliced out of a pipe).
            var cut1 = body.Length == 0 ? 0 : random.Next(body.Length);
            var cut2 = cut1 == body.Length ? cut1 : random.Next(cut1, body.Length);
            var sequence = Segment.Sequence([body.AsMemory(0, cut1), body.AsMemory(cut1, cut2 - cut1), body.AsMemory(cut2)]);
            var fromSequence = new ArrayBufferWriter<byte>();
            DeliverWriter.Write(fromSequence, fields, sequence, flags);
            Assert.Equal(expected.WrittenSpan.ToArray(), fromSequence.WrittenSpan.ToArray());

            Assert.Equal(ToMessage(fields, body).CalculateSize(), DeliverWriter.BodyLength(fields, body.Length));
            Assert.Equal(ToMessage(fields, body), DeliverWriter.ToMessage(fields, body));
        }
    }

    [Fact]
    public void Hand_rolled_deliver_with_all_defaults_is_an_empty_body()
    {
        var writer = new ArrayBufferWriter<byte>();
        DeliverWriter.Write(writer, default, ReadOnlySpan<byte>.Empty);
        Assert.Equal(new byte[] { 0x38, 0x00 }, writer.WrittenSpan.ToArray());
    }

    [Fact]
    public void Hand_rolled_deliver_encodes_non_ascii_sender_ids_like_protobuf()
    {
        var fields = new DeliverFields { ConversationId = 1, Seq = 2, SenderUserId = "zoë-日本-😀", SenderDeviceId = "Ω" };
        var expected = new ArrayBufferWriter<byte>();
        FrameWriter.Write(expected, ToMessage(fields, [1, 2, 3]));
        var actual = new ArrayBufferWriter<byte>();
        DeliverWriter.Write(actual, fields, new byte[] { 1, 2, 3 });
        Assert.Equal(expected.WrittenSpan.ToArray(), actual.WrittenSpan.ToArray());
    }

    private static DeliverFields RandomFields(Random random)
    {
        ulong Id() => random.Next(5) switch
        {
            0 => 0,
            1 => (ulong)random.Next(1, 128),
            2 => (ulong)random.NextInt64(),
            3 => ulong.MaxValue,
            _ => (ulong)random.Next(),
        };

        string? Name() => random.Next(4) switch
        {
            0 => null,
            1 => string.Empty,
            2 => "user-" + random.Next(),
            _ => new string('é', random.Next(1, 100)),
        };

        return new DeliverFields
        {
            ConversationId = Id(),
            Seq = Id(),
            SenderUserId = Name(),
            SenderDeviceId = Name(),
            TimestampMs = Id(),
            ContentType = random.Next(4) switch { 0 => ContentType.Text, 1 => ContentType.Image, 2 => (ContentType)random.Next(200), _ => (ContentType)(-random.Next(1, 5)) },
            Media = random.Next(3) == 0 ? new MediaRef { MediaId = "m" + random.Next(), SizeBytes = (ulong)random.Next(), MimeType = "image/png" } : null,
            InboxSeq = Id(),
            ClientMsgId = Id(),
        };
    }
}
