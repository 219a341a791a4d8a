using System.Buffers;
using ChatBroker.Broker.Mqtt;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Mqtt.Tests;

/// <summary>The codec wrapper: framing checked before the body, round trips through MQTTnet's formatter for each version.</summary>
public sealed class CodecTests
{
    private static readonly MqttCodec Codec = MqttCodec.Shared;

    private static byte[] Encode(MqttProtocolVersion version, MqttPacket packet)
    {
        var writer = new ArrayBufferWriter<byte>();
        Codec.Encode(version, packet, writer);
        return writer.WrittenSpan.ToArray();
    }

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public void A_publish_round_trips_and_is_framed_only_when_whole(MqttProtocolVersion version)
    {
        var bytes = Encode(version, new MqttPublishPacket
        {
            Topic = "a/b",
            Payload = new ReadOnlySequence<byte>("hello"u8.ToArray()),
            QualityOfServiceLevel = MqttQualityOfServiceLevel.AtLeastOnce,
            PacketIdentifier = 7,
        });
        // One byte at a time: incomplete until the last byte.
        for (var i = 0; i < bytes.Length; i++)
        {
            Assert.Equal(MqttFrameStatus.Incomplete, Codec.TryReadFrame(bytes.AsSpan(0, i), 1024, out _));
        }

        Assert.Equal(MqttFrameStatus.Complete, Codec.TryReadFrame(bytes, 1024, out var header));
        Assert.Equal(bytes.Length, header.TotalLength);
        var decoded = (MqttPublishPacket)Codec.Decode(version, header.FixedHeader, new ArraySegment<byte>(bytes, header.HeaderLength, header.BodyLength));
        Assert.Equal("a/b", decoded.Topic);
        Assert.Equal(7, decoded.PacketIdentifier);
        Assert.Equal("hello"u8.ToArray(), decoded.Payload.ToArray());

        // The payload is the packet's own copy, not a view of the receive buffer: a chat PUBLISH keeps it as the message
        // body without copying it again, and the connection reuses its buffer.
        Array.Clear(bytes);
        Assert.Equal("hello"u8.ToArray(), decoded.Payload.ToArray());
    }

    [Fact]
    public void A_declared_length_over_the_limit_is_refused_before_the_body()
    {
        byte[] header = [0x30, 0xFF, 0xFF, 0x7F]; // 2 MB declared, nothing of it sent
        Assert.Equal(MqttFrameStatus.TooLarge, Codec.TryReadFrame(header, 64 * 1024, out _));
    }

    [Fact]
    public void A_five_byte_remaining_length_and_type_zero_are_malformed()
    {
        Assert.Equal(MqttFrameStatus.Malformed, Codec.TryReadFrame([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], int.MaxValue, out _));
        Assert.Equal(MqttFrameStatus.Malformed, Codec.TryReadFrame([0x00, 0x00], 1024, out _));
    }

    [Theory]
    [InlineData(new byte[] { 0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 4 }, MqttProtocolVersion.V311)]
    [InlineData(new byte[] { 0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 5 }, MqttProtocolVersion.V500)]
    [InlineData(new byte[] { 0, 6, (byte)'M', (byte)'Q', (byte)'I', (byte)'s', (byte)'d', (byte)'p', 3 }, MqttProtocolVersion.V310)]
    public void The_protocol_version_is_read_from_CONNECT(byte[] body, MqttProtocolVersion expected)
    {
        Assert.True(Codec.TryReadProtocolVersion(body, out var version));
        Assert.Equal(expected, version);
    }

    [Fact]
    public void A_body_that_does_not_parse_throws_the_codecs_exception()
    {
        Assert.Throws<MqttCodecException>(() => Codec.Decode(MqttProtocolVersion.V311, 0x82, new ArraySegment<byte>([0x00])));
    }
}
