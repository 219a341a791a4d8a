using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>
/// The whole inbound path of a server connection (reader, state machine, decoder) as the broker
/// runs it (Protocol/README.md): every kind of bad input ends in its documented reason code, in
/// whatever chunks it arrives, and nothing throws.
/// </summary>
public class InboundPipelineTests
{
    private static readonly Connect ValidConnect = new() { ProtocolVersion = 1, UserId = "alice", DeviceId = "phone1", Token = "t" };
    private static readonly Send ValidSend = new() { ClientMsgId = 1, ConversationId = 2, Body = ByteString.CopyFromUtf8("hi") };

    private static byte[] Frames(params IMessage[] messages)
    {
        var writer = new ArrayBufferWriter<byte>();
        foreach (var message in messages)
        {
            FrameWriter.Write(writer, message);
        }

        return writer.WrittenSpan.ToArray();
    }

    private static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    /// <summary>Runs the server read loop over <paramref name="data"/> delivered in <paramref name="chunks"/>.</summary>
    private static (ReasonCode Error, int Accepted) Run(byte[] data, IReadOnlyList<int> chunks)
    {
        var state = new ProtocolStateMachine(ProtocolRole.Server);
        var pending = new List<ReadOnlyMemory<byte>>();
        var offset = 0;
        var accepted = 0;
        foreach (var chunk in chunks)
        {
            pending.Add(data.AsMemory(offset, chunk));
            offset += chunk;
            var buffer = Segment.Sequence(pending);
            var error = ReasonCode.Success;
            while (FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out var consumed, out error))
            {
                error = state.OnReceived(frame.Type);
                if (error != ReasonCode.Success || !PacketDecoder.TryDecode(frame, out _, out error))
                {
                    break;
                }

                accepted++;
                buffer = buffer.Slice(consumed);
            }

            if (error != ReasonCode.Success)
            {
                return (error, accepted);
            }

            pending.Clear();
            if (!buffer.IsEmpty)
            {
                pending.Add(buffer.ToArray());
            }
        }

        return (FrameReader.CheckEndOfStream(Segment.Sequence(pending)), accepted);
    }

    public static TheoryData<string, byte[], ReasonCode, int> Cases() => new()
    {
        { "valid CONNECT then SEND", Frames(ValidConnect, ValidSend), ReasonCode.Success, 2 },
        { "5-byte varint", Concat(Frames(ValidConnect), [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), ReasonCode.MalformedLength, 1 },
        { "declared length over the limit", Concat(Frames(ValidConnect), [0x30, 0x81, 0x80, 0x04]), ReasonCode.FrameTooLarge, 1 },
        { "truncated body", Frames(ValidConnect, ValidSend)[..^2], ReasonCode.TruncatedFrame, 1 },
        { "unknown type", Concat(Frames(ValidConnect), [0xB8, 0x00]), ReasonCode.UnknownPacketType, 1 },
        { "flags not allowed", Concat(Frames(ValidConnect), [0x21, 0x00]), ReasonCode.InvalidFlags, 1 },
        { "body not protobuf", [0x10, 0x03, 0x08, 0x01, 0xFF], ReasonCode.MalformedBody, 0 },
        { "required field missing", Frames(new Connect { ProtocolVersion = 1, UserId = "alice", DeviceId = "phone1" }), ReasonCode.MissingField, 0 },
        { "SEND before CONNECT", Frames(ValidSend), ReasonCode.ProtocolViolation, 0 },
        { "second CONNECT", Frames(ValidConnect, ValidConnect), ReasonCode.ProtocolViolation, 1 },
        { "server-only packet from client", Frames(ValidConnect, new Sent { ClientMsgId = 1, ConversationId = 2, Seq = 3 }), ReasonCode.ProtocolViolation, 1 },
        { "packet after DISCONNECT", Frames(ValidConnect, new Disconnect(), new Ping()), ReasonCode.ProtocolViolation, 2 },
        { "malformed body in a forbidden packet is reported as the violation", [0x30, 0x02, 0xFF, 0xFF], ReasonCode.ProtocolViolation, 0 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Bad_input_yields_its_documented_reason_code_in_any_chunking(string name, byte[] data, ReasonCode expected, int acceptedBefore)
    {
        Assert.NotNull(name);
        var chunkings = new List<IReadOnlyList<int>>
        {
            new[] { data.Length },
            Enumerable.Repeat(1, data.Length).ToList(),
        };
        var random = new Random(data.Length);
        for (var i = 0; i < 20; i++)
        {
            chunkings.Add(ChunkedReader.RandomSplits(data.Length, random, 7));
        }

        foreach (var chunks in chunkings)
        {
            var (error, accepted) = Run(data, chunks);
            Assert.Equal(expected, error);
            Assert.Equal(acceptedBefore, accepted);
        }
    }
}
