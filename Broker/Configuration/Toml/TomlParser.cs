using System.Globalization;
using System.Text;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>
/// A strict recursive-descent parser for the subset of TOML v1.0.0 that broker.toml uses
/// (https://toml.io/en/v1.0.0). Every rejection is a <see cref="TomlParseException"/> at the line and
/// column of the offending character. Not supported, and rejected with a clear message: arrays of
/// tables ("[[x]]") and offset/local dates and times.
/// </summary>
internal sealed class TomlParser
{
    // Bounds recursion through nested arrays and inline tables, so that hostile input such as
    // "[[[[..." fails with a parse error instead of overflowing the stack. Real configuration nests 2-3 deep.
    private const int MaxNesting = 64;

    private readonly TomlCursor _cursor;
    private readonly TomlTable _root;
    private int _nesting;

    private TomlParser(string text, string fileName)
    {
        _cursor = new TomlCursor(text, fileName);
        _root = new TomlTable(_cursor.Position, TomlTableOrigin.Root);
    }

    private readonly record struct KeySegment(string Name, TomlPosition Position);

    public static TomlTable Parse(string text, string fileName) => new TomlParser(text, fileName).ParseDocument();

    // toml = expression *( newline expression ); expression = ws [ keyval / table ] ws [ comment ]
    private TomlTable ParseDocument()
    {
        TomlTable current = _root;
        string currentPath = "";
        while (true)
        {
            SkipWhitespace();
            int c = _cursor.Peek();
            if (c == TomlCursor.End)
            {
                return _root;
            }

            if (c == '#' || IsNewlineStart(c))
            {
                ExpectEndOfLine("comment");
                continue;
            }

            if (c == '[')
            {
                (current, currentPath) = ParseTableHeader();
                ExpectEndOfLine("table header");
            }
            else
            {
                ParseKeyValue(current, currentPath);
                ExpectEndOfLine("value");
            }
        }
    }

    // ---------------------------------------------------------------- tables

    // std-table = "[" ws key ws "]". Each header defines its table once (TOML 1.0 "Table": "you cannot
    // define a table more than once"); parent tables it names are created implicitly and may be defined
    // by their own header later.
    private (TomlTable Table, string Path) ParseTableHeader()
    {
        TomlPosition open = _cursor.Position;
        _cursor.Advance();
        if (_cursor.Peek() == '[')
        {
            throw Error(open, "arrays of tables ([[...]]) are not supported in broker.toml; use an array of inline tables: key = [{ ... }, { ... }]");
        }

        SkipWhitespace();
        List<KeySegment> key = ParseKey(inHeader: true);
        SkipWhitespace();
        if (_cursor.Peek() != ']')
        {
            throw Error(_cursor.Position, $"expected ']' to close table header [{FormatKey(key, key.Count)}], found {Describe(_cursor.Peek())}");
        }

        _cursor.Advance();

        TomlTable table = _root;
        for (int i = 0; i < key.Count - 1; i++)
        {
            KeySegment segment = key[i];
            if (!table.TryGetEntry(segment.Name, out TomlTableEntry entry))
            {
                var created = new TomlTable(segment.Position, TomlTableOrigin.Implicit);
                table.Add(segment.Name, segment.Position, created);
                table = created;
                continue;
            }

            // A header may descend through tables made by headers or by dotted keys ("The [table] form
            // can, however, be used to define sub-tables within tables defined via dotted keys"), but
            // never into a value or an inline table.
            table = entry.Value switch
            {
                TomlTable { Origin: TomlTableOrigin.Inline } => throw Error(segment.Position, $"table '{FormatKey(key, i + 1)}' is an inline table (defined at {LineCol(entry.KeyPosition)}) and cannot be extended"),
                TomlTable existing => existing,
                _ => throw Error(segment.Position, $"key '{FormatKey(key, i + 1)}' is already defined as a value at {LineCol(entry.KeyPosition)} and cannot be used as a table"),
            };
        }

        KeySegment last = key[^1];
        string path = FormatKey(key, key.Count);
        if (!table.TryGetEntry(last.Name, out TomlTableEntry previous))
        {
            var defined = new TomlTable(open, TomlTableOrigin.Header);
            table.Add(last.Name, last.Position, defined);
            return (defined, path);
        }

        if (previous.Value is not TomlTable previousTable)
        {
            throw Error(last.Position, $"key '{path}' is already defined as a value at {LineCol(previous.KeyPosition)} and cannot be used as a table");
        }

        switch (previousTable.Origin)
        {
            case TomlTableOrigin.Implicit:
                previousTable.Origin = TomlTableOrigin.Header;
                previousTable.Position = open;
                table.MoveKey(last.Name, last.Position);
                return (previousTable, path);
            case TomlTableOrigin.DottedKey:
                throw Error(last.Position, $"table [{path}] is already defined by dotted keys at {LineCol(previous.KeyPosition)}");
            case TomlTableOrigin.Inline:
                throw Error(last.Position, $"table [{path}] is already defined as an inline table at {LineCol(previous.KeyPosition)}");
            default:
                throw Error(last.Position, $"table [{path}] is already defined at {LineCol(previous.KeyPosition)}");
        }
    }

