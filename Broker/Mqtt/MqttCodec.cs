using System.Buffers;
using System.Collections.Concurrent;
using MQTTnet.Adapter;
using MQTTnet.Exceptions;
using MQTTnet.Formatter;
using MQTTnet.Formatter.V3;
using MQTTnet.Formatter.V5;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>What <see cref="IMqttPacketCodec.TryReadFrame"/> found at the start of a buffer.</summary>
public enum MqttFrameStatus
{
    /// <summary>A whole packet is there.</summary>
    Complete,
    /// <summary>More bytes are needed.</summary>
    Incomplete,
    /// <summary>The declared remaining length exceeds the limit (decided before any body byte is buffered).</summary>
    TooLarge,
    /// <summary>The remaining length is longer than 4 bytes, or the packet type is 0 (reserved).</summary>
    Malformed,
}

/// <summary>
/// An MQTT packet's fixed header as read from the wire (MQTT 3.1.1 §2.2, 5.0 §2.1):
/// <code>
/// +---------------------+-------------------------------+------------------------------+
/// | type (4) | flags (4)| remaining length: varint 1-4  | variable header + payload    |
/// +---------------------+-------------------------------+------------------------------+
/// </code>
/// </summary>
public readonly record struct MqttFrameHeader(byte FixedHeader, int HeaderLength, int BodyLength)
{
    public MqttControlPacketType Type => (MqttControlPacketType)(FixedHeader >> 4);

    public int Flags => FixedHeader & 0x0F;

    public int TotalLength => HeaderLength + BodyLength;
}

/// <summary>Thrown by <see cref="IMqttPacketCodec.Decode"/> for a packet that does not parse or breaks a rule of the spec.</summary>
public sealed class MqttCodecException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The MQTT packet codec the listener sees: framing with a size check before the body is buffered, version detection,
/// decode and encode. The implementation (<see cref="MqttCodec"/>) wraps MQTTnet's formatter, pinned to 5.2.0.1603;
/// nothing else of MQTTnet (its server, sessions, channels) is used.
/// </summary>
public interface IMqttPacketCodec
{
    /// <summary>Reads the fixed header at the start of <paramref name="buffer"/>; the length is checked against
    /// <paramref name="maxPacketBytes"/> as soon as it is known.</summary>
    MqttFrameStatus TryReadFrame(ReadOnlySpan<byte> buffer, int maxPacketBytes, out MqttFrameHeader header);

    /// <summary>The protocol a CONNECT body asks for (3.1, 3.1.1 or 5.0); false when it names another one or does not parse.</summary>
    bool TryReadProtocolVersion(ReadOnlySpan<byte> connectBody, out MqttProtocolVersion version);

    /// <summary>Decodes one packet. MQTTnet copies a PUBLISH payload into an array of its own (the packet owns it; CodecTests checks it).</summary>
    MqttPacket Decode(MqttProtocolVersion version, byte fixedHeader, ArraySegment<byte> body);

    /// <summary>Encodes one packet at the end of <paramref name="destination"/>; returns its length.</summary>
    int Encode(MqttProtocolVersion version, MqttPacket packet, IBufferWriter<byte> destination);

    /// <summary>
    /// The hot path of QoS 1/2 flows: the packet id of a PUBACK, PUBREC, PUBREL or PUBCOMP whose body is the id alone
    /// (3.1.1 always; 5.0 when the reason is success and there are no properties). False: decode it whole.
    /// </summary>
    bool TryReadAcknowledgement(MqttFrameHeader header, ReadOnlySpan<byte> body, out ushort packetId);

    /// <summary>A PUBACK, PUBREC, PUBREL or PUBCOMP with success and no properties (the same 4 bytes in 3.1.1 and 5.0).</summary>
    void WriteAcknowledgement(MqttControlPacketType type, ushort packetId, IBufferWriter<byte> destination);

    /// <summary>A PUBLISH with no properties (3.1 and 3.1.1), written without an intermediate packet object.</summary>
    void WritePublish(string topic, ReadOnlySpan<byte> payload, byte qos, ushort packetId, IBufferWriter<byte> destination);
}

