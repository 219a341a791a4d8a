using ChatBroker.Broker.Configuration.Toml;

namespace ChatBroker.Broker.Tests.Toml;

public class TomlParserErrorTests
{
    private const string File = "t.toml";

    // What the walk over Tomlyn's syntax tree rejects, in our words: TOML's rules for keys and tables,
    // int64 and float range, and the constructs broker.toml does not use.
    [Theory]
    [InlineData("a = 1\na = 2", 2, 1, "duplicate key 'a' (first defined at 1:1)")]
    [InlineData("[s]\nx = 1\nx = 2", 3, 1, "duplicate key 's.x' (first defined at 2:1)")]
    [InlineData("a = 1\r\nb = 2\r\nb = 3", 3, 1, "duplicate key 'b' (first defined at 2:1)")]
    [InlineData("a = { b = 1, b = 2 }", 1, 14, "duplicate key 'a.b' (first defined at 1:7)")]
    [InlineData("x = 1\n  [tbl]\n  y = [1, {z = 1, z = 2}]", 3, 19, "duplicate key 'tbl.y[1].z' (first defined at 3:12)")]
    [InlineData("[a]\n[a]", 2, 2, "table [a] is already defined at 1:2")]
    [InlineData("[a.b]\nx=1\n[a.b]", 3, 4, "table [a.b] is already defined at 1:4")]
    [InlineData("a = 1\n[a.b]", 2, 2, "key 'a' is already defined as a value at 1:1 and cannot be used as a table")]
    [InlineData("a = 1\n[a]", 2, 2, "key 'a' is already defined as a value at 1:1")]
    [InlineData("a = 1\na.b = 2", 2, 1, "key 'a' is already defined as a value at 1:1")]
    [InlineData("[a]\nb.c = 1\n[a.b]", 3, 4, "table [a.b] is already defined by dotted keys at 2:1")]
    [InlineData("a = { b = 1 }\n[a]", 2, 2, "table [a] is already defined as an inline table at 1:1")]
    [InlineData("a = { b = 1 }\na.c = 2", 2, 1, "table 'a' is an inline table (defined at 1:1) and cannot be extended")]
    [InlineData("a = { b = 1 }\n[a.c]", 2, 2, "table 'a' is an inline table")]
    [InlineData("[a.b.c]\nz = 9\n[a]\nb.c.t = 1", 4, 1, "table 'a.b' was created by a [table] header")]
    [InlineData("[[servers]]\nname = 'a'", 1, 1, "arrays of tables ([[...]]) are not supported in broker.toml")]
    [InlineData("a = 1979-05-27", 1, 5, "dates and times are not supported in broker.toml")]
    [InlineData("a = 1979-05-27T07:32:00Z", 1, 5, "dates and times are not supported in broker.toml")]
    [InlineData("a = 07:32:00", 1, 5, "dates and times are not supported in broker.toml")]
    [InlineData("a = 9223372036854775808", 1, 5, "integer '9223372036854775808' does not fit in a 64-bit signed integer")]
    [InlineData("a = -9223372036854775809", 1, 5, "does not fit in a 64-bit signed integer")]
    [InlineData("a = 0x8000000000000000", 1, 5, "does not fit in a 64-bit signed integer")]
    [InlineData("a = 1e400", 1, 5, "float '1e400' is out of range for a 64-bit float")]
    [InlineData("a = { b = 1,\n c = 2 }", 1, 13, "unterminated inline table 'a'")]
    [InlineData("a = {\n b = 1 }", 1, 6, "unterminated inline table 'a'")]
    [InlineData("a = { b = 1, }", 1, 12, "trailing comma is not allowed in inline table 'a'")]
    public void Rejections_name_the_key_at_the_offending_line_and_column(string text, int line, int column, string reason) =>
        AssertRejected(text, line, column, reason);

