using ChatBroker.Broker.Configuration.Toml;
using Tomlyn.Parsing;
using Tomlyn.Syntax;

namespace ChatBroker.Broker.Tests.Toml;

// Tomlyn's syntax errors in broker.toml's words, beyond the original rejection suite (TomlParserErrorTests):
// the whole reason, for inputs where Tomlyn's message, token or position differs from ours.
public class TomlDiagnosticsTests
{
    private const string File = "t.toml";
    private const string BareKeyHint = "(bare keys may contain only A-Z a-z 0-9 _ -; quote other keys)";

    [Theory]
    [InlineData("[a b]", 1, 4, "expected ']' to close table header [a], found 'b'")]
    [InlineData("[se+rver]", 1, 4, "invalid character '+' in bare key 'se' " + BareKeyHint)]
    [InlineData("[a]]", 1, 4, "unexpected ']' after table header; expected a newline or a comment")]
    [InlineData("[[a", 1, 1, "arrays of tables ([[...]]) are not supported in broker.toml; use an array of inline tables: key = [{ ... }, { ... }]")]
    [InlineData("a = 1\n  = 2", 2, 3, "missing key before '='")]
    [InlineData("x = [{a = 1, a}]", 1, 15, "expected '=' after key 'a', found '}'")]
    [InlineData("a = # c\nb = 1", 1, 5, "missing value for key 'a'")]
    [InlineData("a = { b = }", 1, 11, "missing value for 'a.b' before '}'")]
    [InlineData("a = true0b1", 1, 5, "invalid value 'true0b1' for key 'a' (strings must be quoted)")]
    [InlineData("a = [1 }", 1, 8, "expected ',' or ']' after an item of array 'a', found '}'")]
    [InlineData("a = [1, [2 3]]", 1, 12, "expected ',' or ']' after an item of array 'a[1]', found '3'")]
    [InlineData("a = [1, 2,\n#x\n", 1, 5, "unterminated array for key 'a': expected ']'")]
    [InlineData("a = { , }", 1, 7, "invalid character ',' at the start of a key " + BareKeyHint)]
    [InlineData("a = [ { [b = 1 } ]", 1, 9, "invalid character '[' at the start of a key " + BareKeyHint)]
    [InlineData("a = { b = 1\n", 1, 12, "unterminated inline table 'a': expected '}' before the end of the line")]
    [InlineData("a = 00", 1, 5, "leading zeros are not allowed in '00'")]
    [InlineData("a = 0x1_", 1, 8, "trailing underscore in number '0x1_'")]
    [InlineData("a = 0x1__2", 1, 9, "double underscore in number '0x1__2'")]
    [InlineData("a = 0o19", 1, 8, "invalid octal digit '9' in '0o19'")]
    [InlineData("a = 0x12345678901234567", 1, 5, "integer '0x12345678901234567' does not fit in a 64-bit signed integer")]
    [InlineData("a = 1e+", 1, 6, "expected a digit in the exponent of '1e+'")]
    [InlineData("a = 2024-01-01T25:00:00", 1, 5, "dates and times are not supported in broker.toml")]
    [InlineData("a = \"\\u12\"", 1, 6, "invalid unicode escape: '\\u' must be followed by 4 hexadecimal digits")]
    [InlineData("a = \"\\xZZ\"", 1, 6, "invalid escape: '\\x' must be followed by 2 hexadecimal digits")]
    [InlineData("a = \"a\\qb\"", 1, 7, "invalid escape sequence '\\q' (valid: \\b \\t \\n \\f \\r \\e \\\" \\\\ \\xHH \\uXXXX \\UXXXXXXXX)")]
    [InlineData("\"a\nb\" = 1", 1, 3, "newline in a basic string: close it on the same line or use a multi-line string (\"\"\")")]
    [InlineData("a = \"\"\"x\"\"\"\"\"\"\nb = 1", 1, 14, "too many \" characters at the end of a multi-line string")]
    [InlineData("a = 1 # ok\nb = 'x", 2, 5, "unterminated literal string: expected a closing \"'\"")]
    [InlineData("a = \"\\u12", 1, 6, "invalid unicode escape: '\\u' must be followed by 4 hexadecimal digits")]
    [InlineData("a = \"abc\\", 1, 9, "unterminated string: expected an escape sequence after '\\'")]
    [InlineData("a = \"x\ry\"", 1, 7, "newline in a basic string: close it on the same line or use a multi-line string (\"\"\")")]
    [InlineData("a = 'x'\rb = 1", 1, 8, "a carriage return must be followed by a line feed")]
    [InlineData("a\rb = 1", 1, 2, "expected '=' after key 'a', found end of line")]
    [InlineData("abc # no value\nb = 1", 1, 5, "expected '=' after key 'abc', found '#'")]
    [InlineData("a = {\n b }", 1, 6, "unterminated inline table 'a': expected '}' before the end of the line")]
    [InlineData("a = { b = 1,\n }", 1, 13, "unterminated inline table 'a': expected '}' before the end of the line")]
    [InlineData("x = [{ n = 'a',\n w = 1 }]\ny = [1 2]", 1, 16, "unterminated inline table 'x[0]': expected '}' before the end of the line")]
    [InlineData("x = { n = 1, }\ny = [1 2]", 1, 12, "trailing comma is not allowed in inline table 'x'")]
    public void Tomlyn_errors_are_worded_as_ours(string text, int line, int column, string reason)
    {
        var ex = Assert.Throws<TomlParseException>(() => TomlDocument.Parse(text, File));

        Assert.Equal(reason, ex.Reason);
        Assert.Equal(new TomlPosition(File, line, column), ex.Position);
    }

    [Fact]
    public void A_Tomlyn_message_without_a_translation_is_reported_in_its_words_at_its_position()
    {
        const string Text = "a = 1\nb = 2";
        DocumentSyntax document = SyntaxParser.Parse(Text, File, validate: false);
        var at = new TextPosition(10, 1, 4);
        document.Diagnostics.Error(new SourceSpan(File, at, at), "Some message a later Tomlyn may add");

        (int offset, string reason) = TomlDiagnostics.Translate(Text, document);

        Assert.Equal(10, offset);
        Assert.Equal("Some message a later Tomlyn may add", reason);
    }
}