/// <summary>
/// <see cref="IMqttPacketCodec"/> over MQTTnet's <c>MqttV3PacketFormatter</c>/<c>MqttV5PacketFormatter</c>. A formatter
/// owns a growing buffer (MQTTnet keeps one per connection: part of the 13 KB its server holds per idle client), so
/// here formatters are rented from a pool per protocol version for the duration of one encode or decode and a
/// connection holds none: the bytes are copied into the caller's (pooled) write buffer.
/// </summary>
public sealed class MqttCodec : IMqttPacketCodec
{
    // Formatters kept per version; beyond it they are left to the GC (more are only in use at once under a burst).
    private const int PoolLimit = 64;
    // A formatter's buffer starts at this size and is shrunk back to it after a large packet.
    private const int WriterBytes = 4096;

    public static MqttCodec Shared { get; } = new();

    private readonly ConcurrentQueue<PooledFormatter>[] _pools = [new(), new(), new(), new(), new(), new()];

    private sealed record PooledFormatter(IMqttPacketFormatter Formatter, MqttBufferWriter Writer);

    public MqttFrameStatus TryReadFrame(ReadOnlySpan<byte> buffer, int maxPacketBytes, out MqttFrameHeader header)
    {
        header = default;
        if (buffer.Length < 2)
        {
            return MqttFrameStatus.Incomplete;
        }

        if (buffer[0] >> 4 == 0)
        {
            return MqttFrameStatus.Malformed; // type 0 is reserved
        }

        var length = 0;
        var shift = 0;
        for (var i = 1; i <= 4; i++)
        {
            if (i >= buffer.Length)
            {
                return MqttFrameStatus.Incomplete;
            }

            var b = buffer[i];
            length |= (b & 0x7F) << shift;
            shift += 7;
            if ((b & 0x80) == 0)
            {
                if (length > maxPacketBytes - 1 - i)
                {
                    header = new MqttFrameHeader(buffer[0], 1 + i, length);
                    return MqttFrameStatus.TooLarge;
                }

                header = new MqttFrameHeader(buffer[0], 1 + i, length);
                return buffer.Length >= header.TotalLength ? MqttFrameStatus.Complete : MqttFrameStatus.Incomplete;
            }
        }

        return MqttFrameStatus.Malformed;
    }

    public bool TryReadProtocolVersion(ReadOnlySpan<byte> connectBody, out MqttProtocolVersion version)
    {
        // Protocol name (2-byte length + "MQTT" or "MQIsdp"), then the level byte (3.1.1 §3.1.2.1-2).
        version = MqttProtocolVersion.Unknown;
        if (connectBody.Length < 3)
        {
            return false;
        }

        var nameLength = (connectBody[0] << 8) | connectBody[1];
        if (connectBody.Length < 2 + nameLength + 1)
        {
            return false;
        }

        var name = connectBody.Slice(2, nameLength);
        var level = connectBody[2 + nameLength] & 0x7F; // bit 7: mosquitto's bridge flag
        if (name.SequenceEqual("MQTT"u8))
        {
            version = level switch { 4 => MqttProtocolVersion.V311, 5 => MqttProtocolVersion.V500, _ => MqttProtocolVersion.Unknown };
        }
        else if (name.SequenceEqual("MQIsdp"u8) && level == 3)
        {
            version = MqttProtocolVersion.V310;
        }

        return version != MqttProtocolVersion.Unknown;
    }

    public MqttPacket Decode(MqttProtocolVersion version, byte fixedHeader, ArraySegment<byte> body)
    {
        var formatter = Rent(version);
        try
        {
            // TotalLength only tells the formatter a packet is there (0 means none).
            return formatter.Formatter.Decode(new ReceivedMqttPacket(fixedHeader, body, body.Count + 2))
                ?? throw new MqttCodecException("empty packet");
        }
        catch (Exception e) when (e is MqttProtocolViolationException or ArgumentException or IndexOutOfRangeException
            or InvalidOperationException or NotSupportedException or OverflowException or InvalidCastException or NullReferenceException)
        {
            throw new MqttCodecException(e.Message, e);
        }
        catch (Exception e) when (e.GetType().Namespace?.StartsWith("MQTTnet", StringComparison.Ordinal) == true)
        {
            throw new MqttCodecException(e.Message, e);
        }
        finally
        {
            Return(version, formatter);
        }
    }

