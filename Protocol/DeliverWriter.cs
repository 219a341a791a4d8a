using System.Buffers;
using System.Text;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol;

/// <summary>
/// Everything of a DELIVER except its body, for <see cref="DeliverWriter"/>. Strings are not copied.
/// </summary>
public readonly record struct DeliverFields
{
    public ulong ConversationId { get; init; }

    public ulong Seq { get; init; }

    public string? SenderUserId { get; init; }

    public string? SenderDeviceId { get; init; }

    public ulong TimestampMs { get; init; }

    public ContentType ContentType { get; init; }

    public MediaRef? Media { get; init; }

    /// <summary>Position in the receiving user's inbox; 0 for fan-out-on-read group messages.</summary>
    public ulong InboxSeq { get; init; }

    /// <summary>Set only when delivering to the sender's own devices.</summary>
    public ulong ClientMsgId { get; init; }
}

/// <summary>
/// The broker's hot path: writes a DELIVER frame from stored body bytes without building a
/// <see cref="Deliver"/> message or copying the body into a ByteString. The output is byte for byte
/// what <see cref="FrameWriter"/> writes for the equivalent <see cref="Deliver"/> (fields in field
/// number order, proto3 defaults omitted), so clients cannot tell the two apart.
/// </summary>
public static class DeliverWriter
{
    // Protobuf tags: (field number << 3) | wire type (0 = varint, 2 = length-delimited).
    private const byte ConversationIdTag = (1 << 3) | 0;
    private const byte SeqTag = (2 << 3) | 0;
    private const byte SenderUserIdTag = (3 << 3) | 2;
    private const byte SenderDeviceIdTag = (4 << 3) | 2;
    private const byte TimestampTag = (5 << 3) | 0;
    private const byte ContentTypeTag = (6 << 3) | 0;
    private const byte BodyTag = (7 << 3) | 2;
    private const byte MediaTag = (8 << 3) | 2;
    private const byte InboxSeqTag = (9 << 3) | 0;
    private const byte ClientMsgIdTag = (10 << 3) | 0;

