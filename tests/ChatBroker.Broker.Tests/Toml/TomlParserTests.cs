using ChatBroker.Broker.Configuration.Toml;

namespace ChatBroker.Broker.Tests.Toml;

public class TomlParserTests
{
    private const string File = "broker.toml";

    private static TomlTable Parse(string text) => TomlDocument.Parse(text, File).Root;

    private static T Value<T>(string text, string key = "v")
        where T : TomlValue
    {
        TomlValue value = Parse(text)[key];
        return Assert.IsType<T>(value);
    }

    [Fact]
    public void Empty_document_and_only_comments_give_an_empty_root()
    {
        Assert.Equal(0, Parse("").Count);
        Assert.Equal(0, Parse("# just a comment\n\n   \t\n# another\n").Count);
    }

    [Fact]
    public void Bare_keys_allow_letters_digits_underscore_and_dash()
    {
        TomlTable root = Parse("key = 1\nbare_key = 2\nbare-key = 3\n1234 = 4\nA-z_09 = 5\n");
        Assert.Equal(["key", "bare_key", "bare-key", "1234", "A-z_09"], root.Entries.Select(e => e.Key));
    }

    [Fact]
    public void Quoted_keys_may_be_basic_or_literal_with_escapes_in_basic()
    {
        TomlTable root = Parse("\"127.0.0.1\" = 1\n\"tab\\tkey\" = 2\n'quoted \"value\"' = 3\n");
        Assert.Equal(1, ((TomlInteger)root["127.0.0.1"]).Value);
        Assert.Equal(2, ((TomlInteger)root["tab\tkey"]).Value);
        Assert.Equal(3, ((TomlInteger)root["quoted \"value\""]).Value);
    }

    [Fact]
    public void Keys_are_case_sensitive_in_the_document()
    {
        TomlTable root = Parse("port = 1\n");
        Assert.True(root.ContainsKey("port"));
        Assert.False(root.ContainsKey("Port"));
    }

    [Fact]
    public void Dotted_keys_create_nested_tables_and_whitespace_around_dots_is_ignored()
    {
        TomlTable root = Parse("a.b.c = 1\na . b . d = 2\nsite.\"google.com\" = true\n");
        var b = (TomlTable)((TomlTable)root["a"])["b"];
        Assert.Equal(1, ((TomlInteger)b["c"]).Value);
        Assert.Equal(2, ((TomlInteger)b["d"]).Value);
        Assert.True(((TomlBoolean)((TomlTable)root["site"])["google.com"]).Value);
    }

    [Fact]
    public void Table_headers_define_tables_and_subtables()
    {
        TomlTable root = Parse("top = 0\n[server]\nport = 7000\n[server.tls]\nenabled = true\n[ cluster . \"node a\" ]\nweight = 3\n");
        Assert.Equal(0, ((TomlInteger)root["top"]).Value);
        var server = Assert.IsType<TomlTable>(root["server"]);
        Assert.Equal(TomlValueKind.Table, server.Kind);
        Assert.Equal(7000, ((TomlInteger)server["port"]).Value);
        Assert.True(((TomlBoolean)((TomlTable)server["tls"])["enabled"]).Value);
        Assert.Equal(3, ((TomlInteger)((TomlTable)((TomlTable)root["cluster"])["node a"])["weight"]).Value);
    }

    [Fact]
    public void A_parent_table_created_by_a_subtable_header_may_be_defined_later()
    {
        TomlTable root = Parse("[x.y.z]\na = 1\n[x]\nb = 2\n");
        var x = (TomlTable)root["x"];
        Assert.Equal(2, ((TomlInteger)x["b"]).Value);
        Assert.Equal(new TomlPosition(File, 3, 1), x.Position);
        Assert.True(root.TryGetEntry("x", out TomlTableEntry entry));
        Assert.Equal(new TomlPosition(File, 3, 2), entry.KeyPosition);
    }

    [Fact]
    public void A_header_may_add_a_subtable_to_a_table_made_by_dotted_keys()
    {
        TomlTable root = Parse("[fruit]\napple.color = \"red\"\n[fruit.apple.texture]\nsmooth = true\n");
        var apple = (TomlTable)((TomlTable)root["fruit"])["apple"];
        Assert.Equal("red", ((TomlString)apple["color"]).Value);
        Assert.True(((TomlBoolean)((TomlTable)apple["texture"])["smooth"]).Value);
    }

