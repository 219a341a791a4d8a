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
        var layout = new Layout(fields, body.Length);
        var span = writer.GetSpan(layout.Total)[..layout.Total];
        var position = WriteBeforeBody(span, fields, flags, layout);
        body.CopyTo(span[position..]);
        WriteAfterBody(span, position + body.Length, fields, layout);
        writer.Advance(layout.Total);
        return layout.Total;
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
        var layout = new Layout(fields, bodyLength);
        var span = writer.GetSpan(layout.Total)[..layout.Total];
        var position = WriteBeforeBody(span, fields, flags, layout);
        body.CopyTo(span[position..]);
        WriteAfterBody(span, position + bodyLength, fields, layout);
        writer.Advance(layout.Total);
        return layout.Total;
    }

    /// <summary>
    /// The <see cref="Deliver"/> message these fields and body make, for packets that nest DELIVERs (a HISTORY
    /// page): parsed from what <see cref="Write(IBufferWriter{byte}, in DeliverFields, ReadOnlySpan{byte}, FrameFlags)"/>
    /// writes, so a DELIVER is encoded in one place only. The rare path: it allocates.
    /// </summary>
    public static Deliver ToMessage(in DeliverFields fields, ReadOnlySpan<byte> body)
    {
        var layout = new Layout(fields, body.Length);
        var frame = new ArrayBufferWriter<byte>(layout.Total);
        Write(frame, fields, body);
        return Deliver.Parser.ParseFrom(frame.WrittenSpan[(layout.Total - layout.MessageLength)..]);
    }

    /// <summary>Protobuf body length of the DELIVER these fields and body make.</summary>
    public static int BodyLength(in DeliverFields fields, int bodyLength) => new Layout(fields, bodyLength).MessageLength;

    private static int WriteBeforeBody(Span<byte> span, in DeliverFields fields, FrameFlags flags, in Layout layout)
    {
        var position = FrameWriter.WriteHeader(span, PacketType.Deliver, flags, layout.MessageLength);
        position = WriteVarintField(span, position, ConversationIdTag, fields.ConversationId);
        position = WriteVarintField(span, position, SeqTag, fields.Seq);
        position = WriteStringField(span, position, SenderUserIdTag, fields.SenderUserId, layout.UserLength);
        position = WriteStringField(span, position, SenderDeviceIdTag, fields.SenderDeviceId, layout.DeviceLength);
        position = WriteVarintField(span, position, TimestampTag, fields.TimestampMs);
        position = WriteVarintField(span, position, ContentTypeTag, EnumWireValue(fields.ContentType));
        if (layout.BodyLength != 0)
        {
            span[position++] = BodyTag;
            position += Varint.Write(span[position..], (uint)layout.BodyLength);
        }

        return position;
    }

    private static void WriteAfterBody(Span<byte> span, int position, in DeliverFields fields, in Layout layout)
    {
        if (fields.Media is not null)
        {
            span[position++] = MediaTag;
            position += Varint.Write(span[position..], (uint)layout.MediaLength);
            fields.Media.WriteTo(span.Slice(position, layout.MediaLength));
            position += layout.MediaLength;
        }

        position = WriteVarintField(span, position, InboxSeqTag, fields.InboxSeq);
        WriteVarintField(span, position, ClientMsgIdTag, fields.ClientMsgId);
    }

    /// <summary>Sizes computed once per frame (UTF-8 lengths and the media size are not free).</summary>
    private readonly struct Layout
    {
        public Layout(in DeliverFields fields, int bodyLength)
        {
            BodyLength = bodyLength;
            UserLength = Utf8Length(fields.SenderUserId);
            DeviceLength = Utf8Length(fields.SenderDeviceId);
            MediaLength = fields.Media is null ? 0 : fields.Media.CalculateSize();

            var size = VarintFieldSize(fields.ConversationId)
                + VarintFieldSize(fields.Seq)
                + LengthDelimitedFieldSize(UserLength)
                + LengthDelimitedFieldSize(DeviceLength)
                + VarintFieldSize(fields.TimestampMs)
                + VarintFieldSize(EnumWireValue(fields.ContentType))
                + LengthDelimitedFieldSize(bodyLength)
                + (fields.Media is null ? 0 : 1 + Varint.SizeOf((uint)MediaLength) + MediaLength)
                + VarintFieldSize(fields.InboxSeq)
                + VarintFieldSize(fields.ClientMsgId);
            MessageLength = size;
            Total = FrameWriter.HeaderLength(size) + size;
        }

        public int BodyLength { get; }

        public int UserLength { get; }

        public int DeviceLength { get; }

        public int MediaLength { get; }

        public int MessageLength { get; }

        public int Total { get; }
    }

    // Protobuf encodes an enum as an int32 varint: negative values sign-extend to 10 bytes.
    private static ulong EnumWireValue(ContentType value) => (ulong)(long)(int)value;

    private static int VarintFieldSize(ulong value) => value == 0 ? 0 : 1 + Varint.SizeOf(value);

    // proto3 omits empty strings and bytes, so a zero length costs nothing.
    private static int LengthDelimitedFieldSize(int length) => length == 0 ? 0 : 1 + Varint.SizeOf((uint)length) + length;

    private static int Utf8Length(string? value) => string.IsNullOrEmpty(value) ? 0 : Encoding.UTF8.GetByteCount(value);

    private static int WriteVarintField(Span<byte> span, int position, byte tag, ulong value)
    {
        if (value == 0)
        {
            return position;
        }

        span[position++] = tag;
        return position + Varint.Write(span[position..], value);
    }

    private static int WriteStringField(Span<byte> span, int position, byte tag, string? value, int utf8Length)
    {
        if (utf8Length == 0)
        {
            return position;
        }

        span[position++] = tag;
        position += Varint.Write(span[position..], (uint)utf8Length);
        return position + Encoding.UTF8.GetBytes(value, span[position..]);
    }
}