    // keyval = key keyval-sep val. A dotted key creates a table for each part before the last
    // (TOML 1.0 "Keys"); those tables can be extended only by more dotted keys in the same table.
    private void ParseKeyValue(TomlTable table, string tablePath)
    {
        List<KeySegment> key = ParseKey(inHeader: false);
        SkipWhitespace();
        if (_cursor.Peek() != '=')
        {
            throw Error(_cursor.Position, $"expected '=' after key '{FormatKey(key, key.Count)}', found {Describe(_cursor.Peek())}");
        }

        _cursor.Advance();
        SkipWhitespace();

        string prefix = tablePath.Length == 0 ? "" : tablePath + ".";
        TomlTable target = table;
        for (int i = 0; i < key.Count - 1; i++)
        {
            target = DescendByDottedKey(target, key[i], prefix + FormatKey(key, i + 1));
        }

        KeySegment last = key[^1];
        string fullKey = prefix + FormatKey(key, key.Count);
        if (target.TryGetEntry(last.Name, out TomlTableEntry existing))
        {
            // "Defining a key multiple times is invalid."
            throw Error(last.Position, $"duplicate key '{fullKey}' (first defined at {LineCol(existing.KeyPosition)})");
        }

        TomlValue value = ParseValue(fullKey);
        target.Add(last.Name, last.Position, value);
    }

    private static TomlTable DescendByDottedKey(TomlTable table, KeySegment segment, string path)
    {
        if (!table.TryGetEntry(segment.Name, out TomlTableEntry entry))
        {
            var created = new TomlTable(segment.Position, TomlTableOrigin.DottedKey);
            table.Add(segment.Name, segment.Position, created);
            return created;
        }

        return entry.Value switch
        {
            TomlTable { Origin: TomlTableOrigin.DottedKey } existing => existing,
            TomlTable { Origin: TomlTableOrigin.Inline } => throw Error(segment.Position, $"table '{path}' is an inline table (defined at {LineCol(entry.KeyPosition)}) and cannot be extended"),
            TomlTable => throw Error(segment.Position, $"table '{path}' was created by a [table] header at {LineCol(entry.KeyPosition)}; dotted keys cannot add to it from here"),
            _ => throw Error(segment.Position, $"key '{path}' is already defined as a value at {LineCol(entry.KeyPosition)} and cannot be used as a table"),
        };
    }

    // ---------------------------------------------------------------- keys

    // key = simple-key / dotted-key; simple-key = quoted-key / unquoted-key; dot-sep = ws "." ws
    private List<KeySegment> ParseKey(bool inHeader)
    {
        var segments = new List<KeySegment>();
        while (true)
        {
            segments.Add(ParseSimpleKey(inHeader, afterDot: segments.Count > 0));
            SkipWhitespace();
            if (_cursor.Peek() != '.')
            {
                return segments;
            }

            _cursor.Advance();
            SkipWhitespace();
        }
    }

