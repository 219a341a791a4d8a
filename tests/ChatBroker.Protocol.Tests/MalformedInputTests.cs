using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

public class MalformedInputTests
{
    private static ReasonCode Read(byte[] bytes, int maxFrameSize = ProtocolConstants.DefaultMaxFrameSize)
    {
        var complete = FrameReader.TryRead(new ReadOnlySequence<byte>(bytes), maxFrameSize, out _, out _, out var error);
        Assert.False(complete);
        return error;
    }

    private static ReasonCode Decode(byte[] frameBytes)
    {
        Assert.True(FrameReader.TryRead(new ReadOnlySequence<byte>(frameBytes), ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out var error));
        Assert.Equal(ReasonCode.Success, error);
        Assert.False(PacketDecoder.TryDecode(frame, out var message, out error));
        Assert.Null(message);
        return error;
    }

    private static byte[] Frame(PacketType type, byte[] body)
    {
        var writer = new ArrayBufferWriter<byte>();
        var span = writer.GetSpan(5 + body.Length);
        var header = FrameWriter.WriteHeader(span, type, FrameFlags.None, body.Length);
        body.CopyTo(span[header..]);
        writer.Advance(header + body.Length);
        return writer.WrittenSpan.ToArray();
    }

    private static byte[] Frame(IMessage message)
    {
        var writer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, message);
        return writer.WrittenSpan.ToArray();
    }

    [Fact]
    public void Five_byte_varint_is_rejected_with_MalformedLength()
    {
        Assert.Equal(ReasonCode.MalformedLength, Read([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], ProtocolConstants.MaxRemainingLength));
    }

    [Fact]
    public void Five_byte_varint_is_rejected_before_its_fifth_byte_arrives()
    {
        Assert.Equal(ReasonCode.MalformedLength, Read([0x30, 0x80, 0x80, 0x80, 0x80], ProtocolConstants.MaxRemainingLength));
    }

    [Theory]
    [InlineData(new byte[] { 0x30, 0x80, 0x00 })]
    [InlineData(new byte[] { 0x30, 0x85, 0x80, 0x00 })]
    [InlineData(new byte[] { 0x20, 0x80, 0x80, 0x80, 0x00 })]
    public void Length_not_minimally_encoded_is_rejected_with_MalformedLength(byte[] bytes)
    {
        Assert.Equal(ReasonCode.MalformedLength, Read(bytes, ProtocolConstants.MaxRemainingLength));
    }

    [Fact]
    public void Declared_length_over_the_limit_is_rejected_with_FrameTooLarge_before_the_body_arrives()
    {
        // 65,537 = 0x81 0x80 0x04; the default limit is 65,536. No body byte is present.
        Assert.Equal(ReasonCode.FrameTooLarge, Read([0x30, 0x81, 0x80, 0x04]));
    }

    [Fact]
    public void Declared_length_at_the_limit_is_accepted()
    {
        Assert.Equal(ReasonCode.Success, Read([0x30, 0x80, 0x80, 0x04]));
    }

    [Fact]
    public void Truncated_body_needs_more_data_and_is_TruncatedFrame_at_end_of_stream()
    {
        var bytes = Frame(Samples.All().OfType<Send>().Single());
        var truncated = bytes[..^1];
        Assert.Equal(ReasonCode.Success, Read(truncated));
        Assert.Equal(ReasonCode.TruncatedFrame, FrameReader.CheckEndOfStream(new ReadOnlySequence<byte>(truncated)));
        Assert.Equal(ReasonCode.Success, FrameReader.CheckEndOfStream(ReadOnlySequence<byte>.Empty));
    }

    [Fact]
    public void Truncated_body_split_over_segments_is_TruncatedFrame_at_end_of_stream()
    {
        var bytes = Frame(Samples.All().OfType<Send>().Single());
        var (frames, error) = ChunkedReader.Feed(bytes[..^3], [1, 1, 2, 10, bytes.Length - 17]);
        Assert.Empty(frames);
        Assert.Equal(ReasonCode.TruncatedFrame, error);
    }

    [Theory]
    [InlineData(0x00)]
    [InlineData(0x04)]
    [InlineData(0x28)]
    [InlineData(0x2C)]
    [InlineData(0x3C)]
    [InlineData(0x4C)]
    [InlineData(0xB8)]
    [InlineData(0xF0)]
    [InlineData(0xFF)]
    public void Unknown_type_is_rejected_with_UnknownPacketType_on_its_first_byte(byte first)
    {
        Assert.Equal(ReasonCode.UnknownPacketType, Read([first]));
    }

    [Theory]
    [InlineData(0x11)] // CONNECT + DUP
    [InlineData(0x21)] // PING + DUP
    [InlineData(0x32)] // SEND + reserved
    [InlineData(0x33)] // SEND + DUP + reserved
    [InlineData(0x35)] // SENT + DUP
    [InlineData(0x3A)] // DELIVER + reserved
    [InlineData(0x41)] // ACK + DUP
    public void Flags_not_allowed_for_a_type_are_rejected_with_InvalidFlags(byte first)
    {
        Assert.Equal(ReasonCode.InvalidFlags, Read([first, 0x00]));
    }

    [Fact]
    public void Every_known_type_with_any_disallowed_flag_is_InvalidFlags()
    {
        foreach (var type in PacketTypes.All)
        {
            for (var flags = 0; flags < 4; flags++)
            {
                var allowed = ((FrameFlags)flags & ~PacketTypes.AllowedFlags(type)) == 0;
                var complete = FrameReader.TryRead(new ReadOnlySequence<byte>([(byte)((int)type | flags), 0x00]), 16, out _, out _, out var error);
                Assert.Equal(allowed, complete);
                Assert.Equal(allowed ? ReasonCode.Success : ReasonCode.InvalidFlags, error);
            }
        }
    }

    [Theory]
    [InlineData(new byte[] { 0xFF, 0xFF })]                   // field 31, wire type 7: no such wire type
    [InlineData(new byte[] { 0x08 })]                         // tag with no value
    [InlineData(new byte[] { 0x08, 0x80 })]                   // varint cut short
    [InlineData(new byte[] { 0x2A, 0x05, 0x01 })]             // bytes field longer than the body
    [InlineData(new byte[] { 0x00, 0x01 })]                   // field number 0
    [InlineData(new byte[] { 0x1A, 0x02, 0xC3, 0x28 })]       // to_user_id is not valid UTF-8
    public void Body_that_is_not_valid_protobuf_is_rejected_with_MalformedBody(byte[] body)
    {
        Assert.Equal(ReasonCode.MalformedBody, Decode(Frame(PacketType.Send, body)));
    }

    [Fact]
    public void Deeply_nested_body_is_rejected_with_MalformedBody()
    {
        // 101 well-formed nested groups (start tag 0x0B ... end tag 0x0C of field 1) exceed the
        // parser's recursion limit of 100: a hostile peer cannot make the parser recurse without bound.
        var body = Enumerable.Repeat((byte)0x0B, 101).Concat(Enumerable.Repeat((byte)0x0C, 101)).ToArray();
        Assert.Equal(ReasonCode.MalformedBody, Decode(Frame(PacketType.HistoryPage, body)));
    }

    public static TheoryData<string, IMessage, ReasonCode> MissingOrInvalidFields() => new()
    {
        { "CONNECT without user", new Connect { ProtocolVersion = 1, DeviceId = "d", Token = "t" }, ReasonCode.MissingField },
        { "CONNECT without device", new Connect { ProtocolVersion = 1, UserId = "u", Token = "t" }, ReasonCode.MissingField },
        { "CONNECT without token", new Connect { ProtocolVersion = 1, UserId = "u", DeviceId = "d" }, ReasonCode.MissingField },
        { "CONNECT without version", new Connect { UserId = "u", DeviceId = "d", Token = "t" }, ReasonCode.MissingField },
        { "CONNECT version 2", new Connect { ProtocolVersion = 2, UserId = "u", DeviceId = "d", Token = "t" }, ReasonCode.UnsupportedVersion },
        { "CONNECT with 129-byte user", new Connect { ProtocolVersion = 1, UserId = new string('u', 129), DeviceId = "d", Token = "t" }, ReasonCode.InvalidField },
        { "CONNECT resume cursor without conversation", new Connect { ProtocolVersion = 1, UserId = "u", DeviceId = "d", Token = "t", ResumeConversations = { new ConversationCursor { Seq = 3 } } }, ReasonCode.MissingField },
        { "SEND without any address", new Send { ClientMsgId = 1, Body = ByteString.CopyFromUtf8("x") }, ReasonCode.MissingField },
        { "SEND with both addresses", new Send { ClientMsgId = 1, ConversationId = 2, ToUserId = "bob" }, ReasonCode.InvalidField },
        { "SEND without client_msg_id", new Send { ConversationId = 2 }, ReasonCode.MissingField },
        { "ACK without any cursor", new Ack(), ReasonCode.MissingField },
        { "READ without seq", new Read { ConversationId = 2 }, ReasonCode.MissingField },
        { "HISTORY without conversation", new History { Limit = 5 }, ReasonCode.MissingField },
        { "GROUP_REQUEST without op", new GroupRequest { RequestId = 1 }, ReasonCode.MissingField },
        { "GROUP add without users", new GroupRequest { AddMembers = new GroupMembers { ConversationId = 5 } }, ReasonCode.MissingField },
        { "PRESENCE_SET without status", new PresenceSet(), ReasonCode.MissingField },
        { "PRESENCE_SUBSCRIBE without users", new PresenceSubscribe { RequestId = 1 }, ReasonCode.MissingField },
        { "TYPING without conversation", new Typing(), ReasonCode.MissingField },
        { "KEYS_UPLOAD with nothing", new KeysUpload { RequestId = 1 }, ReasonCode.MissingField },
        { "FETCH_KEYS without user", new FetchKeys { RequestId = 1 }, ReasonCode.MissingField },
        { "DELIVER without seq", new Deliver { ConversationId = 1 }, ReasonCode.MissingField },
        { "RECEIPT with from after up_to", new Receipt { ConversationId = 1, Kind = ReceiptKind.Read, FromSeq = 9, UpToSeq = 3, ReaderUserId = "b" }, ReasonCode.InvalidField },
        { "ERROR without reason", new Error { Message = "?" }, ReasonCode.MissingField },
        { "SETTINGS with a visibility this version does not know", new Settings { RequestId = 1, SetPresenceVisibility = true, PresenceVisibility = (PresenceVisibility)7 }, ReasonCode.InvalidField },
        { "SETTINGS with a reserved contact id", new Settings { RequestId = 1, AddContacts = { "#broker" } }, ReasonCode.InvalidField },
        { "SETTINGS with an empty contact id", new Settings { RequestId = 1, RemoveContacts = { "" } }, ReasonCode.MissingField },
    };

    [Theory]
    [MemberData(nameof(MissingOrInvalidFields))]
    public void Required_field_missing_or_invalid_yields_its_reason_code(string name, IMessage message, ReasonCode expected)
    {
        Assert.NotNull(name);
        Assert.Equal(expected, Decode(Frame(message)));
    }

    [Fact]
    public void Empty_body_is_valid_where_nothing_is_required_and_MissingField_where_something_is()
    {
        foreach (var type in PacketTypes.All)
        {
            Assert.True(FrameReader.TryRead(new ReadOnlySequence<byte>([(byte)type, 0x00]), 16, out var frame, out _, out _));
            var ok = PacketDecoder.TryDecode(frame, out _, out var error);
            var expectOk = type is PacketType.Ping or PacketType.Pong or PacketType.Connack or PacketType.Disconnect
                or PacketType.Sync or PacketType.SyncDone or PacketType.GroupResult or PacketType.PresenceSubscribed
                or PacketType.KeysUploaded or PacketType.Settings or PacketType.SettingsResult;
            Assert.True(expectOk == ok, $"{type}: {error}");
            Assert.Equal(expectOk ? ReasonCode.Success : ReasonCode.MissingField, error);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(1234)]
    public void Random_garbage_never_throws_and_always_ends_in_a_frame_a_wait_or_a_reason(int seed)
    {
        var random = new Random(seed);
        for (var round = 0; round < 2000; round++)
        {
            var bytes = new byte[random.Next(1, 64)];
            random.NextBytes(bytes);

            // Bias towards known types so bodies get parsed too.
            if (random.Next(2) == 0)
            {
                bytes[0] = (byte)PacketTypes.All[random.Next(PacketTypes.All.Count)];
            }

            var buffer = new ReadOnlySequence<byte>(bytes);
            while (FrameReader.TryRead(buffer, 1024, out var frame, out var consumed, out var error))
            {
                if (!PacketDecoder.TryDecode(frame, out _, out error))
                {
                    Assert.NotEqual(ReasonCode.Success, error);
                    break;
                }

                buffer = buffer.Slice(consumed);
            }
        }
    }
}