    public int Encode(MqttProtocolVersion version, MqttPacket packet, IBufferWriter<byte> destination)
    {
        var formatter = Rent(version);
        try
        {
            var encoded = formatter.Formatter.Encode(packet);
            var header = encoded.Packet.AsSpan();
            var span = destination.GetSpan(encoded.Length);
            header.CopyTo(span);
            if (!encoded.Payload.IsEmpty)
            {
                encoded.Payload.CopyTo(span[header.Length..]);
            }

            destination.Advance(encoded.Length);
            return encoded.Length;
        }
        finally
        {
            Return(version, formatter);
        }
    }

    public bool TryReadAcknowledgement(MqttFrameHeader header, ReadOnlySpan<byte> body, out ushort packetId)
    {
        packetId = 0;
        if (body.Length != 2)
        {
            return false;
        }

        packetId = System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(body);
        return packetId != 0; // a packet id of 0 is malformed: the formatter says so
    }

    public void WriteAcknowledgement(MqttControlPacketType type, ushort packetId, IBufferWriter<byte> destination)
    {
        // Fixed header (PUBREL carries flags 0b0010 [MQTT-3.6.1-1]), remaining length 2, packet id.
        var span = destination.GetSpan(4);
        span[0] = (byte)(((int)type << 4) | (type == MqttControlPacketType.PubRel ? 0x02 : 0));
        span[1] = 2;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[2..], packetId);
        destination.Advance(4);
    }

    public void WritePublish(string topic, ReadOnlySpan<byte> payload, byte qos, ushort packetId, IBufferWriter<byte> destination)
    {
        // 3.1.1 §3.3: fixed header | remaining length | topic (2-byte length + UTF-8) | packet id (QoS > 0) | payload.
        var topicBytes = System.Text.Encoding.UTF8.GetByteCount(topic);
        var remaining = 2 + topicBytes + (qos > 0 ? 2 : 0) + payload.Length;
        var total = 1 + MqttBufferWriter.GetVariableByteIntegerSize((uint)remaining) + remaining;
        var span = destination.GetSpan(total);
        var p = 0;
        span[p++] = (byte)(0x30 | (qos << 1));
        var length = remaining;
        do
        {
            var b = (byte)(length & 0x7F);
            length >>= 7;
            span[p++] = length > 0 ? (byte)(b | 0x80) : b;
        }
        while (length > 0);

        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[p..], (ushort)topicBytes);
        p += 2;
        p += System.Text.Encoding.UTF8.GetBytes(topic, span[p..]);
        if (qos > 0)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[p..], packetId);
            p += 2;
        }

        payload.CopyTo(span[p..]);
        destination.Advance(p + payload.Length);
    }

    private PooledFormatter Rent(MqttProtocolVersion version)
    {
        if (_pools[(int)version].TryDequeue(out var formatter))
        {
            return formatter;
        }

        var writer = new MqttBufferWriter(WriterBytes, WriterBytes);
        return new PooledFormatter(version switch
        {
            MqttProtocolVersion.V500 => new MqttV5PacketFormatter(writer),
            MqttProtocolVersion.V310 or MqttProtocolVersion.V311 => new MqttV3PacketFormatter(writer, version),
            _ => throw new ArgumentOutOfRangeException(nameof(version), version, "no MQTT version negotiated"),
        }, writer);
    }

    private void Return(MqttProtocolVersion version, PooledFormatter formatter)
    {
        formatter.Writer.Cleanup(); // back to WriterBytes after a large packet
        var pool = _pools[(int)version];
        if (pool.Count < PoolLimit)
        {
            pool.Enqueue(formatter);
        }
    }
}
