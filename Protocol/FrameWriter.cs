using System.Buffers;
using System.Runtime.CompilerServices;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol;

/// <summary>
/// Writes frames straight into an <see cref="IBufferWriter{T}"/> (e.g. a PipeWriter): the body
/// size is computed first, then header and body are encoded into one span of the writer. No
/// intermediate arrays. Batch many frames, then flush once.
/// </summary>
public static class FrameWriter
{
    /// <summary>Length of the type byte plus the remaining-length varint for a body of this size.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int HeaderLength(int bodyLength) => bodyLength switch
    {
        < 0 => ThrowBodyLength(bodyLength),
        < 1 << 7 => 2,
        < 1 << 14 => 3,
        < 1 << 21 => 4,
        <= ProtocolConstants.MaxRemainingLength => 5,
        _ => ThrowBodyLength(bodyLength),
    };

    /// <summary>Writes the frame header into <paramref name="destination"/>; returns its length.</summary>
    public static int WriteHeader(Span<byte> destination, PacketType type, FrameFlags flags, int bodyLength)
    {
        CheckTypeAndFlags(type, flags);
        var headerLength = HeaderLength(bodyLength);
        destination[0] = (byte)((int)type | (int)flags);
        Varint.Write(destination[1..headerLength], (uint)bodyLength);
        return headerLength;
    }

    /// <summary>Writes <paramref name="message"/> as a frame of its own packet type.</summary>
    /// <returns>Bytes written.</returns>
    public static int Write(IBufferWriter<byte> writer, IMessage message, FrameFlags flags = FrameFlags.None) =>
        Write(writer, PacketTypes.Of(message), message, flags);

    /// <summary>Writes <paramref name="message"/> as a frame of packet type <paramref name="type"/>.</summary>
    /// <returns>Bytes written.</returns>
    public static int Write(IBufferWriter<byte> writer, PacketType type, IMessage message, FrameFlags flags = FrameFlags.None)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(message);
        var bodyLength = message.CalculateSize();
        var headerLength = HeaderLength(bodyLength);
        var total = headerLength + bodyLength;
        var span = writer.GetSpan(total);
        WriteHeader(span, type, flags, bodyLength);
        message.WriteTo(span.Slice(headerLength, bodyLength));
        writer.Advance(total);
        return total;
    }

    /// <summary>Encoded frame length of <paramref name="message"/>, header included.</summary>
    public static int FrameLength(IMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        var bodyLength = message.CalculateSize();
        return HeaderLength(bodyLength) + bodyLength;
    }

    internal static void CheckTypeAndFlags(PacketType type, FrameFlags flags)
    {
        if (!PacketTypes.IsKnown(type) || (flags & ~PacketTypes.AllowedFlags(type)) != 0)
        {
            ThrowTypeOrFlags(type, flags);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowTypeOrFlags(PacketType type, FrameFlags flags) =>
        throw new ArgumentException($"Packet type {type} with flags {flags} is not allowed on the wire.", nameof(flags));

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int ThrowBodyLength(int bodyLength) =>
        throw new ArgumentOutOfRangeException(nameof(bodyLength), bodyLength, "A frame body is 0 to 268,435,455 bytes.");
}