    // Lexical and grammar errors are Tomlyn's (2.11.1), in its words, at the offending line and column.
    [Theory]
    [InlineData("a$b = 1", 1, 2, "Expecting `=` after a key instead of $")]
    [InlineData("= 1", 1, 1, "Unexpected token [=] found")]
    [InlineData("a. = 1", 1, 4, "Unexpected token `=` for a base key")]
    [InlineData("[]", 1, 2, "Unexpected token `]` for a base key")]
    [InlineData("[a.]", 1, 4, "Unexpected token `]` for a base key")]
    [InlineData("[a", 1, 3, "Unexpected token found `<eof>` (token: `eof`) while expecting `]` (token: `closebracket`)")]
    [InlineData("[a] b = 1", 1, 5, "Unexpected token found `b` (token: `basickey`) while expecting token `newline`")]
    [InlineData("\"\"\"key\"\"\" = 1", 1, 3, "Expecting `=` after a key instead of \"key\"")]
    [InlineData("a 1", 1, 3, "Expecting `=` after a key instead of 1")]
    [InlineData("a", 1, 2, "Expecting `=` after a key instead of <eof>")]
    [InlineData("a\nb = 1", 1, 2, "Expecting `=` after a key instead of \u2424")]
    [InlineData("a =", 1, 4, "Unexpected token `<eof>` for a value")]
    [InlineData("a = # comment", 1, 14, "Unexpected token `<eof>` for a value")]
    [InlineData("a = 1 b = 2", 1, 7, "Unexpected token found `b` while expecting token `newline`")]
    [InlineData("a = \"x\" \"y\"", 1, 9, "Unexpected token found `\"y\"` (token: `string`) while expecting token `newline`")]
    [InlineData("a = 1,", 1, 6, "Unexpected token found `,` (token: `comma`) while expecting token `newline`")]
    [InlineData("a = True", 1, 5, "Unexpected token `True` for a value")]
    [InlineData("a = yes", 1, 5, "Unexpected token `yes` for a value")]
    [InlineData("a = .5", 1, 5, "Unexpected token `.` for a value")]
    [InlineData("a = +", 1, 5, "Unexpected token `+` for a value")]
    [InlineData("a = \"abc", 1, 8, "Invalid End-Of-File found on string literal")]
    [InlineData("a = \"abc\nb = 1", 1, 9, "Invalid newline in a string")]
    [InlineData("a = \"a\\qb\"", 1, 8, "Unexpected escape character [q] in string. Only b t n f r e \\ \" xHH u0000-uFFFF U00000000-UFFFFFFFF are allowed")]
    [InlineData("a = \"\\ \"", 1, 7, "Invalid escape `\\`. It must skip at least one line.")]
    [InlineData("a = \"\"\"x\\q\"\"\"", 1, 10, "Unexpected escape character [q] in string. Only b t n f r e \\ \" xHH u0000-uFFFF U00000000-UFFFFFFFF are allowed")]
    [InlineData("a = \"\\u12G4\"", 1, 10, "Unexpected escape character [G] in string. Only b t n f r e \\ \" xHH u0000-uFFFF U00000000-UFFFFFFFF are allowed")]
    [InlineData("a = \"\\uD800\"", 1, 7, "Invalid Unicode scalar value [D800]")]
    [InlineData("a = \"\\U00110000\"", 1, 7, "Invalid Unicode scalar value [110000]")]
    [InlineData("a = 'abc", 1, 8, "Invalid End-Of-File found on string literal")]
    [InlineData("a = 'ab\ncd'", 1, 8, "Invalid newline in a string")]
    [InlineData("a = \"\"\"abc\n", 1, 11, "Invalid End-Of-File found for multi-line string")]
    [InlineData("a = '''abc", 1, 10, "Invalid End-Of-File found for multi-line literal string")]
    [InlineData("a = \"\"\"x\"\"\"\"\"\"", 1, 14, "Unexpected token found `\"` (token: `string`) while expecting token `newline`")]
    [InlineData("a = \"a\u0001b\"", 1, 5, "Invalid control character found \\u1;")]
    [InlineData("a = 'a\u007Fb'", 1, 5, "Invalid control character found ")]
    [InlineData("a = \"\"\"a\u0000\"\"\"", 1, 5, "Invalid control character found \\u0;")]
    [InlineData("a = '''\nx\ry'''", 2, 2, "Invalid \\r not followed by \\n")]
    [InlineData("# bad \u0007 comment", 1, 7, "Invalid control character U+0007 in comment")]
    [InlineData("a = 1\rb = 2", 1, 6, "Invalid \\r not followed by \\n")]
    [InlineData("a = 012", 1, 5, "Unexpected leading zero (`0`) for integer `012`")]
    [InlineData("a = -01.5", 1, 6, "Unexpected leading zero (`0`) for float `-01.5`")]
    [InlineData("a = 1__000", 1, 7, "An underscore `_` must follow a digit and not another `_`")]
    [InlineData("a = 1000_", 1, 10, "Missing a digit after a trailing underscore `_`")]
    [InlineData("a = 1_.5", 1, 7, "Missing a digit after a trailing underscore `_`")]
    [InlineData("a = 1._5", 1, 5, "Unexpected token `1.` for a value")]
    [InlineData("a = 0x_1", 1, 5, "An underscore must be surrounded by at least one hexadecimal digit on each side")]
    [InlineData("a = +0x10", 1, 7, "Unexpected token found `x` while expecting token `newline`")]
    [InlineData("a = 0xG1", 1, 5, "Unexpected token `0x` for a value")]
    [InlineData("a = 0o8", 1, 5, "Unexpected token `0o` for a value")]
    [InlineData("a = 0b102", 1, 9, "Unexpected token found `2` (token: `integer`) while expecting token `newline`")]
    [InlineData("a = 0x", 1, 5, "Unexpected token `0x` for a value")]
    [InlineData("a = 0X10", 1, 6, "Invalid capital X for hexadecimal. Use `x` instead.")]
    [InlineData("a = 1.", 1, 5, "Unexpected token `1.` for a value")]
    [InlineData("a = 1e", 1, 5, "Unexpected token `1e` for a value")]
    [InlineData("a = 1.2.3", 1, 8, "Unexpected token found `.` while expecting token `newline`")]
    [InlineData("a = 12abc", 1, 7, "Unexpected token found `abc` while expecting token `newline`")]
    [InlineData("a = [1, 2", 1, 10, "Unexpected token `<eof>` (token: `Eof`). Expecting a closing `]` for an array")]
    [InlineData("a = [\n1,\n2\n", 4, 1, "Unexpected token `<eof>` (token: `Eof`). Expecting a closing `]` for an array")]
    [InlineData("a = [1 2]", 1, 8, "Missing a `,` (token: comma) to separate items in an array")]
    [InlineData("a = [1,,2]", 1, 8, "Unexpected token `,` for a value")]
    [InlineData("a = []]", 1, 7, "Unexpected token found `]` (token: `closebracket`) while expecting token `newline`")]
    [InlineData("a = { b = 1", 1, 12, "Unexpected token `Eof` while parsing inline table. Expecting a bare key or string instead of `<eof>`")]
    [InlineData("a = { b = 1 c = 2 }", 1, 13, "Unexpected token `Invalid` while parsing inline table. Expecting a bare key or string instead of `c`")]
    [InlineData("a = { b }", 1, 9, "Expecting `=` after a key instead of }")]
    [InlineData("a = [\n  1,\n  2 3\n]", 3, 5, "Missing a `,` (token: comma) to separate items in an array")]
    [InlineData("a = [\n  1, # c\n  {x = 1}, oops\n]", 3, 12, "Unexpected token `oops` for a value")]
    [InlineData("s = \"\"\"\none\ntwo\"\"\" x", 3, 8, "Unexpected token found `x` while expecting token `newline`")]
    [InlineData("a = 1\r\nb = \"x\r\n", 2, 7, "Invalid newline in a string")]
    [InlineData("# c\r\n\r\n[t]\r\nv = 1 2\r\n", 4, 7, "Unexpected token found `2` (token: `integer`) while expecting token `newline`")]
    public void Syntax_errors_are_reported_at_the_offending_line_and_column(string text, int line, int column, string reason) =>
        AssertRejected(text, line, column, reason);