    [Fact]
    public void Empty_table_header_gives_an_empty_table()
    {
        TomlTable root = Parse("[empty]\n[next]\na = 1\n");
        Assert.Equal(0, ((TomlTable)root["empty"]).Count);
    }

    [Fact]
    public void Basic_string_with_every_escape()
    {
        TomlString s = Value<TomlString>("v = \"b\\b t\\t n\\n f\\f r\\r q\\\" bs\\\\ u\\u00e9 U\\U0001F600\"");
        Assert.Equal(TomlValueKind.String, s.Kind);
        Assert.Equal("b\b t\t n\n f\f r\r q\" bs\\ u\u00e9 U\U0001F600", s.Value);
    }

    [Fact]
    public void Basic_string_keeps_tabs_and_non_ascii_characters()
    {
        Assert.Equal("a\tb é 😀", Value<TomlString>("v = \"a\tb é 😀\"").Value);
        Assert.Equal("", Value<TomlString>("v = \"\"").Value);
    }

    [Fact]
    public void Literal_string_has_no_escapes()
    {
        Assert.Equal(@"C:\Users\nodejs\templates", Value<TomlString>(@"v = 'C:\Users\nodejs\templates'").Value);
        Assert.Equal("<\\i\\c*\\s*>", Value<TomlString>("v = '<\\i\\c*\\s*>'").Value);
        Assert.Equal("", Value<TomlString>("v = ''").Value);
    }

    [Fact]
    public void Multi_line_basic_string_trims_the_first_newline_and_keeps_the_rest()
    {
        Assert.Equal("Roses are red\nViolets are blue", Value<TomlString>("v = \"\"\"\nRoses are red\nViolets are blue\"\"\"").Value);
        Assert.Equal("one\ttwo \u00e9", Value<TomlString>("v = \"\"\"one\\ttwo \\u00e9\"\"\"").Value);
    }

    [Fact]
    public void Multi_line_basic_string_line_ending_backslash_trims_whitespace_and_newlines()
    {
        const string text = "v = \"\"\"\nThe quick brown \\\n\n\n  fox jumps over \\   \n    the lazy dog.\"\"\"";
        Assert.Equal("The quick brown fox jumps over the lazy dog.", Value<TomlString>(text).Value);
    }

    [Fact]
    public void Multi_line_basic_string_allows_one_or_two_quotes_inside_and_before_the_delimiter()
    {
        Assert.Equal("Here are two quotation marks: \"\". Simple enough.", Value<TomlString>("v = \"\"\"Here are two quotation marks: \"\". Simple enough.\"\"\"").Value);
        Assert.Equal("\"This,\" she said, \"is just a pointless statement.\"", Value<TomlString>("v = \"\"\"\"This,\" she said, \"is just a pointless statement.\"\"\"\"").Value);
        Assert.Equal("ends with two \"\"", Value<TomlString>("v = \"\"\"ends with two \"\"\"\"\"").Value);
    }

    [Fact]
    public void Multi_line_literal_string_keeps_backslashes_and_newlines()
    {
        Assert.Equal("I [dw]on't need \\d{2} apples", Value<TomlString>("v = '''I [dw]on't need \\d{2} apples'''").Value);
        Assert.Equal("The first newline is\ntrimmed in raw strings.\n   All other whitespace\n   is preserved.\n", Value<TomlString>("v = '''\nThe first newline is\ntrimmed in raw strings.\n   All other whitespace\n   is preserved.\n'''").Value);
        Assert.Equal("'That,' she said, 'is still pointless.'", Value<TomlString>("v = ''''That,' she said, 'is still pointless.''''").Value);
    }