    /// <summary>Writes a DELIVER frame whose body field is <paramref name="body"/>.</summary>
    /// <returns>Bytes written.</returns>
    public static int Write(IBufferWriter<byte> writer, in DeliverFields fields, ReadOnlySpan<byte> body, FrameFlags flags = FrameFlags.None)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var span = Begin(writer, fields, body.Length, flags, out var position, out var mediaLength, out var total);
        position = WriteBeforeBody(span, position, fields, body.Length);
        body.CopyTo(span[position..]);
        position += body.Length;
        WriteAfterBody(span, position, fields, mediaLength);
        writer.Advance(total);
        return total;
    }

    /// <summary>Writes a DELIVER frame whose body field is <paramref name="body"/> (e.g. a slice of a read buffer).</summary>
    /// <returns>Bytes written.</returns>
    public static int Write(IBufferWriter<byte> writer, in DeliverFields fields, in ReadOnlySequence<byte> body, FrameFlags flags = FrameFlags.None)
    {
        ArgumentNullException.ThrowIfNull(writer);
        if (body.Length > ProtocolConstants.MaxRemainingLength)
        {
            throw new ArgumentOutOfRangeException(nameof(body), "Body exceeds the largest frame.");
        }

        var bodyLength = (int)body.Length;
        var span = Begin(writer, fields, bodyLength, flags, out var position, out var mediaLength, out var total);
        position = WriteBeforeBody(span, position, fields, bodyLength);
        body.CopyTo(span[position..]);
        position += bodyLength;
        WriteAfterBody(span, position, fields, mediaLength);
        writer.Advance(total);
        return total;
    }

    /// <summary>Protobuf body length of the DELIVER these fields and body make.</summary>
    public static int BodyLength(in DeliverFields fields, int bodyLength) =>
        BodyLength(fields, bodyLength, fields.Media is null ? 0 : fields.Media.CalculateSize());

    private static Span<byte> Begin(
        IBufferWriter<byte> writer, in DeliverFields fields, int bodyLength, FrameFlags flags,
        out int position, out int mediaLength, out int total)
    {
        mediaLength = fields.Media is null ? 0 : fields.Media.CalculateSize();
        var messageLength = BodyLength(fields, bodyLength, mediaLength);
        var headerLength = FrameWriter.HeaderLength(messageLength);
        total = headerLength + messageLength;
        var span = writer.GetSpan(total)[..total];
        position = FrameWriter.WriteHeader(span, PacketType.Deliver, flags, messageLength);
        return span;
    }

    private static int BodyLength(in DeliverFields fields, int bodyLength, int mediaLength)
    {
        var size = 0;
        size += VarintFieldSize(fields.ConversationId);
        size += VarintFieldSize(fields.Seq);
        size += StringFieldSize(fields.SenderUserId);
        size += StringFieldSize(fields.SenderDeviceId);
        size += VarintFieldSize(fields.TimestampMs);
        size += VarintFieldSize(EnumWireValue(fields.ContentType));
        size += bodyLength == 0 ? 0 : 1 + Varint.SizeOf((uint)bodyLength) + bodyLength;
        size += fields.Media is null ? 0 : 1 + Varint.SizeOf((uint)mediaLength) + mediaLength;
        size += VarintFieldSize(fields.InboxSeq);
        size += VarintFieldSize(fields.ClientMsgId);
        return size;
    }

    private static int WriteBeforeBody(Span<byte> span, int position, in DeliverFields fields, int bodyLength)
    {
        position = WriteVarintField(span, position, ConversationIdTag, fields.ConversationId);
        position = WriteVarintField(span, position, SeqTag, fields.Seq);
        position = WriteStringField(span, position, SenderUserIdTag, fields.SenderUserId);
        position = WriteStringField(span, position, SenderDeviceIdTag, fields.SenderDeviceId);
        position = WriteVarintField(span, position, TimestampTag, fields.TimestampMs);
        position = WriteVarintField(span, position, ContentTypeTag, EnumWireValue(fields.ContentType));
        if (bodyLength != 0)
        {
            span[position++] = BodyTag;
            position += Varint.Write(span[position..], (uint)bodyLength);
        }

        return position;
    }

    private static void WriteAfterBody(Span<byte> span, int position, in DeliverFields fields, int mediaLength)
    {
        if (fields.Media is not null)
        {
            span[position++] = MediaTag;
            position += Varint.Write(span[position..], (uint)mediaLength);
            fields.Media.WriteTo(span.Slice(position, mediaLength));
            position += mediaLength;
        }

        position = WriteVarintField(span, position, InboxSeqTag, fields.InboxSeq);
        WriteVarintField(span, position, ClientMsgIdTag, fields.ClientMsgId);
    }

    // Protobuf encodes an enum as an int32 varint: negative values sign-extend to 10 bytes.
    private static ulong EnumWireValue(ContentType value) => (ulong)(long)(int)value;

    private static int VarintFieldSize(ulong value) => value == 0 ? 0 : 1 + Varint.SizeOf(value);

    private static int StringFieldSize(string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            return 0;
        }

        var length = Encoding.UTF8.GetByteCount(value);
        return 1 + Varint.SizeOf((uint)length) + length;
    }

    private static int WriteVarintField(Span<byte> span, int position, byte tag, ulong value)
    {
        if (value == 0)
        {
            return position;
        }

        span[position++] = tag;
        return position + Varint.Write(span[position..], value);
    }

    private static int WriteStringField(Span<byte> span, int position, byte tag, string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            return position;
        }

        span[position++] = tag;
        var length = Encoding.UTF8.GetByteCount(value);
        position += Varint.Write(span[position..], (uint)length);
        return position + Encoding.UTF8.GetBytes(value, span[position..]);
    }
}