    private KeySegment ParseSimpleKey(bool inHeader, bool afterDot)
    {
        TomlPosition start = _cursor.Position;
        int c = _cursor.Peek();
        if (c is '"' or '\'')
        {
            // quoted-key = basic-string / literal-string: multi-line strings are not keys.
            if (_cursor.LookingAt("\"\"\"") || _cursor.LookingAt("'''"))
            {
                throw Error(start, "a multi-line string cannot be used as a key");
            }

            string quoted = c == '"' ? ParseBasicString() : ParseLiteralString();
            return new KeySegment(quoted, start);
        }

        // unquoted-key = 1*( ALPHA / DIGIT / %x2D / %x5F )
        string bare = _cursor.ReadWhile(IsBareKeyChar);
        if (bare.Length == 0)
        {
            int found = _cursor.Peek();
            string what = inHeader ? "table name" : "key";
            string reason = afterDot ? $"expected a key after '.', found {Describe(found)}"
                : found == '=' ? "missing key before '='"
                : found == ']' && inHeader ? "empty table name"
                : found is TomlCursor.End or '\n' or '\r' ? $"expected a {what}, found {Describe(found)}"
                : $"invalid character {Describe(found)} at the start of a {what} (bare keys may contain only A-Z a-z 0-9 _ -; quote other keys)";
            throw Error(start, reason);
        }

        int next = _cursor.Peek();
        if (next is not (TomlCursor.End or ' ' or '\t' or '.' or '=' or ']' or '#' or '\n' or '\r' or ',' or '}'))
        {
            throw Error(_cursor.Position, $"invalid character {Describe(next)} in bare key '{bare}' (bare keys may contain only A-Z a-z 0-9 _ -; quote other keys)");
        }

        return new KeySegment(bare, start);
    }

    // ---------------------------------------------------------------- values

    // val = string / boolean / array / inline-table / date-time / float / integer
    private TomlValue ParseValue(string key)
    {
        TomlPosition start = _cursor.Position;
        int c = _cursor.Peek();
        switch (c)
        {
            case '"':
                return new TomlString(_cursor.LookingAt("\"\"\"") ? ParseMultiLineBasicString() : ParseBasicString(), start);
            case '\'':
                return new TomlString(_cursor.LookingAt("'''") ? ParseMultiLineLiteralString() : ParseLiteralString(), start);
            case '[':
                return ParseArray(key);
            case '{':
                return ParseInlineTable(key);
            case TomlCursor.End or '\n' or '\r' or '#':
                throw Error(start, $"missing value for key '{key}'");
            case ',' or ']' or '}':
                throw Error(start, $"missing value for '{key}' before {Describe(c)}");
        }

        string token = _cursor.ReadWhile(IsScalarTokenChar);
        if (token.Length == 0)
        {
            throw Error(start, $"invalid value for '{key}': unexpected {Describe(c)}");
        }

        return ParseScalarToken(token, start, key);
    }

    // boolean = true / false; float special values inf / nan with optional sign; otherwise a number.
    private static TomlValue ParseScalarToken(string token, TomlPosition start, string key)
    {
        switch (token)
        {
            case "true":
                return new TomlBoolean(true, start);
            case "false":
                return new TomlBoolean(false, start);
            case "inf" or "+inf":
                return new TomlFloat(double.PositiveInfinity, start);
            case "-inf":
                return new TomlFloat(double.NegativeInfinity, start);
            case "nan" or "+nan" or "-nan":
                return new TomlFloat(double.NaN, start);
        }

        if (LooksLikeDateOrTime(token))
        {
            throw Error(start, "dates and times are not supported in broker.toml");
        }

        int first = token[0] is '+' or '-' ? 1 : 0;
        if (first < token.Length && char.IsAsciiDigit(token[first]))
        {
            return ParseNumber(token, start);
        }

        string hint = token.Equals("true", StringComparison.OrdinalIgnoreCase) || token.Equals("false", StringComparison.OrdinalIgnoreCase)
            ? " (booleans are lowercase: true or false)"
            : first == 1 ? " (expected a digit after the sign)"
            : char.IsAsciiLetter(token[0]) ? " (strings must be quoted)"
            : "";
        throw Error(start, $"invalid value '{token}' for key '{key}'{hint}");
    }

    // Offset date-time, local date-time, local date ("1979-05-27") and local time ("07:32:00").
    private static bool LooksLikeDateOrTime(string token) =>
        (token.Length >= 5 && char.IsAsciiDigit(token[0]) && char.IsAsciiDigit(token[1]) && char.IsAsciiDigit(token[2]) && char.IsAsciiDigit(token[3]) && token[4] == '-')
        || (token.Length >= 3 && char.IsAsciiDigit(token[0]) && char.IsAsciiDigit(token[1]) && token[2] == ':');