    [Theory]
    [InlineData("+99", 99)]
    [InlineData("42", 42)]
    [InlineData("0", 0)]
    [InlineData("-17", -17)]
    [InlineData("+0", 0)]
    [InlineData("-0", 0)]
    [InlineData("1_000", 1000)]
    [InlineData("5_349_221", 5349221)]
    [InlineData("53_49_221", 5349221)]
    [InlineData("1_2_3_4_5", 12345)]
    [InlineData("0xDEADBEEF", 0xDEADBEEF)]
    [InlineData("0xdeadbeef", 0xDEADBEEF)]
    [InlineData("0xdead_beef", 0xDEADBEEF)]
    [InlineData("0x0001", 1)]
    [InlineData("0o01234567", 342391)]
    [InlineData("0o755", 493)]
    [InlineData("0b11010110", 214)]
    [InlineData("0b1_0", 2)]
    [InlineData("9223372036854775807", long.MaxValue)]
    [InlineData("-9223372036854775808", long.MinValue)]
    [InlineData("0x7FFFFFFFFFFFFFFF", long.MaxValue)]
    public void Integers(string literal, long expected)
    {
        TomlInteger value = Value<TomlInteger>($"v = {literal}");
        Assert.Equal(TomlValueKind.Integer, value.Kind);
        Assert.Equal(expected, value.Value);
    }

    [Theory]
    [InlineData("+1.0", 1.0)]
    [InlineData("3.1415", 3.1415)]
    [InlineData("-0.01", -0.01)]
    [InlineData("5e+22", 5e+22)]
    [InlineData("1e06", 1e06)]
    [InlineData("-2E-2", -2E-2)]
    [InlineData("6.626e-34", 6.626e-34)]
    [InlineData("224_617.445_991_228", 224617.445991228)]
    [InlineData("0.0", 0.0)]
    [InlineData("0e0", 0.0)]
    [InlineData("1e1_0", 1e10)]
    [InlineData("inf", double.PositiveInfinity)]
    [InlineData("+inf", double.PositiveInfinity)]
    [InlineData("-inf", double.NegativeInfinity)]
    [InlineData("nan", double.NaN)]
    [InlineData("+nan", double.NaN)]
    [InlineData("-nan", double.NaN)]
    public void Floats(string literal, double expected)
    {
        TomlFloat value = Value<TomlFloat>($"v = {literal}");
        Assert.Equal(TomlValueKind.Float, value.Kind);
        Assert.Equal(expected, value.Value);
    }

    [Fact]
    public void Negative_zero_float_keeps_its_sign()
    {
        Assert.True(double.IsNegative(Value<TomlFloat>("v = -0.0").Value));
    }

    [Fact]
    public void Booleans()
    {
        TomlTable root = Parse("t = true\nf = false\n");
        Assert.Equal(TomlValueKind.Boolean, root["t"].Kind);
        Assert.True(((TomlBoolean)root["t"]).Value);
        Assert.False(((TomlBoolean)root["f"]).Value);
    }

    [Fact]
    public void Arrays_of_scalars_and_empty_arrays()
    {
        TomlArray ints = Value<TomlArray>("v = [ 1, 2, 3 ]");
        Assert.Equal(TomlValueKind.Array, ints.Kind);
        Assert.Equal([1L, 2L, 3L], ints.Items.Select(i => ((TomlInteger)i).Value));
        Assert.Empty(Value<TomlArray>("v = []").Items);
        Assert.Empty(Value<TomlArray>("v = [ \n # nothing \n ]").Items);
    }

    [Fact]
    public void Arrays_may_be_nested_and_mix_types()
    {
        TomlArray array = Value<TomlArray>("v = [ [ 1, 2 ], [\"a\", 'b'], 0.1, true, { x = 1 } ]");
        Assert.Equal(
            [TomlValueKind.Array, TomlValueKind.Array, TomlValueKind.Float, TomlValueKind.Boolean, TomlValueKind.Table],
            array.Items.Select(i => i.Kind));
        Assert.Equal("b", ((TomlString)((TomlArray)array.Items[1]).Items[1]).Value);
    }

    [Fact]
    public void Arrays_may_span_lines_with_comments_and_a_trailing_comma()
    {
        TomlArray array = Value<TomlArray>("v = [  # first line\n  \"a\", # after a\n\n  \"b\"\n  , \"c\",  # trailing comma\n]\n");
        Assert.Equal(["a", "b", "c"], array.Items.Select(i => ((TomlString)i).Value));
    }

