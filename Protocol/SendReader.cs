using System.Buffers;
using System.Text;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol;

/// <summary>The fields of a SEND, without its body; see <see cref="SendReader"/>.</summary>
public readonly record struct SendFields
{
    public ulong ClientMsgId { get; init; }

    public ulong ConversationId { get; init; }

    /// <summary>Empty unless the SEND opens a direct chat (allocated only then).</summary>
    public string ToUserId { get; init; }

    public ContentType ContentType { get; init; }

    /// <summary>Null unless the SEND carries a media reference (parsed by protobuf: rare path).</summary>
    public MediaRef? Media { get; init; }
}

/// <summary>
/// The broker's inbound hot path: reads a SEND frame's fields and hands out its body as a slice of
/// the frame (no <see cref="Send"/> object, no copy into a ByteString), so the broker can keep the
/// slice until the message is persisted. Accepts exactly what <c>Send.Parser</c> accepts and applies
/// the same required-field rules as <see cref="PacketValidator"/>.
/// </summary>
public static class SendReader
{
    private const int MaxGroupDepth = 100; // Google.Protobuf's default recursion limit
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Reads a SEND frame.</summary>
    /// <returns>false with <see cref="ReasonCode.MalformedBody"/>, <see cref="ReasonCode.MissingField"/> or <see cref="ReasonCode.InvalidField"/>.</returns>
    /// <exception cref="ArgumentException">The frame is not a SEND (a caller bug).</exception>
    public static bool TryRead(in Frame frame, out SendFields fields, out ReadOnlySequence<byte> body, out ReasonCode error)
    {
        if (frame.Type != PacketType.Send)
        {
            throw new ArgumentException("Not a SEND frame.", nameof(frame));
        }

        fields = default;
        body = ReadOnlySequence<byte>.Empty;
        var source = frame.Body;
        var reader = new SequenceReader<byte>(source);
        ulong clientMsgId = 0, conversationId = 0;
        var contentType = 0;
        var toUser = ReadOnlySequence<byte>.Empty;
        MediaRef? media = null;

        while (!reader.End)
        {
            // Like protobuf, a tag is the low 32 bits of a varint of up to 10 bytes.
            if (!TryReadVarint(ref reader, out var tagValue) || ((uint)tagValue >> 3) == 0)
            {
                return Malformed(out error);
            }

            var tag = (uint)tagValue;
            switch (tag)
            {
                case (1 << 3) | 0:
                    if (!TryReadVarint(ref reader, out clientMsgId))
                    {
                        return Malformed(out error);
                    }

                    break;
                case (2 << 3) | 0:
                    if (!TryReadVarint(ref reader, out conversationId))
                    {
                        return Malformed(out error);
                    }

                    break;
                case (3 << 3) | 2:
                    // Validated per occurrence, as protobuf decodes every occurrence (the last one wins).
                    if (!TryReadLengthDelimited(ref reader, out toUser) || !IsValidUtf8(toUser))
                    {
                        return Malformed(out error);
                    }

                    break;
                case (4 << 3) | 0:
                    if (!TryReadVarint(ref reader, out var value))
                    {
                        return Malformed(out error);
                    }

                    contentType = (int)value; // an int32 enum: the low 32 bits, like protobuf
                    break;
                case (5 << 3) | 2:
                    if (!TryReadLengthDelimited(ref reader, out body))
                    {
                        return Malformed(out error);
                    }

                    break;
                case (6 << 3) | 2:
                    if (!TryReadLengthDelimited(ref reader, out var mediaBytes) || !TryMergeMedia(ref media, mediaBytes))
                    {
                        return Malformed(out error);
                    }

                    break;
                default:
                    if (!TrySkipField(ref reader, tag, 0))
                    {
                        return Malformed(out error);
                    }

                    break;
            }
        }

        var toUserId = string.Empty;
        if (!toUser.IsEmpty && !TryDecodeUtf8(toUser, out toUserId))
        {
            return Malformed(out error);
        }

        fields = new SendFields
        {
            ClientMsgId = clientMsgId,
            ConversationId = conversationId,
            ToUserId = toUserId,
            ContentType = (ContentType)contentType,
            Media = media,
        };

        // The same rules as PacketValidator applies to a parsed Send.
        error = PacketValidator.ValidateSend(clientMsgId, conversationId, toUserId);
        if (error != ReasonCode.Success)
        {
            body = ReadOnlySequence<byte>.Empty;
            return false;
        }

        return true;
    }

    private static bool Malformed(out ReasonCode error)
    {
        error = ReasonCode.MalformedBody;
        return false;
    }

    private static bool TryReadVarint(ref SequenceReader<byte> reader, out ulong value)
    {
        value = 0;
        for (var shift = 0; shift < 70; shift += 7)
        {
            if (!reader.TryRead(out var b))
            {
                return false;
            }

            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return true;
            }
        }

        return false; // more than 10 bytes
    }

    private static bool TryReadLengthDelimited(ref SequenceReader<byte> reader, out ReadOnlySequence<byte> slice)
    {
        slice = default;
        if (!TryReadVarint(ref reader, out var length) || length > int.MaxValue || (long)length > reader.Remaining)
        {
            return false;
        }

        slice = reader.UnreadSequence.Slice(0, (long)length);
        reader.Advance((long)length);
        return true;
    }

    private static bool TrySkipField(ref SequenceReader<byte> reader, uint tag, int depth)
    {
        switch (tag & 7)
        {
            case 0:
                return TryReadVarint(ref reader, out _);
            case 1:
                return TryAdvance(ref reader, 8);
            case 2:
                return TryReadLengthDelimited(ref reader, out _);
            case 5:
                return TryAdvance(ref reader, 4);
            case 3:
                if (depth >= MaxGroupDepth)
                {
                    return false;
                }

                // A group runs to the end-group tag of the same field number.
                while (true)
                {
                    if (!TryReadVarint(ref reader, out var innerValue) || ((uint)innerValue >> 3) == 0)
                    {
                        return false;
                    }

                    var inner = (uint)innerValue;
                    if ((inner & 7) == 4)
                    {
                        return (inner >> 3) == (tag >> 3);
                    }

                    if (!TrySkipField(ref reader, inner, depth + 1))
                    {
                        return false;
                    }
                }

            default:
                return false; // 4 (an end-group without its start), 6 and 7 do not exist
        }
    }

    private static bool IsValidUtf8(in ReadOnlySequence<byte> bytes) =>
        bytes.IsSingleSegment ? System.Text.Unicode.Utf8.IsValid(bytes.FirstSpan) : System.Text.Unicode.Utf8.IsValid(bytes.ToArray());

    private static bool TryAdvance(ref SequenceReader<byte> reader, int count)
    {
        if (reader.Remaining < count)
        {
            return false;
        }

        reader.Advance(count);
        return true;
    }

    private static bool TryMergeMedia(ref MediaRef? media, in ReadOnlySequence<byte> bytes)
    {
        try
        {
            var parsed = MediaRef.Parser.ParseFrom(bytes);
            if (media is null)
            {
                media = parsed;
            }
            else
            {
                media.MergeFrom(parsed);
            }

            return true;
        }
        catch (InvalidProtocolBufferException)
        {
            return false;
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
    }

    private static bool TryDecodeUtf8(in ReadOnlySequence<byte> bytes, out string value)
    {
        try
        {
            value = bytes.IsSingleSegment ? StrictUtf8.GetString(bytes.FirstSpan) : StrictUtf8.GetString(bytes.ToArray());
            return true;
        }
        catch (DecoderFallbackException)
        {
            value = string.Empty;
            return false;
        }
    }
}