    // integer = dec-int / hex-int / oct-int / bin-int; float = float-int-part ( exp / frac [ exp ] )
    private static TomlValue ParseNumber(string token, TomlPosition start)
    {
        int i = token[0] is '+' or '-' ? 1 : 0;
        if (i + 1 < token.Length && token[i] == '0' && token[i + 1] is 'x' or 'o' or 'b')
        {
            if (i == 1)
            {
                // hex-int / oct-int / bin-int have no sign in the grammar.
                throw Error(start, "a sign is not allowed on hexadecimal, octal or binary integers");
            }

            return ParsePrefixedInteger(token, start);
        }

        // dec-int = [ minus / plus ] unsigned-dec-int; "leading zeros are not allowed".
        int integerStart = i;
        i = ScanDigits(token, i, start, 10);
        if (token[integerStart] == '0' && i - integerStart > 1)
        {
            throw Error(At(start, integerStart), $"leading zeros are not allowed in '{token}'");
        }

        bool isFloat = false;
        if (i < token.Length && token[i] == '.')
        {
            // frac = decimal-point zero-prefixable-int: a digit must follow the point.
            isFloat = true;
            if (i + 1 >= token.Length || !char.IsAsciiDigit(token[i + 1]))
            {
                throw Error(At(start, i), $"expected a digit after the decimal point in '{token}'");
            }

            i = ScanDigits(token, i + 1, start, 10);
        }

        if (i < token.Length && token[i] is 'e' or 'E')
        {
            // exp = "e" float-exp-part; float-exp-part = [ minus / plus ] zero-prefixable-int
            isFloat = true;
            int exponent = i;
            i++;
            if (i < token.Length && token[i] is '+' or '-')
            {
                i++;
            }

            if (i >= token.Length || !char.IsAsciiDigit(token[i]))
            {
                throw Error(At(start, exponent), $"expected a digit in the exponent of '{token}'");
            }

            i = ScanDigits(token, i, start, 10);
        }

        if (i < token.Length)
        {
            throw Error(At(start, i), $"invalid character '{token[i]}' in number '{token}'");
        }

        string digits = token.Replace("_", "", StringComparison.Ordinal);
        if (isFloat)
        {
            // Floats are IEEE 754 binary64; a literal too large for it is an error, not infinity.
            if (!double.TryParse(digits, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) || !double.IsFinite(d))
            {
                throw Error(start, $"float '{token}' is out of range for a 64-bit float");
            }

            return new TomlFloat(d, start);
        }

        // "Arbitrary 64-bit signed integers should be accepted and handled losslessly"; beyond that: error.
        if (!long.TryParse(digits, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long value))
        {
            throw Error(start, $"integer '{token}' does not fit in a 64-bit signed integer");
        }

        return new TomlInteger(value, start);
    }

    // hex-int = "0x" HEXDIG *( HEXDIG / "_" HEXDIG ), and likewise "0o" and "0b"; leading zeros allowed.
    private static TomlInteger ParsePrefixedInteger(string token, TomlPosition start)
    {
        int radix = token[1] switch { 'x' => 16, 'o' => 8, _ => 2 };
        if (token.Length == 2)
        {
            throw Error(At(start, 2), $"expected digits after '{token}'");
        }

        int end = ScanDigits(token, 2, start, radix);
        if (end < token.Length)
        {
            throw Error(At(start, end), $"invalid {RadixName(radix)} digit '{token[end]}' in '{token}'");
        }

        long value = 0;
        for (int i = 2; i < token.Length; i++)
        {
            if (token[i] == '_')
            {
                continue;
            }

            int digit = DigitValue(token[i]);
            if (value > (long.MaxValue - digit) / radix)
            {
                throw Error(start, $"integer '{token}' does not fit in a 64-bit signed integer");
            }

            value = (value * radix) + digit;
        }

        return new TomlInteger(value, start);
    }

