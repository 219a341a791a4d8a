using ChatBroker.Broker.Configuration.Toml;

namespace ChatBroker.Broker.Tests.Toml;

public class TomlParserErrorTests
{
    private const string File = "t.toml";

    [Theory]
    // keys and tables
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
    [InlineData("a$b = 1", 1, 2, "invalid character '$' in bare key 'a'")]
    [InlineData("= 1", 1, 1, "missing key before '='")]
    [InlineData("a. = 1", 1, 4, "expected a key after '.', found '='")]
    [InlineData("[]", 1, 2, "empty table name")]
    [InlineData("[a.]", 1, 4, "expected a key after '.'")]
    [InlineData("[a", 1, 3, "expected ']' to close table header [a], found end of file")]
    [InlineData("[a] b = 1", 1, 5, "unexpected 'b' after table header")]
    [InlineData("\"\"\"key\"\"\" = 1", 1, 1, "a multi-line string cannot be used as a key")]
    [InlineData("a 1", 1, 3, "expected '=' after key 'a', found '1'")]
    [InlineData("a", 1, 2, "expected '=' after key 'a', found end of file")]
    [InlineData("a\nb = 1", 1, 2, "expected '=' after key 'a', found end of line")]
    // values: missing, garbage, unknown
    [InlineData("a =", 1, 4, "missing value for key 'a'")]
    [InlineData("a = # comment", 1, 5, "missing value for key 'a'")]
    [InlineData("a = 1 b = 2", 1, 7, "unexpected 'b' after value; expected a newline or a comment")]
    [InlineData("a = \"x\" \"y\"", 1, 9, "unexpected '\"' after value")]
    [InlineData("a = 1,", 1, 6, "unexpected ',' after value")]
    [InlineData("a = True", 1, 5, "invalid value 'True' for key 'a' (booleans are lowercase: true or false)")]
    [InlineData("a = yes", 1, 5, "invalid value 'yes' for key 'a' (strings must be quoted)")]
    [InlineData("a = .5", 1, 5, "invalid value '.5' for key 'a'")]
    [InlineData("a = +", 1, 5, "invalid value '+' for key 'a' (expected a digit after the sign)")]
    [InlineData("a = 1979-05-27", 1, 5, "dates and times are not supported in broker.toml")]
    [InlineData("a = 1979-05-27T07:32:00Z", 1, 5, "dates and times are not supported in broker.toml")]
    [InlineData("a = 07:32:00", 1, 5, "dates and times are not supported in broker.toml")]
    // strings
    [InlineData("a = \"abc", 1, 5, "unterminated string: expected a closing '\"'")]
    [InlineData("a = \"abc\nb = 1", 1, 9, "newline in a basic string")]
    [InlineData("a = \"a\\qb\"", 1, 7, "invalid escape sequence '\\q'")]
    [InlineData("a = \"\\ \"", 1, 6, "invalid escape sequence '\\ '")]
    [InlineData("a = \"\"\"x\\q\"\"\"", 1, 9, "invalid escape sequence '\\q'")]
    [InlineData("a = \"\\u12G4\"", 1, 6, "invalid unicode escape: '\\u' must be followed by 4 hexadecimal digits")]
    [InlineData("a = \"\\uD800\"", 1, 6, "invalid unicode escape: U+D800 is not a Unicode scalar value")]
    [InlineData("a = \"\\U00110000\"", 1, 6, "U+110000 is not a Unicode scalar value")]
    [InlineData("a = 'abc", 1, 5, "unterminated literal string")]
    [InlineData("a = 'ab\ncd'", 1, 8, "newline in a literal string")]
    [InlineData("a = \"\"\"abc\n", 1, 5, "unterminated multi-line string")]
    [InlineData("a = '''abc", 1, 5, "unterminated multi-line literal string")]
    [InlineData("a = \"\"\"x\"\"\"\"\"\"", 1, 14, "too many \" characters at the end of a multi-line string")]
    [InlineData("a = \"a\u0001b\"", 1, 7, "control character U+0001 is not allowed in a string")]
    [InlineData("a = 'a\u007Fb'", 1, 7, "control character U+007F is not allowed in a string")]
    [InlineData("a = \"\"\"a\u0000\"\"\"", 1, 9, "control character U+0000 is not allowed in a string")]
    [InlineData("a = '''\nx\ry'''", 2, 2, "a carriage return must be followed by a line feed")]
    // comments and newlines
    [InlineData("# bad \u0007 comment", 1, 7, "control character U+0007 is not allowed in a comment")]
    [InlineData("a = 1\rb = 2", 1, 6, "a carriage return must be followed by a line feed")]
    // numbers
    [InlineData("a = 012", 1, 5, "leading zeros are not allowed in '012'")]
    [InlineData("a = -01.5", 1, 6, "leading zeros are not allowed")]
    [InlineData("a = 1__000", 1, 7, "double underscore in number '1__000'")]
    [InlineData("a = 1000_", 1, 9, "trailing underscore in number '1000_'")]
    [InlineData("a = 1_.5", 1, 6, "underscore must be between digits in '1_.5'")]
    [InlineData("a = 1._5", 1, 6, "expected a digit after the decimal point")]
    [InlineData("a = 0x_1", 1, 7, "underscore must be between digits")]
    [InlineData("a = 9223372036854775808", 1, 5, "integer '9223372036854775808' does not fit in a 64-bit signed integer")]
    [InlineData("a = -9223372036854775809", 1, 5, "does not fit in a 64-bit signed integer")]
    [InlineData("a = 0x8000000000000000", 1, 5, "does not fit in a 64-bit signed integer")]
    [InlineData("a = +0x10", 1, 5, "a sign is not allowed on hexadecimal, octal or binary integers")]
    [InlineData("a = 0xG1", 1, 7, "invalid hexadecimal digit 'G' in '0xG1'")]
    [InlineData("a = 0o8", 1, 7, "invalid octal digit '8'")]
    [InlineData("a = 0b102", 1, 9, "invalid binary digit '2' in '0b102'")]
    [InlineData("a = 0x", 1, 7, "expected digits after '0x'")]
    [InlineData("a = 0X10", 1, 6, "invalid character 'X' in number '0X10'")]
    [InlineData("a = 1.", 1, 6, "expected a digit after the decimal point in '1.'")]
    [InlineData("a = 1e", 1, 6, "expected a digit in the exponent of '1e'")]
    [InlineData("a = 1.2.3", 1, 8, "invalid character '.' in number '1.2.3'")]
    [InlineData("a = 1e400", 1, 5, "float '1e400' is out of range for a 64-bit float")]
    [InlineData("a = 12abc", 1, 7, "invalid character 'a' in number '12abc'")]
    // arrays and inline tables
    [InlineData("a = [1, 2", 1, 5, "unterminated array for key 'a': expected ']'")]
    [InlineData("a = [\n1,\n2\n", 1, 5, "unterminated array for key 'a'")]
    [InlineData("a = [1 2]", 1, 8, "expected ',' or ']' after an item of array 'a', found '2'")]
    [InlineData("a = [1,,2]", 1, 8, "missing value for 'a[1]' before ','")]
    [InlineData("a = []]", 1, 7, "unexpected ']' after value")]
    [InlineData("a = { b = 1", 1, 12, "unterminated inline table 'a': expected '}' before the end of the line")]
    [InlineData("a = { b = 1,\n c = 2 }", 1, 13, "unterminated inline table 'a'")]
    [InlineData("a = {\n b = 1 }", 1, 6, "unterminated inline table 'a'")]
    [InlineData("a = { b = 1, }", 1, 12, "trailing comma is not allowed in inline table 'a'")]
    [InlineData("a = { b = 1 c = 2 }", 1, 13, "expected ',' or '}' in inline table 'a', found 'c'")]
    [InlineData("a = { b }", 1, 9, "expected '=' after key 'b'")]
    // positions after multi-line constructs and CRLF
    [InlineData("a = [\n  1,\n  2 3\n]", 3, 5, "expected ',' or ']' after an item of array 'a', found '3'")]
    [InlineData("a = [\n  1, # c\n  {x = 1}, oops\n]", 3, 12, "invalid value 'oops' for key 'a[2]'")]
    [InlineData("s = \"\"\"\none\ntwo\"\"\" x", 3, 8, "unexpected 'x' after value")]
    [InlineData("a = 1\r\nb = \"x\r\n", 2, 7, "newline in a basic string")]
    [InlineData("# c\r\n\r\n[t]\r\nv = 1 2\r\n", 4, 7, "unexpected '2' after value")]
    public void Malformed_input_is_reported_at_the_offending_line_and_column(string text, int line, int column, string reason)
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