    [Fact]
    public void Inline_tables_with_dotted_keys_and_nesting()
    {
        TomlTable root = Parse("name = { first = \"Tom\", last = \"Preston-Werner\" }\npoint = {x=1,y=2}\nanimal = { type.name = \"pug\" }\nempty = {}\nnested = { a = { b = [1, { c = 'd' }] } }\n");
        var name = Assert.IsType<TomlTable>(root["name"]);
        Assert.Equal(["first", "last"], name.Entries.Select(e => e.Key));
        Assert.Equal("Preston-Werner", ((TomlString)name["last"]).Value);
        Assert.Equal(2, ((TomlInteger)((TomlTable)root["point"])["y"]).Value);
        Assert.Equal("pug", ((TomlString)((TomlTable)((TomlTable)root["animal"])["type"])["name"]).Value);
        Assert.Equal(0, ((TomlTable)root["empty"]).Count);
        var b = (TomlArray)((TomlTable)((TomlTable)root["nested"])["a"])["b"];
        Assert.Equal("d", ((TomlString)((TomlTable)b.Items[1])["c"]).Value);
    }

    [Fact]
    public void Inline_table_values_may_contain_a_multi_line_array()
    {
        TomlTable t = Value<TomlTable>("v = { list = [\n 1,\n 2,\n], k = 3 }\n");
        Assert.Equal(3, ((TomlInteger)t["k"]).Value);
    }

    [Fact]
    public void Comments_may_follow_values_and_headers()
    {
        TomlTable root = Parse("[a] # header comment\nb = \"# not a comment\" # real comment\nc = 1#tight\n");
        var a = (TomlTable)root["a"];
        Assert.Equal("# not a comment", ((TomlString)a["b"]).Value);
        Assert.Equal(1, ((TomlInteger)a["c"]).Value);
    }

    [Fact]
    public void Comments_may_contain_tabs_and_any_unicode()
    {
        Assert.Equal(1, ((TomlInteger)Parse("# \t é 😀 \"' [x]\na = 1")["a"]).Value);
    }

    [Fact]
    public void Keys_keep_file_order()
    {
        TomlTable root = Parse("z = 1\na = 2\nm = 3\n");
        Assert.Equal(["z", "a", "m"], root.Entries.Select(e => e.Key));
    }

    [Fact]
    public void Positions_of_keys_and_values_are_one_based_line_and_column()
    {
        TomlTable root = Parse("# c\n  port = 7000\n[server]\n\tname   =   \"x\"\n\"q k\" = [1, 2]\n");
        Assert.True(root.TryGetEntry("port", out TomlTableEntry port));
        Assert.Equal(new TomlPosition(File, 2, 3), port.KeyPosition);
        Assert.Equal(new TomlPosition(File, 2, 10), port.Value.Position);

        Assert.True(root.TryGetEntry("server", out TomlTableEntry server));
        Assert.Equal(new TomlPosition(File, 3, 2), server.KeyPosition);
        Assert.Equal(new TomlPosition(File, 3, 1), server.Value.Position);

        var table = (TomlTable)server.Value;
        Assert.True(table.TryGetEntry("name", out TomlTableEntry name));
        Assert.Equal(new TomlPosition(File, 4, 2), name.KeyPosition);
        Assert.Equal(new TomlPosition(File, 4, 13), name.Value.Position);

        Assert.True(table.TryGetEntry("q k", out TomlTableEntry quoted));
        Assert.Equal(new TomlPosition(File, 5, 1), quoted.KeyPosition);
        var array = (TomlArray)quoted.Value;
        Assert.Equal(new TomlPosition(File, 5, 9), array.Position);
        Assert.Equal(new TomlPosition(File, 5, 13), array.Items[1].Position);
    }

    [Fact]
    public void Positions_after_a_multi_line_string_continue_on_the_right_line()
    {
        TomlTable root = Parse("a = \"\"\"\none\ntwo\"\"\"\nb = 2\n");
        Assert.True(root.TryGetEntry("b", out TomlTableEntry b));
        Assert.Equal(new TomlPosition(File, 4, 1), b.KeyPosition);
    }