    // Scans digits of the radix from index, enforcing "each underscore must be surrounded by at least
    // one digit on each side". Returns the index of the first character that is neither.
    private static int ScanDigits(string token, int index, TomlPosition start, int radix)
    {
        if (index >= token.Length || token[index] == '_' || !IsDigitOf(token[index], radix))
        {
            int c = index < token.Length ? token[index] : TomlCursor.End;
            throw Error(At(start, index), c == '_'
                ? $"underscore must be between digits in '{token}'"
                : $"invalid {RadixName(radix)} digit {Describe(c)} in '{token}'");
        }

        int i = index;
        while (i < token.Length)
        {
            char c = token[i];
            if (c == '_')
            {
                if (i + 1 < token.Length && token[i + 1] == '_')
                {
                    throw Error(At(start, i + 1), $"double underscore in number '{token}'");
                }

                if (i + 1 >= token.Length)
                {
                    throw Error(At(start, i), $"trailing underscore in number '{token}'");
                }

                if (!IsDigitOf(token[i + 1], radix))
                {
                    throw Error(At(start, i), $"underscore must be between digits in '{token}'");
                }
            }
            else if (!IsDigitOf(c, radix))
            {
                break;
            }

            i++;
        }

        return i;
    }

    // array = "[" array-values "]": newlines, comments and a trailing comma are allowed between
    // values; TOML 1.0 allows values of different types in one array.
    private TomlArray ParseArray(string key)
    {
        TomlPosition open = _cursor.Position;
        EnterNesting(open);
        _cursor.Advance();
        var items = new List<TomlValue>();
        while (true)
        {
            SkipWhitespaceCommentsAndNewlines();
            if (_cursor.AtEnd)
            {
                throw Error(open, $"unterminated array for key '{key}': expected ']'");
            }

            if (_cursor.Peek() == ']')
            {
                break;
            }

            items.Add(ParseValue($"{key}[{items.Count}]"));
            SkipWhitespaceCommentsAndNewlines();
            int c = _cursor.Peek();
            if (c == ',')
            {
                _cursor.Advance();
                continue;
            }

            if (c == ']')
            {
                break;
            }

            if (c == TomlCursor.End)
            {
                throw Error(open, $"unterminated array for key '{key}': expected ']'");
            }

            throw Error(_cursor.Position, $"expected ',' or ']' after an item of array '{key}', found {Describe(c)}");
        }

        _cursor.Advance();
        _nesting--;
        return new TomlArray(items, open);
    }

    // inline-table = "{" ws [ keyval *( ws "," ws keyval ) ] ws "}": one line, no trailing comma,
    // and the table is complete when closed (it cannot be extended by headers or dotted keys).
    private TomlTable ParseInlineTable(string key)
    {
        TomlPosition open = _cursor.Position;
        EnterNesting(open);
        _cursor.Advance();
        var table = new TomlTable(open, TomlTableOrigin.Inline);
        SkipWhitespace();
        if (_cursor.Peek() == '}')
        {
            _cursor.Advance();
            _nesting--;
            return table;
        }

        while (true)
        {
            SkipWhitespace();
            ThrowIfInlineTableEnds(key);
            ParseKeyValue(table, key);
            SkipWhitespace();
            ThrowIfInlineTableEnds(key);
            int c = _cursor.Peek();
            if (c == '}')
            {
                break;
            }

            if (c != ',')
            {
                throw Error(_cursor.Position, $"expected ',' or '}}' in inline table '{key}', found {Describe(c)}");
            }

            TomlPosition comma = _cursor.Position;
            _cursor.Advance();
            SkipWhitespace();
            if (_cursor.Peek() == '}')
            {
                throw Error(comma, $"trailing comma is not allowed in inline table '{key}'");
            }
        }

        _cursor.Advance();
        _nesting--;
        Seal(table);
        return table;
    }

    private void ThrowIfInlineTableEnds(string key)
    {
        int c = _cursor.Peek();
        if (c is TomlCursor.End or '\n' or '\r')
        {
            throw Error(_cursor.Position, $"unterminated inline table '{key}': expected '}}' before the end of the line");
        }
    }

    // Tables made by dotted keys inside "{ }" belong to the inline table and are sealed with it.
    private static void Seal(TomlTable table)
    {
        table.Origin = TomlTableOrigin.Inline;
        foreach (TomlTableEntry entry in table.Entries)
        {
            if (entry.Value is TomlTable child)
            {
                Seal(child);
            }
        }
    }

