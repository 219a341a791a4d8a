using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>
/// The worked examples of docs/protocol.md. If an encoder change alters these bytes, the spec is
/// wrong for every client in the field: update the doc (and think twice).
/// </summary>
public class WireExamplesTests
{
    public static readonly Connect ExampleConnect = new()
    {
        ProtocolVersion = 1,
        UserId = "alice",
        DeviceId = "phone1",
        Token = "tok3n",
        KeepaliveS = 300,
        ResumeInboxSeq = 42,
        Capabilities = (ulong)(Capability.Receipts | Capability.Typing),
    };

    public static readonly Send ExampleSend = new()
    {
        ClientMsgId = 1_099_511_627_792,   // 2^40 + 16
        ConversationId = 4_294_967_297,    // 2^32 + 1
        Body = ByteString.CopyFromUtf8("hi bob"),
    };

    public static readonly Sent ExampleSent = new()
    {
        ClientMsgId = 1_099_511_627_792,
        ConversationId = 4_294_967_297,
        Seq = 17,
        TimestampMs = 1_764_096_000_123,
    };

    public static readonly Deliver ExampleDeliver = new()
    {
        ConversationId = 4_294_967_297,
        Seq = 17,
        SenderUserId = "alice",
        SenderDeviceId = "phone1",
        TimestampMs = 1_764_096_000_123,
        Body = ByteString.CopyFromUtf8("hi bob"),
        InboxSeq = 1235,
    };

    public static readonly Ack ExampleAck = new() { InboxSeq = 1235 };

    // Copied verbatim into docs/protocol.md, "Worked examples".
    public const string ConnectHex = "10 1f 08 01 12 05 61 6c 69 63 65 1a 06 70 68 6f 6e 65 31 22 05 74 6f 6b 33 6e 28 ac 02 30 2a 40 03";
    public const string SendHex = "30 15 08 90 80 80 80 80 20 10 81 80 80 80 10 2a 06 68 69 20 62 6f 62";
    public const string SentHex = "34 16 08 90 80 80 80 80 20 10 81 80 80 80 10 18 11 20 fb 80 c3 e2 ab 33";
    public const string DeliverHex = "38 29 08 81 80 80 80 10 10 11 1a 05 61 6c 69 63 65 22 06 70 68 6f 6e 65 31 28 fb 80 c3 e2 ab 33 3a 06 68 69 20 62 6f 62 48 d3 09";
    public const string AckHex = "40 03 08 d3 09";
    public const string PingHex = "20 00";

    public static TheoryData<string, string> Examples() => new()
    {
        { "CONNECT", ConnectHex },
        { "SEND", SendHex },
        { "SENT", SentHex },
        { "DELIVER", DeliverHex },
        { "ACK", AckHex },
        { "PING", PingHex },
    };

    private static IMessage ExampleFor(string name) => name switch
    {
        "CONNECT" => ExampleConnect,
        "SEND" => ExampleSend,
        "SENT" => ExampleSent,
        "DELIVER" => ExampleDeliver,
        "ACK" => ExampleAck,
        _ => new Ping(),
    };

    public static string Hex(ReadOnlySpan<byte> bytes) =>
        string.Join(' ', bytes.ToArray().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));

    [Theory]
    [MemberData(nameof(Examples))]
    public void Documented_hex_matches_the_encoder(string name, string documentedHex)
    {
        var writer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, ExampleFor(name));
        Assert.Equal(documentedHex, Hex(writer.WrittenSpan));
    }

    [Theory]
    [MemberData(nameof(Examples))]
    public void Documented_hex_decodes_to_the_example(string name, string documentedHex)
    {
        var bytes = Convert.FromHexString(documentedHex.Replace(" ", string.Empty, StringComparison.Ordinal));
        Assert.True(FrameReader.TryRead(new ReadOnlySequence<byte>(bytes), ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _));
        Assert.True(PacketDecoder.TryDecode(frame, out var message, out var error), error.ToString());
        Assert.Equal(ExampleFor(name), message);
    }

    [Theory]
    [MemberData(nameof(Examples))]
    public void Protocol_md_contains_the_example_hex(string name, string hex)
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "docs", "protocol.md")))
        {
            directory = directory.Parent;
        }

        Assert.True(directory is not null, "docs/protocol.md not found above the test binaries");
        var text = File.ReadAllText(Path.Combine(directory!.FullName, "docs", "protocol.md"));
        var collapsed = string.Join(' ', text.Split((char[])[' ', '\n'], StringSplitOptions.RemoveEmptyEntries));
        Assert.True(collapsed.Contains(hex, StringComparison.Ordinal), $"docs/protocol.md lacks the {name} example: {hex}");
    }

    [Fact]
    public void Documented_deliver_hex_is_what_the_hand_rolled_writer_produces()
    {
        var writer = new ArrayBufferWriter<byte>();
        var fields = new DeliverFields
        {
            ConversationId = ExampleDeliver.ConversationId,
            Seq = ExampleDeliver.Seq,
            SenderUserId = ExampleDeliver.SenderUserId,
            SenderDeviceId = ExampleDeliver.SenderDeviceId,
            TimestampMs = ExampleDeliver.TimestampMs,
            InboxSeq = ExampleDeliver.InboxSeq,
        };
        DeliverWriter.Write(writer, fields, "hi bob"u8);
        Assert.Equal(DeliverHex, Hex(writer.WrittenSpan));
    }
}
