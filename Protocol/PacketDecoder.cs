using System.Diagnostics.CodeAnalysis;
using System.Text;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol;

/// <summary>
/// Turns a <see cref="Frame"/> into its typed protobuf message and validates the fields this spec
/// requires. Malformed input is reported as a reason code; no exception escapes for any input bytes.
/// </summary>
public static class PacketDecoder
{
    /// <summary>
    /// Parses and validates the body of <paramref name="frame"/>. Switch on the result's type
    /// (<c>case Send send:</c>) or on <see cref="Frame.Type"/>.
    /// </summary>
    /// <returns>
    /// true and the message; or false and <see cref="ReasonCode.UnknownPacketType"/>,
    /// <see cref="ReasonCode.MalformedBody"/>, <see cref="ReasonCode.MissingField"/>,
    /// <see cref="ReasonCode.InvalidField"/> or <see cref="ReasonCode.UnsupportedVersion"/>.
    /// </returns>
    public static bool TryDecode(in Frame frame, [NotNullWhen(true)] out IMessage? message, out ReasonCode error) =>
        TryDecode(frame, out message, out _, out error);

    /// <summary>
    /// As <see cref="TryDecode(in Frame, out IMessage?, out ReasonCode)"/>; when the body parsed but broke a
    /// required-field rule, <paramref name="invalid"/> is the parsed message so the error can echo its request id.
    /// </summary>
    public static bool TryDecode(in Frame frame, [NotNullWhen(true)] out IMessage? message, out IMessage? invalid, out ReasonCode error)
    {
        message = null;
        invalid = null;
        var parser = PacketTypes.ParserFor(frame.Type);
        if (parser is null)
        {
            error = ReasonCode.UnknownPacketType;
            return false;
        }

        if (!TryParse(parser, frame.Body, out var parsed, out error))
        {
            return false;
        }

        error = PacketValidator.Validate(parsed);
        if (error != ReasonCode.Success)
        {
            invalid = parsed;
            return false;
        }

        message = parsed;
        return true;
    }

    /// <summary>
    /// Typed variant for callers that already switched on <see cref="Frame.Type"/>:
    /// <c>TryDecode(frame, Send.Parser, out var send, out var error)</c>.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="parser"/> is not the parser of the frame's type (a caller bug).</exception>
    public static bool TryDecode<T>(in Frame frame, MessageParser<T> parser, [NotNullWhen(true)] out T? message, out ReasonCode error)
        where T : IMessage<T>
    {
        ArgumentNullException.ThrowIfNull(parser);
        message = default;
        var expected = PacketTypes.ParserFor(frame.Type);
        if (expected is null)
        {
            error = ReasonCode.UnknownPacketType;
            return false;
        }

        if (!ReferenceEquals(expected, parser))
        {
            throw new ArgumentException($"This parser does not parse packet type {frame.Type}.", nameof(parser));
        }

        if (!TryParse(parser, frame.Body, out var parsed, out error))
        {
            return false;
        }

        error = PacketValidator.Validate(parsed);
        if (error != ReasonCode.Success)
        {
            return false;
        }

        message = (T)parsed;
        return true;
    }

    private static bool TryParse(MessageParser parser, in System.Buffers.ReadOnlySequence<byte> body, [NotNullWhen(true)] out IMessage? message, out ReasonCode error)
    {
        try
        {
            message = parser.ParseFrom(body);
            error = ReasonCode.Success;
            return true;
        }
        catch (InvalidProtocolBufferException)
        {
            // Truncated fields, bad wire types, lengths past the end, nesting deeper than the
            // recursion limit.
        }
        catch (DecoderFallbackException)
        {
            // A string field that is not valid UTF-8.
        }

        message = null;
        error = ReasonCode.MalformedBody;
        return false;
    }
}