    private void EnterNesting(TomlPosition position)
    {
        if (++_nesting > MaxNesting)
        {
            throw Error(position, $"arrays and inline tables are nested more than {MaxNesting} deep");
        }
    }

    // ---------------------------------------------------------------- strings

    // basic-string = quotation-mark *basic-char quotation-mark: one line, escapes allowed.
    private string ParseBasicString()
    {
        TomlPosition open = _cursor.Position;
        _cursor.Advance();
        var sb = new StringBuilder();
        while (true)
        {
            int c = _cursor.Peek();
            switch (c)
            {
                case TomlCursor.End:
                    throw Error(open, "unterminated string: expected a closing '\"'");
                case '\n' or '\r':
                    throw Error(_cursor.Position, "newline in a basic string: close it on the same line or use a multi-line string (\"\"\")");
                case '"':
                    _cursor.Advance();
                    return sb.ToString();
                case '\\':
                    ParseEscape(sb);
                    break;
                default:
                    AppendContentChar(sb, "string");
                    break;
            }
        }
    }

    // ml-basic-string = """ [ newline ] ml-basic-body """. A newline right after the opening
    // delimiter is trimmed; up to two quotes may sit just before the closing delimiter; a
    // "line ending backslash" removes itself and all whitespace and newlines after it.
    private string ParseMultiLineBasicString()
    {
        TomlPosition open = _cursor.Position;
        _cursor.Advance(3);
        TrimFirstNewline();
        var sb = new StringBuilder();
        while (true)
        {
            int c = _cursor.Peek();
            switch (c)
            {
                case TomlCursor.End:
                    throw Error(open, "unterminated multi-line string: expected a closing '\"\"\"'");
                case '"':
                    if (ConsumeQuotesOrClose(sb, '"'))
                    {
                        return sb.ToString();
                    }

                    break;
                case '\n' or '\r':
                    ConsumeNewline();
                    sb.Append('\n');
                    break;
                case '\\':
                    if (!TrySkipLineEndingBackslash())
                    {
                        ParseEscape(sb);
                    }

                    break;
                default:
                    AppendContentChar(sb, "string");
                    break;
            }
        }
    }

    // literal-string = apostrophe *literal-char apostrophe: one line, no escapes.
    private string ParseLiteralString()
    {
        TomlPosition open = _cursor.Position;
        _cursor.Advance();
        var sb = new StringBuilder();
        while (true)
        {
            int c = _cursor.Peek();
            switch (c)
            {
                case TomlCursor.End:
                    throw Error(open, "unterminated literal string: expected a closing \"'\"");
                case '\n' or '\r':
                    throw Error(_cursor.Position, "newline in a literal string: close it on the same line or use a multi-line literal string (''')");
                case '\'':
                    _cursor.Advance();
                    return sb.ToString();
                default:
                    AppendContentChar(sb, "string");
                    break;
            }
        }
    }

    // ml-literal-string = ''' [ newline ] ml-literal-body ''': no escapes, newlines kept.
    private string ParseMultiLineLiteralString()
    {
        TomlPosition open = _cursor.Position;
        _cursor.Advance(3);
        TrimFirstNewline();
        var sb = new StringBuilder();
        while (true)
        {
            int c = _cursor.Peek();
            switch (c)
            {
                case TomlCursor.End:
                    throw Error(open, "unterminated multi-line literal string: expected a closing \"'''\"");
                case '\'':
                    if (ConsumeQuotesOrClose(sb, '\''))
                    {
                        return sb.ToString();
                    }

                    break;
                case '\n' or '\r':
                    ConsumeNewline();
                    sb.Append('\n');
                    break;
                default:
                    AppendContentChar(sb, "string");
                    break;
            }
        }
    }

    private void TrimFirstNewline()
    {
        if (IsNewlineStart(_cursor.Peek()))
        {
            ConsumeNewline();
        }
    }

