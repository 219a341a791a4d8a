using System.Text.RegularExpressions;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>
/// Issue 18, doc defects: docs/protocol.md must match the code point by point where a table can be checked, and the
/// behaviours a third-party client developer found undocumented or misdocumented are pinned here.
/// </summary>
public sealed partial class DocumentedBehaviourTests
{
    private static string ProtocolMd()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "docs", "protocol.md");
            if (File.Exists(candidate) && File.Exists(Path.Combine(dir.FullName, "ChatBroker.sln")))
            {
                return File.ReadAllText(candidate);
            }
        }

        throw new FileNotFoundException("docs/protocol.md not found");
    }

    private static string Screaming(string pascal) => PascalWords().Replace(pascal, "_$1").ToUpperInvariant();

    [GeneratedRegex(@"(?<!^)([A-Z])")]
    private static partial Regex PascalWords();

    [GeneratedRegex(@"^\| 0x([0-9A-F]{2}) \| (\w+)\s*\| `(\w+)`[^|]*\| (C2S|S2C|both)", RegexOptions.Multiline)]
    private static partial Regex PacketRow();

    [GeneratedRegex(@"^\| (\d+)\s+\| ([A-Z_]+)\s+\|", RegexOptions.Multiline)]
    private static partial Regex ReasonRow();

    [Fact]
    public void The_packet_table_of_protocol_md_lists_every_packet_type_with_its_byte_body_and_direction()
    {
        var doc = ProtocolMd();
        var rows = PacketRow().Matches(doc).ToDictionary(m => Convert.ToByte(m.Groups[1].Value, 16), m => m);
        foreach (var type in PacketTypes.All)
        {
            Assert.True(rows.TryGetValue((byte)type, out var row), $"§3 lacks 0x{(byte)type:X2} {type}");
            Assert.Equal(Screaming(type.ToString()), row.Groups[2].Value);
            Assert.Equal(PacketTypes.ParserFor(type)!.ParseFrom([]).Descriptor.Name, row.Groups[3].Value);
            var direction = PacketTypes.Direction(type) switch
            {
                PacketDirection.ClientToServer => "C2S",
                PacketDirection.ServerToClient => "S2C",
                _ => "both",
            };
            Assert.Equal(direction, row.Groups[4].Value);

            // The reader sketch of §2 knows it too.
            Assert.Contains($"0x{(byte)type:X2}:", doc, StringComparison.Ordinal);
        }

        Assert.Equal(PacketTypes.All.Count, rows.Count);
    }

    [Fact]
    public void The_reason_code_table_of_protocol_md_lists_every_code_with_its_number()
    {
        var rows = ReasonRow().Matches(ProtocolMd()).ToDictionary(m => m.Groups[2].Value, m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
        foreach (var code in Enum.GetValues<ReasonCode>())
        {
            var name = Screaming(code.ToString());
            Assert.True(rows.TryGetValue(name, out var number), $"§8 lacks {name}");
            Assert.Equal((int)code, number);
        }
    }

    [Fact]
    public void A_known_field_sent_with_another_wire_type_is_skipped_so_a_required_one_is_MISSING_FIELD_as_documented()
    {
        // SEND: client_msg_id (field 1, varint) sent as length-delimited (tag 0x0A), conversation_id 0x81.
        byte[] body = [0x0A, 0x01, 0x00, 0x10, 0x81, 0x01];
        Assert.True(FrameReader.TryRead(new System.Buffers.ReadOnlySequence<byte>([0x30, (byte)body.Length, .. body]), 1024, out var frame, out _, out _));
        Assert.False(PacketDecoder.TryDecode(frame, out _, out var error));
        Assert.Equal(ReasonCode.MissingField, error);

        // An optional field with another wire type keeps its default: content_type (field 4) as length-delimited.
        var valid = new Send { ClientMsgId = 5, ConversationId = 7 }.ToByteArray();
        byte[] withOddField = [.. valid, 0x22, 0x01, 0x09];
        Assert.True(FrameReader.TryRead(new System.Buffers.ReadOnlySequence<byte>([0x30, (byte)withOddField.Length, .. withOddField]), 1024, out frame, out _, out _));
        Assert.True(PacketDecoder.TryDecode(frame, out var message, out error), error.ToString());
        Assert.Equal(ContentType.Text, ((Send)message).ContentType);

        // Wire types 6 and 7 do not exist: MALFORMED_BODY.
        Assert.True(FrameReader.TryRead(new System.Buffers.ReadOnlySequence<byte>([0x30, 0x02, 0x0F, 0x00]), 1024, out frame, out _, out _));
        Assert.False(PacketDecoder.TryDecode(frame, out _, out error));
        Assert.Equal(ReasonCode.MalformedBody, error);

        var doc = ProtocolMd();
        Assert.Contains("A known field number sent with another", doc, StringComparison.Ordinal);
    }

    [Fact]
    public void Protocol_md_states_the_limits_and_deadlines_the_broker_applies()
    {
        var doc = ProtocolMd();
        // The SEND limit is in the protocol doc, not only in operations.md; the CONNECT deadline and its answer;
        // HISTORY's direction, default and cap; the key and kid derivation; what MEDIA does; SLOW_CONSUMER's drain.
        foreach (var statement in new[]
        {
            "64,512 by default", "`tcp.connect_timeout` (default 10 s)", "CONNACK(KEEPALIVE_TIMEOUT)", "Pages go backward only",
            "0 = 50 messages", "capped at 200", "first 6 bytes of SHA-256(key)", "changes nothing for it", "`session.drain_timeout` (5 s)",
            "reader_device_id", "HIDDEN", "SETTINGS",
        })
        {
            Assert.Contains(statement, doc, StringComparison.Ordinal);
        }
    }
}
