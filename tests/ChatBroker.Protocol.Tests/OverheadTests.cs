using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>The byte budget promised in docs/protocol.md ("Overhead").</summary>
public class OverheadTests
{
    private static int FrameLength(IMessage message)
    {
        var writer = new ArrayBufferWriter<byte>();
        return FrameWriter.Write(writer, message);
    }

    [Theory]
    [InlineData(ContentType.Text, 17)]
    [InlineData(ContentType.Image, 19)]
    [InlineData((ContentType)64, 19)]
    public void Send_of_a_100_byte_body_into_an_existing_conversation_costs_at_most_20_bytes(ContentType contentType, int expectedOverhead)
    {
        var send = new Send
        {
            ClientMsgId = (1UL << 40) + 12_345,      // 6-byte varint
            ConversationId = (1UL << 32) + 7,        // 5-byte varint
            ContentType = contentType,
            Body = ByteString.CopyFrom(Samples.Body(100)),
        };

        var overhead = FrameLength(send) - 100;
        Assert.Equal(expectedOverhead, overhead);
        Assert.True(overhead <= 20);
    }

    [Fact]
    public void Send_with_the_largest_ids_still_fits_in_24_bytes_of_overhead()
    {
        var send = new Send { ClientMsgId = ulong.MaxValue, ConversationId = ulong.MaxValue, ContentType = ContentType.Image, Body = ByteString.CopyFrom(Samples.Body(100)) };

        // 2 header + (1+10) + (1+10) + (1+1) + (1+1) = 28 with 10-byte varints: the budget assumes realistic ids.
        Assert.Equal(28, FrameLength(send) - 100);
    }

    [Fact]
    public void Deliver_of_a_100_byte_body_costs_the_documented_overhead()
    {
        var deliver = new Deliver
        {
            ConversationId = (1UL << 32) + 7,
            Seq = 100_000,
            SenderUserId = "u1234567",
            SenderDeviceId = "d1",
            TimestampMs = 1_764_096_000_123,
            Body = ByteString.CopyFrom(Samples.Body(100)),
            InboxSeq = 1_000_000,
        };

        // header 3 (137-byte body) + conv 6 + seq 4 + user 10 + device 4 + ts 7 + body tag/len 2 + inbox 4 = 40
        Assert.Equal(40, FrameLength(deliver) - 100);
    }

    [Fact]
    public void Ping_and_pong_are_two_bytes()
    {
        Assert.Equal(2, FrameLength(new Ping()));
        Assert.Equal(2, FrameLength(new Pong()));
    }

    [Fact]
    public void Ack_of_an_inbox_position_is_at_most_seven_bytes()
    {
        Assert.Equal(6, FrameLength(new Ack { InboxSeq = 1_000_000 }));          // 40 04 08 c0 84 3d
        Assert.Equal(7, FrameLength(new Ack { InboxSeq = 100_000_000 }));
    }
}