    // In a multi-line string a run of 1-2 quotes is content, 3-5 closes the string (the first 0-2
    // being content: mlb-quotes = 1*2quotation-mark), and 6 or more is an error.
    private bool ConsumeQuotesOrClose(StringBuilder sb, char quote)
    {
        int run = 0;
        while (_cursor.Peek(run) == quote)
        {
            run++;
        }

        if (run > 5)
        {
            _cursor.Advance(5);
            throw Error(_cursor.Position, $"too many {quote} characters at the end of a multi-line string");
        }

        _cursor.Advance(run);
        if (run >= 3)
        {
            sb.Append(quote, run - 3);
            return true;
        }

        sb.Append(quote, run);
        return false;
    }

    // mlb-escaped-nl = escape ws newline *( wschar / newline )
    private bool TrySkipLineEndingBackslash()
    {
        int ahead = 1;
        while (_cursor.Peek(ahead) is ' ' or '\t')
        {
            ahead++;
        }

        if (!IsNewlineStart(_cursor.Peek(ahead)))
        {
            return false;
        }

        _cursor.Advance(ahead);
        while (true)
        {
            int c = _cursor.Peek();
            if (c is ' ' or '\t')
            {
                _cursor.Advance();
            }
            else if (IsNewlineStart(c))
            {
                ConsumeNewline();
            }
            else
            {
                return true;
            }
        }
    }

    // escape-seq-char = \" \\ \b \f \n \r \t \uXXXX \UXXXXXXXX; "All other escape sequences not
    // listed above are reserved; if they are used, TOML should produce an error."
    private void ParseEscape(StringBuilder sb)
    {
        TomlPosition backslash = _cursor.Position;
        _cursor.Advance();
        int c = _cursor.Peek();
        switch (c)
        {
            case 'b': sb.Append('\b'); break;
            case 't': sb.Append('\t'); break;
            case 'n': sb.Append('\n'); break;
            case 'f': sb.Append('\f'); break;
            case 'r': sb.Append('\r'); break;
            case '"': sb.Append('"'); break;
            case '\\': sb.Append('\\'); break;
            case 'u':
            case 'U':
                _cursor.Advance();
                sb.Append(ParseUnicodeEscape(backslash, c == 'u' ? 4 : 8, (char)c));
                return;
            case TomlCursor.End:
                throw Error(backslash, "unterminated string: expected an escape sequence after '\\'");
            default:
                throw Error(backslash, $"invalid escape sequence '\\{DescribeBare(c)}' (valid: \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX \\UXXXXXXXX)");
        }

        _cursor.Advance();
    }

    // "Any Unicode character may be escaped with the \uXXXX or \UXXXXXXXX forms. The escape codes
    // must be valid Unicode scalar values."
    private string ParseUnicodeEscape(TomlPosition backslash, int length, char letter)
    {
        int scalar = 0;
        for (int i = 0; i < length; i++)
        {
            int c = _cursor.Peek();
            int digit = c is TomlCursor.End ? -1 : DigitValue((char)c);
            if (digit is < 0 or >= 16)
            {
                throw Error(backslash, $"invalid unicode escape: '\\{letter}' must be followed by {length} hexadecimal digits");
            }

            // Eight hex digits can exceed int; anything above 0x10FFFF is rejected below anyway.
            scalar = scalar > 0x10FFFF ? scalar : (scalar * 16) + digit;
            _cursor.Advance();
        }

        if (scalar > 0x10FFFF || (scalar >= 0xD800 && scalar <= 0xDFFF))
        {
            throw Error(backslash, $"invalid unicode escape: U+{scalar:X} is not a Unicode scalar value");
        }

        return char.ConvertFromUtf32(scalar);
    }

    // Strings and comments may not contain control characters other than tab (U+0000-U+0008,
    // U+000A-U+001F, U+007F); text must be well-formed Unicode, so an unpaired surrogate is rejected.
    private void AppendContentChar(StringBuilder? sb, string where)
    {
        char c = (char)_cursor.Peek();
        if ((c < 0x20 && c != '\t') || c == 0x7F)
        {
            throw Error(_cursor.Position, $"control character U+{(int)c:X4} is not allowed in a {where}{(where == "string" ? "; use an escape sequence" : "")}");
        }

        if (char.IsSurrogate(c))
        {
            int next = _cursor.Peek(1);
            if (!char.IsHighSurrogate(c) || next == TomlCursor.End || !char.IsLowSurrogate((char)next))
            {
                throw Error(_cursor.Position, $"invalid character U+{(int)c:X4} (unpaired surrogate) in a {where}");
            }

            sb?.Append(c).Append((char)next);
            _cursor.Advance(2);
            return;
        }

        sb?.Append(c);
        _cursor.Advance();
    }

