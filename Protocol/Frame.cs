using System.Buffers;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol;

/// <summary>
/// One frame as cut out of the input by <see cref="FrameReader"/>. <see cref="Body"/> is a slice of
/// the reader's buffer, not a copy: it is valid only until the caller advances past it.
/// </summary>
public readonly struct Frame
{
    public Frame(PacketType type, FrameFlags flags, ReadOnlySequence<byte> body, int headerLength)
    {
        Type = type;
        Flags = flags;
        Body = body;
        HeaderLength = headerLength;
    }

    public PacketType Type { get; }

    public FrameFlags Flags { get; }

    /// <summary>The protobuf body (may be empty, e.g. PING).</summary>
    public ReadOnlySequence<byte> Body { get; }

    /// <summary>Type byte plus remaining-length bytes (2 to 5).</summary>
    public int HeaderLength { get; }

    /// <summary>Whole frame length on the wire.</summary>
    public long Length => HeaderLength + Body.Length;

    public bool IsDup => (Flags & FrameFlags.Dup) != 0;
}
