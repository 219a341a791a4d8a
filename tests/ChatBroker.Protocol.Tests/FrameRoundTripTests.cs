using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

public class FrameRoundTripTests
{
    public static TheoryData<string> PacketNames()
    {
        var data = new TheoryData<string>();
        foreach (var message in Samples.All())
        {
            data.Add(message.Descriptor.Name);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(PacketNames))]
    public void Every_packet_type_survives_write_read_decode(string name)
    {
        var message = Samples.All().Single(m => m.Descriptor.Name == name);
        var writer = new ArrayBufferWriter<byte>();
        var written = FrameWriter.Write(writer, message);

        var buffer = new ReadOnlySequence<byte>(writer.WrittenMemory);
        Assert.True(FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out var consumed, out var error));
        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(buffer.End, consumed);
        Assert.Equal(written, frame.Length);
        Assert.Equal(PacketTypes.Of(message), frame.Type);
        Assert.Equal(FrameFlags.None, frame.Flags);

        Assert.True(PacketDecoder.TryDecode(frame, out var decoded, out error), $"{name}: {error}");
        Assert.Equal(message, decoded);
    }

    [Fact]
    public void Samples_cover_every_packet_type_exactly_once()
    {
        var types = Samples.All().Select(PacketTypes.Of).ToList();
        Assert.Equal(PacketTypes.All.Count, types.Count);
        Assert.Equal(PacketTypes.All.OrderBy(t => t), types.OrderBy(t => t));
    }

    [Fact]
    public void Packet_type_table_matches_the_proto_enum()
    {
        var defined = Enum.GetValues<PacketType>().Where(t => t != PacketType.Unspecified).ToList();
        Assert.Equal(defined.OrderBy(t => t), PacketTypes.All.OrderBy(t => t));
        foreach (var type in defined)
        {
            Assert.Equal(0, (int)type & 0x03);
            Assert.NotNull(PacketTypes.ParserFor(type));
            Assert.NotEqual(PacketDirection.None, PacketTypes.Direction(type));
        }
    }

    [Fact]
    public void Typed_decode_returns_the_message_of_the_frame_type()
    {
        var writer = new ArrayBufferWriter<byte>();
        var sent = new Sent { ClientMsgId = 5, ConversationId = 6, Seq = 7, TimestampMs = 8 };
        FrameWriter.Write(writer, sent);
        Assert.True(FrameReader.TryRead(new ReadOnlySequence<byte>(writer.WrittenMemory), 1024, out var frame, out _, out _));

        Assert.True(PacketDecoder.TryDecode(frame, Sent.Parser, out var decoded, out var error));
        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(sent, decoded);
        Assert.Throws<ArgumentException>(() => PacketDecoder.TryDecode(frame, Send.Parser, out _, out _));
    }

    [Fact]
    public void Dup_flag_round_trips_on_send_and_deliver()
    {
        foreach (var message in new IMessage[] { Samples.All().OfType<Send>().Single(), Samples.All().OfType<Deliver>().Single() })
        {
            var writer = new ArrayBufferWriter<byte>();
            FrameWriter.Write(writer, message, FrameFlags.Dup);
            Assert.Equal((byte)((int)PacketTypes.Of(message) | 1), writer.WrittenSpan[0]);
            Assert.True(FrameReader.TryRead(new ReadOnlySequence<byte>(writer.WrittenMemory), 1024, out var frame, out _, out _));
            Assert.True(frame.IsDup);
        }
    }

    [Fact]
    public void Writer_refuses_flags_not_allowed_for_the_type()
    {
        var writer = new ArrayBufferWriter<byte>();
        Assert.Throws<ArgumentException>(() => FrameWriter.Write(writer, new Ping(), FrameFlags.Dup));
        Assert.Throws<ArgumentException>(() => FrameWriter.Write(writer, new Send(), FrameFlags.Reserved));
        Assert.Throws<ArgumentException>(() => FrameWriter.Write(writer, new ConversationCursor()));
    }

    [Theory]
    [InlineData(0, 2)]
    [InlineData(127, 2)]
    [InlineData(128, 3)]
    [InlineData(16_383, 3)]
    [InlineData(16_384, 4)]
    [InlineData(2_097_151, 4)]
    [InlineData(2_097_152, 5)]
    [InlineData(268_435_455, 5)]
    public void Remaining_length_uses_the_fewest_bytes(int bodyLength, int headerLength)
    {
        Assert.Equal(headerLength, FrameWriter.HeaderLength(bodyLength));
        Span<byte> header = stackalloc byte[5];
        Assert.Equal(headerLength, FrameWriter.WriteHeader(header, PacketType.Send, FrameFlags.None, bodyLength));

        // The header alone is enough for the reader to know the length: it asks for more data.
        var bytes = header[..headerLength].ToArray();
        var complete = FrameReader.TryRead(new ReadOnlySequence<byte>(bytes), ProtocolConstants.MaxRemainingLength, out _, out _, out var error);
        Assert.Equal(bodyLength == 0, complete);
        Assert.Equal(ReasonCode.Success, error);
    }

    [Fact]
    public void Several_frames_in_one_buffer_are_read_one_after_another()
    {
        var data = Samples.Stream(out var expected);
        var buffer = new ReadOnlySequence<byte>(data);
        var count = 0;
        while (FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out var consumed, out var error))
        {
            Assert.Equal(expected[count].Type, frame.Type);
            Assert.Equal(expected[count].Flags, frame.Flags);
            buffer = buffer.Slice(consumed);
            count++;
        }

        Assert.Equal(expected.Count, count);
        Assert.True(buffer.IsEmpty);
    }
}