    private static void AssertRejected(string text, int line, int column, string reason)
    {
        var ex = Assert.Throws<TomlParseException>(() => TomlDocument.Parse(text, File));

        Assert.Equal(new TomlPosition(File, line, column), ex.Position);
        Assert.Contains(reason, ex.Reason, StringComparison.Ordinal);
        Assert.Equal($"{File}:{line}:{column}: {ex.Reason}", ex.Message);
    }

    [Fact]
    public void Unpaired_surrogate_in_a_string_is_rejected()
    {
        // Kept out of [InlineData]: the test framework cannot serialize a lone surrogate.
        var ex = Assert.Throws<TomlParseException>(() => TomlDocument.Parse("a = \"x\uD800\"", File));
        Assert.Equal(new TomlPosition(File, 1, 7), ex.Position);
        Assert.Contains("unpaired surrogate", ex.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Nesting_deeper_than_the_limit_is_a_parse_error_not_a_stack_overflow()
    {
        string text = "a = " + new string('[', 100_000);
        var ex = Assert.Throws<TomlParseException>(() => TomlDocument.Parse(text, File));
        Assert.Equal(new TomlPosition(File, 1, 5 + 64), ex.Position);
        Assert.Contains("nested more than 64 deep", ex.Reason, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Port = 1\nport = 2", 2, 1, "key 'port' differs from 'Port' (at 1:1) only by case")]
    [InlineData("[Server]\nx = 1\n[server]\ny = 2", 3, 2, "key 'server' differs from 'Server' (at 1:2) only by case")]
    [InlineData("\"a:b\" = 1", 1, 1, "key 'a:b' contains ':'")]
    [InlineData("\"\" = 1", 1, 1, "an empty key cannot be used in broker.toml")]
    public void Keys_that_configuration_cannot_represent_are_rejected_when_flattening(string text, int line, int column, string reason)
    {
        TomlDocument document = TomlDocument.Parse(text, File);
        var ex = Assert.Throws<TomlParseException>(() => document.Flatten());
        Assert.Equal(new TomlPosition(File, line, column), ex.Position);
        Assert.Contains(reason, ex.Reason, StringComparison.Ordinal);
    }
}
