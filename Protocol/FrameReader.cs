using System.Buffers;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol;

/// <summary>
/// Cuts frames out of a byte stream without copying their bodies.
/// </summary>
/// <remarks>
/// <code>
///  +--------+--------------------+----------------------------------+
///  | type   | remaining length   | body: protobuf message of `type` |
///  | 1 byte | 1-4 bytes (varint) | `remaining length` bytes         |
///  +--------+--------------------+----------------------------------+
///  type byte: bits 7..4 family, 3..2 op, 1..0 flags
///  length: 7 bits per byte, least significant group first, high bit = "more bytes follow"
///          (MQTT 3.1.1 section 2.2.3), minimally encoded, at most 268,435,455.
/// </code>
/// Like Kestrel's Http2FrameReader, the declared length is checked against the limit as soon as
/// the length bytes are in, before a single body byte is awaited, so nothing is ever buffered or
/// allocated on the strength of an unchecked length. The type byte is checked even earlier: the
/// moment it arrives.
/// </remarks>
public static class FrameReader
{
    /// <summary>
    /// Reads one frame from the start of <paramref name="buffer"/>.
    /// </summary>
    /// <param name="buffer">Unconsumed input, e.g. <c>ReadResult.Buffer</c> of a PipeReader.</param>
    /// <param name="maxFrameSize">Largest body length accepted (the frame's remaining length).</param>
    /// <param name="frame">The frame, whose body is a slice of <paramref name="buffer"/>.</param>
    /// <param name="consumed">Where the frame ends: advance the reader to here.</param>
    /// <param name="error">Why the input is malformed; <see cref="ReasonCode.Success"/> otherwise.</param>
    /// <returns>
    /// true: a complete frame. false with <paramref name="error"/> = Success: need more data
    /// (examine to buffer.End, consume nothing). false with any other error: the stream is malformed;
    /// send that reason code and close.
    /// </returns>
    public static bool TryRead(
        in ReadOnlySequence<byte> buffer,
        int maxFrameSize,
        out Frame frame,
        out SequencePosition consumed,
        out ReasonCode error)
    {
        frame = default;
        consumed = buffer.Start;
        error = ReasonCode.Success;

        if (buffer.IsEmpty)
        {
            return false;
        }

        if ((uint)maxFrameSize > ProtocolConstants.MaxRemainingLength)
        {
            ThrowBadMaxFrameSize(maxFrameSize);
        }

        // The header is at most 5 bytes; copy it out only when it straddles segments.
        scoped ReadOnlySpan<byte> header = buffer.FirstSpan;
        Span<byte> copy = stackalloc byte[ProtocolConstants.MaxHeaderLength];
        if (header.Length < ProtocolConstants.MaxHeaderLength && buffer.Length > header.Length)
        {
            var available = (int)Math.Min(buffer.Length, ProtocolConstants.MaxHeaderLength);
            buffer.Slice(0, available).CopyTo(copy);
            header = copy[..available];
        }

        var first = header[0];
        var info = PacketTypes.InfoOf(first);
        if (!PacketTypes.IsKnownInfo(info))
        {
            error = ReasonCode.UnknownPacketType;
            return false;
        }

        if ((first & ProtocolConstants.FlagsMask & ~info) != 0)
        {
            error = ReasonCode.InvalidFlags;
            return false;
        }

        var length = 0;
        var index = 1;
        while (true)
        {
            if (index >= header.Length)
            {
                return false;
            }

            var b = header[index];
            length |= (b & 0x7F) << (7 * (index - 1));
            if ((b & 0x80) == 0)
            {
                // A last byte of 0 after a continuation means the value fit in fewer bytes.
                if (b == 0 && index > 1)
                {
                    error = ReasonCode.MalformedLength;
                    return false;
                }

                break;
            }

            if (index == 4)
            {
                // The 4th length byte says "more follows": a 5-byte varint, never valid.
                error = ReasonCode.MalformedLength;
                return false;
            }

            index++;
        }

        if (length > maxFrameSize)
        {
            error = ReasonCode.FrameTooLarge;
            return false;
        }

        var headerLength = index + 1;
        if (buffer.Length - headerLength < length)
        {
            return false;
        }

        var body = buffer.Slice(headerLength, length);
        frame = new Frame(
            (PacketType)(first & ProtocolConstants.TypeMask),
            (FrameFlags)(first & ProtocolConstants.FlagsMask),
            body,
            headerLength);
        consumed = body.End;
        return true;
    }

    /// <summary>
    /// What to report when the input stream has ended: <see cref="ReasonCode.Success"/> if nothing
    /// is left over, <see cref="ReasonCode.TruncatedFrame"/> if it stopped inside a frame.
    /// </summary>
    public static ReasonCode CheckEndOfStream(in ReadOnlySequence<byte> unconsumed) =>
        unconsumed.IsEmpty ? ReasonCode.Success : ReasonCode.TruncatedFrame;

    private static void ThrowBadMaxFrameSize(int maxFrameSize) =>
        throw new ArgumentOutOfRangeException(
            nameof(maxFrameSize), maxFrameSize, "Must be between 0 and 268,435,455 (the largest 4-byte remaining length).");
}