    [Fact]
    public void Columns_count_code_points_not_utf16_units()
    {
        TomlTable root = Parse("a = 1\n\"😀\" = 1\n");
        Assert.True(root.TryGetEntry("😀", out TomlTableEntry entry));
        Assert.Equal(new TomlPosition(File, 2, 1), entry.KeyPosition);
        Assert.Equal(new TomlPosition(File, 2, 7), entry.Value.Position);
    }

    [Fact]
    public void Crlf_line_endings_are_accepted_and_normalized_in_multi_line_strings()
    {
        TomlTable root = Parse("# c\r\n[s]\r\na = 1 # x\r\nb = \"\"\"\r\nl1\r\nl2\"\"\"\r\nc = [\r\n 1,\r\n 2,\r\n]\r\nd = 'x'\r\n");
        var s = (TomlTable)root["s"];
        Assert.Equal("l1\nl2", ((TomlString)s["b"]).Value);
        Assert.Equal(2, ((TomlArray)s["c"]).Items.Count);
        Assert.True(s.TryGetEntry("d", out TomlTableEntry d));
        Assert.Equal(new TomlPosition(File, 11, 1), d.KeyPosition);
        Assert.Equal(new TomlPosition(File, 11, 5), d.Value.Position);
    }

    [Fact]
    public void Byte_order_mark_is_skipped_and_does_not_shift_columns()
    {
        TomlTable root = Parse("\uFEFFa = 1");
        Assert.True(root.TryGetEntry("a", out TomlTableEntry a));
        Assert.Equal(new TomlPosition(File, 1, 1), a.KeyPosition);
    }

    [Fact]
    public void Realistic_broker_toml_parses()
    {
        const string text = """
            # ChatBroker configuration
            [server]
            listen = "0.0.0.0:7000"
            max_frame_bytes = 65_536
            idle_timeout_seconds = 30.5

            [server.tls]
            enabled = false
            cert = '/etc/chatbroker/cert.pem'

            [cluster]
            node_id = "node-a"
            nodes = [
              { name = "node-a", address = "10.0.0.1:7100" },
              { name = "node-b", address = "10.0.0.2:7100" },
            ]

            [limits]
            outbound.bytes = 0x100000
            outbound.messages = 1_000
            """;
        TomlTable root = Parse(text);
        Assert.Equal(65536, ((TomlInteger)((TomlTable)root["server"])["max_frame_bytes"]).Value);
        var nodes = (TomlArray)((TomlTable)root["cluster"])["nodes"];
        Assert.Equal("10.0.0.2:7100", ((TomlString)((TomlTable)nodes.Items[1])["address"]).Value);
        Assert.Equal(0x100000, ((TomlInteger)((TomlTable)((TomlTable)root["limits"])["outbound"])["bytes"]).Value);
    }

    [Fact]
    public void Load_reads_utf8_from_a_file_and_names_it_in_positions()
    {
        string path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"toml-load-{Guid.NewGuid():N}.toml");
        try
        {
            System.IO.File.WriteAllBytes(path, [0xEF, 0xBB, 0xBF, .. "name = \"café\"\n"u8]);
            TomlDocument document = TomlDocument.Load(path);
            Assert.True(document.Root.TryGetEntry("name", out TomlTableEntry name));
            Assert.Equal("café", ((TomlString)name.Value).Value);
            Assert.Equal(new TomlPosition(path, 1, 1), name.KeyPosition);
        }
        finally
        {
            System.IO.File.Delete(path);
        }
    }

    [Fact]
    public void Load_reports_invalid_utf8_at_its_line_and_column()
    {
        string path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"toml-bad-{Guid.NewGuid():N}.toml");
        try
        {
            System.IO.File.WriteAllBytes(path, [.. "a = 1\nb = \"caf"u8, 0xE9, .. "\"\n"u8]);
            var ex = Assert.Throws<TomlParseException>(() => TomlDocument.Load(path));
            Assert.Equal(new TomlPosition(path, 2, 9), ex.Position);
            Assert.Contains("invalid UTF-8 byte 0xE9", ex.Message, StringComparison.Ordinal);
        }
        finally
        {
            System.IO.File.Delete(path);
        }
    }
}