    // ---------------------------------------------------------------- whitespace, comments, newlines

    // ws = *( %x20 / %x09 )
    private void SkipWhitespace()
    {
        while (_cursor.Peek() is ' ' or '\t')
        {
            _cursor.Advance();
        }
    }

    // comment = "#" *non-eol
    private void SkipComment()
    {
        _cursor.Advance();
        while (true)
        {
            int c = _cursor.Peek();
            if (c == TomlCursor.End || c == '\n' || (c == '\r' && _cursor.Peek(1) == '\n'))
            {
                return;
            }

            AppendContentChar(null, "comment");
        }
    }

    // newline = %x0A / %x0D.0A: a carriage return alone is not a newline.
    private void ConsumeNewline()
    {
        if (_cursor.Peek() == '\r')
        {
            if (_cursor.Peek(1) != '\n')
            {
                throw Error(_cursor.Position, "a carriage return must be followed by a line feed");
            }

            _cursor.Advance();
        }

        _cursor.Advance();
    }

    // After a header or a key/value only whitespace and a comment may follow on the same line.
    private void ExpectEndOfLine(string after)
    {
        SkipWhitespace();
        if (_cursor.Peek() == '#')
        {
            SkipComment();
        }

        int c = _cursor.Peek();
        if (c == TomlCursor.End)
        {
            return;
        }

        if (!IsNewlineStart(c))
        {
            throw Error(_cursor.Position, $"unexpected {Describe(c)} after {after}; expected a newline or a comment");
        }

        ConsumeNewline();
    }

    private void SkipWhitespaceCommentsAndNewlines()
    {
        while (true)
        {
            SkipWhitespace();
            int c = _cursor.Peek();
            if (c == '#')
            {
                SkipComment();
            }
            else if (IsNewlineStart(c))
            {
                ConsumeNewline();
            }
            else
            {
                return;
            }
        }
    }

    // ---------------------------------------------------------------- small helpers

    private static bool IsNewlineStart(int c) => c is '\n' or '\r';

    private static bool IsBareKeyChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '_' or '-';

    // Characters that can make up a number, boolean, inf/nan, or a date we reject.
    private static bool IsScalarTokenChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '_' or '+' or '-' or '.' or ':';

    private static bool IsDigitOf(char c, int radix) => (uint)DigitValue(c) < (uint)radix;

    private static int DigitValue(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' => c - 'a' + 10,
        >= 'A' and <= 'F' => c - 'A' + 10,
        _ => -1,
    };

    private static string RadixName(int radix) => radix switch
    {
        16 => "hexadecimal",
        8 => "octal",
        2 => "binary",
        _ => "decimal",
    };

    // Tokens never span lines and contain only ASCII, so the column of token[i] is start + i.
    private static TomlPosition At(TomlPosition start, int index) => start with { Column = start.Column + index };

    private static string LineCol(TomlPosition position) => $"{position.Line}:{position.Column}";

    private static string FormatKey(List<KeySegment> key, int count)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < count; i++)
        {
            if (i > 0)
            {
                sb.Append('.');
            }

            string name = key[i].Name;
            bool bare = name.Length > 0;
            foreach (char c in name)
            {
                bare &= IsBareKeyChar(c);
            }

            sb.Append(bare ? name : $"\"{name}\"");
        }

        return sb.ToString();
    }

    private static string Describe(int c) => c switch
    {
        TomlCursor.End => "end of file",
        '\n' or '\r' => "end of line",
        _ when c < 0x20 || c == 0x7F || char.IsSurrogate((char)c) => $"U+{c:X4}",
        '\'' => "\"'\"",
        _ => $"'{(char)c}'",
    };

    private static string DescribeBare(int c) =>
        c < 0x20 || c == 0x7F || char.IsSurrogate((char)c) ? $"U+{c:X4}" : ((char)c).ToString();

    private static TomlParseException Error(TomlPosition position, string reason) => new(position, reason);
}
