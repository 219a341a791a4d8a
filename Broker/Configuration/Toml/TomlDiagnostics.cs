using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Tomlyn.Syntax;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>
/// Words Tomlyn's syntax errors the way broker.toml reports them: what is wrong, the key it concerns, at
/// the offending character. A table maps each Tomlyn message (its wording is all a diagnostic carries)
/// to a translation that reads the source text around the reported position and the syntax tree Tomlyn
/// built (the key being defined, the array or inline table open there). It never lexes or parses on its
/// own: Tomlyn has already said what is wrong and roughly where, the translation only names it. A
/// message it does not know is reported as Tomlyn words it, at Tomlyn's position.
/// </summary>
internal sealed class TomlDiagnostics
{
    internal const string ArraysOfTablesNotSupported = "arrays of tables ([[...]]) are not supported in broker.toml; use an array of inline tables: key = [{ ... }, { ... }]";
    private const string DatesNotSupported = "dates and times are not supported in broker.toml";
    private const string BareKeyHint = "(bare keys may contain only A-Z a-z 0-9 _ -; quote other keys)";

    // TOML 1.0's escapes and the two TOML 1.1 adds, which Tomlyn reads (\e and \xHH).
    private const string ValidEscapes = "(valid: \\b \\t \\n \\f \\r \\e \\\" \\\\ \\xHH \\uXXXX \\UXXXXXXXX)";

    /// <summary>Where Tomlyn raised a message: the lexer's are specific to one token, the parser's are about what it expected.</summary>
    private enum Origin
    {
        Lexer,

        /// <summary>The lexer about one odd character, which a parser error at the same place names better ("in bare key 'f'", "found end of line").</summary>
        LexerCharacter,
        Parser,

        /// <summary>The parser refusing a token the lexer read whole ("1."): a lexer error inside it is the reason.</summary>
        ParserToken,
    }

    private delegate (int Offset, string Reason)? Translation(TomlDiagnostics source, Match match, int offset);

    private sealed record Rule(Regex Message, Origin Origin, Translation Translate)
    {
        public Rule(string message, Origin origin, Translation translate)
            : this(new Regex(message, RegexOptions.CultureInvariant | RegexOptions.Singleline), origin, translate)
        {
        }
    }

    // Tomlyn 2.11.1's messages (Parsing/Lexer.cs and Parsing/Parser.cs); `found` is the token Tomlyn
    // printed, `kind` its token kind. Order matters only where two patterns could match one message.
    private static readonly Rule[] Rules =
    [
        // ---- lexer: strings, escapes, comments, line breaks
        new("^Invalid newline in a string$", Origin.Lexer, static (s, _, at) => s.NewlineInString(at)),
        new("^Invalid End-Of-File found on string literal$", Origin.Lexer, static (s, _, at) => s.UnterminatedString(at)),
        new("^Invalid End-Of-File found for multi-line (literal )?string$", Origin.Lexer, static (s, _, at) => s.UnterminatedString(at)),
        new("^Invalid control character found", Origin.Lexer, static (s, _, at) => s.ControlCharacterInString(at)),
        new("^Unexpected escape character \\[.*\\] in string\\.", Origin.Lexer, static (s, _, at) => s.InvalidEscape(at)),
        new("^Invalid escape `\\\\`\\. It must skip at least one line\\.$", Origin.Lexer, static (s, _, at) => s.InvalidEscape(at)),
        new("^Invalid escape `\\\\x`\\. Expected 2 hexadecimal digits\\.$", Origin.Lexer, static (s, _, at) => s.Escape(at, _ => "invalid escape: '\\x' must be followed by 2 hexadecimal digits")),
        new("^Invalid Unicode scalar value \\[(?<value>[0-9A-F]+)\\]$", Origin.Lexer, static (s, m, at) => s.Escape(at, _ => $"invalid unicode escape: U+{m.Groups["value"].Value} is not a Unicode scalar value")),
        new("^Invalid control character U\\+(?<code>[0-9A-F]{4}) in comment$", Origin.Lexer, static (_, m, at) => (at, $"control character U+{m.Groups["code"].Value} is not allowed in a comment")),
        new("^Invalid \\\\r not followed by \\\\n$", Origin.LexerCharacter, static (s, _, at) => s.LoneCarriageReturn(at)),
        new("^Invalid UTF-16 surrogate sequence", Origin.LexerCharacter, static (s, _, at) => s.UnpairedSurrogate(at)),

        // ---- lexer: numbers, dates
        new("^Unexpected leading zero \\(`0`\\) for (integer|float) `(?<number>.*)`$", Origin.Lexer, static (_, m, at) => (at, $"leading zeros are not allowed in '{m.Groups["number"].Value}'")),
        new("^Multiple leading 0 are not allowed$", Origin.Lexer, static (s, _, at) => s.Number(at, static (token, start) => (start + (token[0] is '+' or '-' ? 1 : 0), $"leading zeros are not allowed in '{token}'"))),
        new("^An underscore `_` must follow a digit and not another `_`$", Origin.Lexer, static (s, _, at) => s.Number(at, (token, _) => (at, $"double underscore in number '{token}'"))),
        new("^Missing a digit after a trailing underscore `_`$", Origin.Lexer, static (s, _, at) => s.UnderscoreBefore(at)),
        new("^An underscore must be surrounded by at least one \\w+ digit on each side$", Origin.Lexer, static (s, _, at) => s.Number(at, Underscore)),
        new("^Invalid \\w+ integer\\. Expecting a .* after the last character$", Origin.Lexer, static (s, _, at) => s.Number(at, Underscore)),
        new("^Invalid (?<radix>\\w+) integer\\. Expecting at least one .* after (?<prefix>0[xob])$", Origin.Lexer, static (s, m, at) => s.PrefixWithoutDigits(at, m.Groups["radix"].Value, m.Groups["prefix"].Value)),
        new("^Invalid size of \\w+ integer\\.", Origin.Lexer, static (s, _, at) => s.Number(at, static (token, start) => (start, $"integer '{token}' does not fit in a 64-bit signed integer"))),
        new("^Unable to parse integer `(?<number>.*)`$", Origin.Lexer, static (_, m, at) => (at, $"integer '{m.Groups["number"].Value}' does not fit in a 64-bit signed integer")),
        new("^Invalid capital [XOB] for ", Origin.Lexer, static (s, _, at) => s.Number(at, (token, _) => (at, $"invalid character '{s.At(at)}' in number '{token}'"))),
        new("^Expecting at least one digit after the float dot \\.$", Origin.Lexer, static (s, _, at) => s.Number(at, (token, start) => s.Back(at, start, ".") is int dot ? (dot, $"expected a digit after the decimal point in '{token}'") : null)),
        new("^Expecting at least one digit after the exponent$", Origin.Lexer, static (s, _, at) => s.Number(at, (token, start) => s.Back(at, start, "eE") is int e ? (e, $"expected a digit in the exponent of '{token}'") : null)),
        new("^(Invalid prefix `.*` for the following offset/local date/time|Invalid format of date time/offset|Unable to parse the date time/offset) `", Origin.Lexer, static (_, _, at) => (at, DatesNotSupported)),

        // ---- parser: keys and tables
        new("^Unexpected token \\[(?<found>.*)\\] found$", Origin.Parser, static (s, _, at) => (at, s.KeyStart(at, inHeader: false, afterDot: false))),
        new("^Unexpected token `(?<found>.*)` for a base key$", Origin.Parser, static (s, _, at) => (at, s.KeyStart(at, s.HeaderAt(at) is not null, s.PreviousNonBlank(at) == '.'))),
        new("^Expecting `=` after a key instead of (?<found>.*)$", Origin.Parser, static (s, _, at) => s.ExpectedEquals(at)),
        new("^Unexpected token found `(?<found>.*)`( \\(token: `\\w+`\\))? while expecting `\\]` \\(token: `closebracket`\\)$", Origin.Parser, static (s, m, at) => s.UnclosedHeader(at, m.Groups["found"].Value)),
        new("^Unexpected token found `(?<found>.*)`( \\(token: `\\w+`\\))? while expecting `\\]\\]`", Origin.Parser, static (s, _, at) => s.FirstArrayOfTables(at)),
        new("^Unexpected token found `(?<found>.*)`( \\(token: `\\w+`\\))? while expecting token `newline`$", Origin.Parser, static (s, _, at) => s.AfterLine(at)),

        // ---- parser: values, arrays, inline tables
        new("^Unexpected token end-of-line found while expecting a value$", Origin.Parser, static (s, _, at) => s.InvalidValue(at)),
        new("^Unexpected token `(?<found>.*)` for a value$", Origin.ParserToken, static (s, _, at) => s.InvalidValue(at)),
        new("^Unsupported datetime token kind", Origin.Parser, static (_, _, at) => (at, DatesNotSupported)),
        new("^Missing a `,` \\(token: comma\\) to separate items in an array$", Origin.Parser, static (s, _, at) => s.ArrayNotClosed(at)),
        new("^Unexpected token `(?<found>.*)` \\(token: `(?<kind>\\w+)`\\)\\. Expecting a closing `\\]` for an array$", Origin.Parser, static (s, _, at) => s.ArrayNotClosed(at)),
        new("^Unexpected token `(?<kind>\\w+)` while parsing inline table\\. Expecting a bare key or string instead of `(?<found>.*)`$", Origin.Parser, static (s, _, at) => s.InlineTableNotClosed(at)),
    ];

    private readonly string _text;
    private readonly DocumentSyntax _document;
    private List<SyntaxNode>? _nodes;

    private TomlDiagnostics(string text, DocumentSyntax document)
    {
        _text = text;
        _document = document;
    }

    /// <summary>A key, or an array item (Key null), being defined at some offset, with the container it is in.</summary>
    private readonly record struct Slot(string Path, KeyValueSyntax? KeyValue, ValueSyntax? Value, SyntaxNode? Container);

    /// <summary>
    /// The error to report for a document Tomlyn found errors in, as a character offset and a reason: the
    /// first in the file of its first parser error and its earliest lexer error. The lexer's also wins when
    /// it lies in or right after the token the parser refused as a value (the parser's is then a
    /// consequence: "1." is no value because a digit is missing after the point).
    /// </summary>
    public static (int Offset, string Reason) Translate(string text, DocumentSyntax document)
    {
        var source = new TomlDiagnostics(text, document);
        (DiagnosticMessage Message, Rule? Rule, Match? Match, int Offset)? parser = null;
        (DiagnosticMessage Message, Rule? Rule, Match? Match, int Offset)? lexer = null;
        foreach (DiagnosticMessage message in document.Diagnostics)
        {
            if (message.Kind != DiagnosticMessageKind.Error)
            {
                continue;
            }

            (Rule? rule, Match? match) = Find(message.Message);
            int offset = source.OffsetOf(message, match);
            if (rule?.Origin is Origin.Lexer or Origin.LexerCharacter)
            {
                if (lexer is null || offset < lexer.Value.Offset)
                {
                    lexer = (message, rule, match, offset);
                }
            }
            else
            {
                // The parser reports in document order; after the end of the file its positions are 0.
                parser ??= (message, rule, match, offset);
            }
        }

        var chosen = lexer is { } l && (parser is not { } p
            || l.Offset < p.Offset
            || (l.Offset == p.Offset && l.Rule!.Origin != Origin.LexerCharacter)
            || (p.Rule?.Origin == Origin.ParserToken && l.Offset > p.Offset && l.Offset <= p.Offset + p.Message.Span.Length))
            ? lexer
            : parser;
        if (chosen is not { } error)
        {
            throw new InvalidOperationException("Translate needs a document with an error");
        }

        // broker.toml's own rules that the walk would have reported first: "[[" headers, and inline tables
        // over several lines or with a trailing comma (TOML 1.1 allows both, so Tomlyn carries on).
        if (source.FirstArrayOfTables(error.Offset) is { } arrays)
        {
            return arrays;
        }

        if (source.FirstInlineTableLayoutError(error.Offset) is { } layout)
        {
            return layout;
        }

        return (error.Rule is not null ? error.Rule.Translate(source, error.Match!, error.Offset) : null) ?? (error.Offset, error.Message.Message);
    }

    /// <summary>
    /// Tomlyn 2.11.1 throws instead of reporting when the file ends inside a \u or \U escape (it decodes the
    /// missing digits as code point -1); the escape is then the last thing in the text.
    /// </summary>
    public static (int Offset, string Reason) EscapeCutShort(string text)
    {
        int i = text.Length;
        while (i > 0 && char.IsAsciiHexDigit(text[i - 1]))
        {
            i--;
        }

        if (i >= 2 && text[i - 1] is 'u' or 'U' && text[i - 2] == '\\')
        {
            return (i - 2, $"invalid unicode escape: '\\{text[i - 1]}' must be followed by {(text[i - 1] == 'u' ? 4 : 8)} hexadecimal digits");
        }

        int backslash = text.LastIndexOf('\\');
        return backslash >= 0 && backslash == text.Length - 1
            ? (backslash, "unterminated string: expected an escape sequence after '\\'")
            : (text.Length, "unterminated string: the file ends inside an escape sequence");
    }

    private static (Rule? Rule, Match? Match) Find(string message)
    {
        foreach (Rule rule in Rules)
        {
            Match match = rule.Message.Match(message);
            if (match.Success)
            {
                return (rule, match);
            }
        }

        return (null, null);
    }

    // The end of the file is where Tomlyn's lexer puts it (the text's length); a token the parser asks for
    // past it gets position 0.
    private int OffsetOf(DiagnosticMessage message, Match? match) =>
        match is not null && (match.Groups["found"].Value == "<eof>" || match.Groups["kind"].Value.Equals("eof", StringComparison.OrdinalIgnoreCase))
            ? _text.Length
            : Math.Clamp(message.Span.Offset, 0, _text.Length);

    // ------------------------------------------------------------------ keys and tables

    private (int, string)? FirstArrayOfTables(int offset)
    {
        foreach (TableSyntaxBase table in _document.Tables)
        {
            if (table is TableArraySyntax && table.OpenBracket is { } open && open.Span.Offset <= offset)
            {
                return (open.Span.Offset, ArraysOfTablesNotSupported);
            }
        }

        return null;
    }

    private (int, string)? FirstInlineTableLayoutError(int offset)
    {
        (int Offset, string Reason)? first = null;
        foreach (SyntaxNode node in Nodes())
        {
            if (node is not InlineTableSyntax { OpenBrace: { } open } table || open.Span.Offset >= offset)
            {
                continue;
            }

            foreach (Slot slot in Slots(open.Span.Offset))
            {
                if (slot.Value == table && TomlSyntaxWalk.InlineTableLayoutError(_text, table, slot.Path, offset) is { } error && (first is null || error.Offset < first.Value.Offset))
                {
                    first = error;
                }
            }
        }

        return first;
    }

    private string KeyStart(int offset, bool inHeader, bool afterDot)
    {
        string what = inHeader ? "table name" : "key";
        int c = CharAt(offset);
        return afterDot ? $"expected a key after '.', found {Describe(offset)}"
            : c == '=' ? "missing key before '='"
            : c == ']' && inHeader ? "empty table name"
            : c is -1 or '\n' or '\r' ? $"expected a {what}, found {Describe(offset)}"
            : $"invalid character {Describe(offset)} at the start of a {what} {BareKeyHint}";
    }

    private (int, string)? ExpectedEquals(int offset)
    {
        if (KeyValueAt(offset)?.Key is not { } key)
        {
            return null;
        }

        BareKeyOrStringValueSyntax? last = LastPart(key);
        if (last is StringValueSyntax && IsMultiLineQuote(last.Span.Offset))
        {
            // Tomlyn reads """key""" as the key "" followed by the string "key".
            return (last.Span.Offset, "a multi-line string cannot be used as a key");
        }

        // A comment is trivia to Tomlyn, which reports the end of its line.
        int next = SkipBlanks(End(key));
        offset = CharAt(next) == '#' ? next : offset;
        return BareKeyCutShort(key, offset) ?? (offset, $"expected '=' after key '{FormatKey(key)}', found {Describe(offset)}");
    }

    // A character that cannot follow a bare key right after it ("a$b") is one the key may not contain.
    private (int, string)? BareKeyCutShort(KeySyntax key, int offset)
    {
        return LastPart(key) is BareKeySyntax bare && End(bare) == offset && CharAt(offset) is not (-1 or ' ' or '\t' or '.' or '=' or ']' or '#' or '\n' or '\r' or ',' or '}')
            ? (offset, $"invalid character {Describe(offset)} in bare key '{bare.Key?.Text}' {BareKeyHint}")
            : null;
    }

    private (int, string)? UnclosedHeader(int offset, string found)
    {
        if (found == "]]")
        {
            // Tomlyn reads "]]" as one token; the header was closed by the first.
            return (offset + 1, "unexpected ']' after table header; expected a newline or a comment");
        }

        return HeaderAt(offset) is { Name: { } name }
            ? BareKeyCutShort(name, offset) ?? (offset, $"expected ']' to close table header [{FormatKey(name)}], found {Describe(offset)}")
            : null;
    }

    /// <summary>The header whose name or closing bracket is at the offset.</summary>
    private TableSyntaxBase? HeaderAt(int offset)
    {
        TableSyntaxBase? header = null;
        foreach (TableSyntaxBase table in _document.Tables)
        {
            if (table.OpenBracket is { } open && open.Span.Offset <= offset)
            {
                header = table;
            }
        }

        // A bracket Tomlyn did not find is an invalid token, at the position of what it found instead.
        return header is { CloseBracket: { } close } && close is not InvalidSyntaxToken && close.Span.Offset < offset ? null : header;
    }

    // After a header or a key/value only a comment may follow on its line.
    private (int, string)? AfterLine(int offset)
    {
        if (TooManyQuotes(offset) is { } quotes)
        {
            return quotes;
        }

        foreach (TableSyntaxBase table in _document.Tables)
        {
            if (table.EndOfLineToken?.Span.Offset == offset)
            {
                return (offset, $"unexpected {Describe(offset)} after table header; expected a newline or a comment");
            }
        }

        if (NumberCutShort(offset) is { } number)
        {
            return number;
        }

        return (offset, $"unexpected {Describe(offset)} after value; expected a newline or a comment");
    }

    // A number Tomlyn stopped reading early ("12abc", "0b102", "+0x10") is one bad number to the reader,
    // and a word that starts like a boolean or inf ("true0b1", "inf.b") one bad value.
    private (int, string)? NumberCutShort(int offset)
    {
        if (!IsScalarChar(CharAt(offset)))
        {
            return null;
        }

        foreach (SyntaxNode node in Nodes())
        {
            if (node is not (IntegerValueSyntax or FloatValueSyntax or BooleanValueSyntax) || End(node) != offset)
            {
                continue;
            }

            int start = node.Span.Offset;
            string token = ScalarRun(start);
            int sign = token[0] is '+' or '-' ? 1 : 0;
            if (token.Length <= sign + 1 || !char.IsAsciiDigit(token[sign]))
            {
                foreach (Slot slot in Slots(start))
                {
                    if (slot.Value == node)
                    {
                        return (start, $"invalid value '{token}' for key '{slot.Path}'{ValueHint(token)}");
                    }
                }

                return null;
            }

            if (token[sign] == '0' && token[sign + 1] is 'x' or 'o' or 'b')
            {
                return sign == 1
                    ? (start, "a sign is not allowed on hexadecimal, octal or binary integers")
                    : (offset, $"invalid {RadixName(token[1])} digit '{_text[offset]}' in '{token}'");
            }

            return (offset, $"invalid character '{_text[offset]}' in number '{token}'");
        }

        return null;
    }

    // ------------------------------------------------------------------ values, arrays, inline tables

    private (int, string)? InvalidValue(int offset)
    {
        List<Slot> slots = Slots(offset);
        if (slots.Count == 0)
        {
            return null;
        }

        // The slot the value is missing from; an array item's array is the slot before it.
        Slot slot = slots[^1];
        int c = CharAt(offset);
        if (c == -1 && slot.Container is ArraySyntax array && slots.Count > 1)
        {
            return UnterminatedArray(array, slots[^2].Path);
        }

        if (c is -1 or '\n' or '\r' or '#')
        {
            // Reported where the value should start, before a comment.
            int at = slot.KeyValue?.EqualToken is { } equals ? SkipBlanks(End(equals)) : offset;
            return (at, $"missing value for key '{slot.Path}'");
        }

        if (c is ',' or ']' or '}')
        {
            return (offset, $"missing value for '{slot.Path}' before {Describe(offset)}");
        }

        string token = ScalarRun(offset);
        if (token.Length == 0)
        {
            return (offset, $"invalid value for '{slot.Path}': unexpected {Describe(offset)}");
        }

        return (offset, $"invalid value '{token}' for key '{slot.Path}'{ValueHint(token)}");
    }

    private static string ValueHint(string token) =>
        token.Equals("true", StringComparison.OrdinalIgnoreCase) || token.Equals("false", StringComparison.OrdinalIgnoreCase) ? " (booleans are lowercase: true or false)"
            : token[0] is '+' or '-' ? " (expected a digit after the sign)"
            : char.IsAsciiLetter(token[0]) ? " (strings must be quoted)"
            : "";

    private (int, string)? ArrayNotClosed(int offset)
    {
        (ArraySyntax? array, string path) = InnermostOpen<ArraySyntax>(offset, static array => array.CloseBracket);
        if (array is null)
        {
            return null;
        }

        if (CharAt(offset) == -1)
        {
            return UnterminatedArray(array, path);
        }

        return NumberCutShort(offset) ?? TooManyQuotes(offset) ?? (offset, $"expected ',' or ']' after an item of array '{path}', found {Describe(offset)}");
    }

    /// <summary>The innermost array or inline table opened before the offset and not closed before it, and its path.</summary>
    private (T? Container, string Path) InnermostOpen<T>(int offset, Func<T, SyntaxToken?> close)
        where T : ValueSyntax
    {
        (T? Container, string Path) innermost = (null, "");
        foreach (Slot slot in Slots(offset, opened: true))
        {
            if (slot.Value is T candidate && (close(candidate) is not { } closing || closing.Span.Offset >= offset))
            {
                innermost = (candidate, slot.Path);
            }
        }

        return innermost;
    }

    private static (int, string) UnterminatedArray(ArraySyntax array, string path) =>
        (array.Span.Offset, $"unterminated array for key '{path}': expected ']'");

    // TOML 1.0 keeps an inline table on one line (Tomlyn reads TOML 1.1, which does not), so a line break
    // inside one is where it went unterminated.
    private (int, string)? InlineTableNotClosed(int offset)
    {
        (InlineTableSyntax? table, string path) = InnermostOpen<InlineTableSyntax>(offset, static table => table.CloseBrace);

        if (table?.OpenBrace is not { } open)
        {
            return null;
        }

        int from = End(open);
        InlineTableItemSyntax? last = null;
        foreach (InlineTableItemSyntax item in table.Items)
        {
            last = item;
            from = Math.Max(from, item.Comma is { } comma ? End(comma) : item.KeyValue is { } keyValue ? End(keyValue) : from);
        }

        int newline = from < offset ? _text.AsSpan(from, offset - from).IndexOfAny('\n', '\r') : -1;
        if (newline >= 0 || CharAt(offset) == -1)
        {
            return (newline >= 0 ? from + newline : offset, $"unterminated inline table '{path}': expected '}}' before the end of the line");
        }

        return last is { Comma: null }
            ? NumberCutShort(offset) ?? TooManyQuotes(offset) ?? (offset, $"expected ',' or '}}' in inline table '{path}', found {Describe(offset)}")
            : (offset, KeyStart(offset, inHeader: false, afterDot: false));
    }

    // ------------------------------------------------------------------ strings and escapes

    private (int, string)? NewlineInString(int offset)
    {
        if (StringOpening(offset) is not int open)
        {
            return null;
        }

        return TooManyQuotes(open) ?? (_text[open] == '"'
            ? (offset, "newline in a basic string: close it on the same line or use a multi-line string (\"\"\")")
            : (offset, "newline in a literal string: close it on the same line or use a multi-line literal string (''')"));
    }

    // In a one-line string a lone carriage return is a line break like any other.
    private (int, string)? LoneCarriageReturn(int offset) =>
        StringOpening(offset, inside: true) is int open && !IsMultiLineQuote(open)
            ? NewlineInString(offset)
            : (offset, "a carriage return must be followed by a line feed");

    private (int, string)? UnterminatedString(int offset)
    {
        if (StringOpening(offset) is not int open)
        {
            return null;
        }

        bool basic = _text[open] == '"';
        string reason = IsMultiLineQuote(open)
            ? basic ? "unterminated multi-line string: expected a closing '\"\"\"'" : "unterminated multi-line literal string: expected a closing \"'''\""
            : basic ? "unterminated string: expected a closing '\"'" : "unterminated literal string: expected a closing \"'\"";
        return TooManyQuotes(open) ?? (open, reason);
    }

    // Tomlyn reports the string; the character is the first control character in it.
    private (int, string)? ControlCharacterInString(int offset)
    {
        for (int i = offset; i < _text.Length; i++)
        {
            char c = _text[i];
            if ((c < 0x20 && c is not ('\t' or '\n' or '\r')) || c == 0x7F)
            {
                return (i, $"control character U+{(int)c:X4} is not allowed in a string; use an escape sequence");
            }
        }

        return null;
    }

    // Tomlyn points at the character after the backslash, or at the first non-hexadecimal digit of \u / \U.
    private (int, string)? InvalidEscape(int offset)
    {
        int i = offset;
        while (i > 0 && offset - i < 8 && char.IsAsciiHexDigit(_text[i - 1]))
        {
            i--;
        }

        if (i >= 2 && _text[i - 1] is 'u' or 'U' && _text[i - 2] == '\\')
        {
            char letter = _text[i - 1];
            return (i - 2, $"invalid unicode escape: '\\{letter}' must be followed by {(letter == 'u' ? 4 : 8)} hexadecimal digits");
        }

        return Escape(offset, escaped => $"invalid escape sequence '\\{escaped}' {ValidEscapes}");
    }

    /// <summary>An error about the escape whose letter is at the offset, reported at its backslash.</summary>
    private (int, string)? Escape(int offset, Func<string, string> reason)
    {
        if (offset < 1 || offset >= _text.Length || _text[offset - 1] != '\\')
        {
            return null;
        }

        char c = _text[offset];
        return (offset - 1, reason(c < 0x20 || c == 0x7F || char.IsSurrogate(c) ? $"U+{(int)c:X4}" : c.ToString()));
    }

    private (int, string)? UnpairedSurrogate(int offset)
    {
        if (offset >= _text.Length)
        {
            return null;
        }

        int lineStart = _text.LastIndexOf('\n', Math.Max(0, offset - 1)) + 1;
        string where = StringOpening(offset) is not null ? " in a string"
            : _text.AsSpan(lineStart, offset - lineStart).Contains('#') ? " in a comment"
            : "";
        return (offset, $"invalid character U+{(int)_text[offset]:X4} (unpaired surrogate){where}");
    }

    /// <summary>The opening quote of the string token Tomlyn was reading at the offset (or had just ended, unless inside).</summary>
    private int? StringOpening(int offset, bool inside = false)
    {
        int? open = null;
        foreach (SyntaxNode node in Nodes())
        {
            int start = node.Span.Offset;
            if (node is SyntaxToken && start <= offset && (inside ? offset < End(node) : offset <= End(node)) && CharAt(start) is '"' or '\'' && (open is null || start > open))
            {
                open = start;
            }
        }

        return open;
    }

    // A multi-line string closes with three quotes and may end with two more; a sixth starts a new string.
    private (int, string)? TooManyQuotes(int offset)
    {
        int quote = CharAt(offset);
        if (quote is not ('"' or '\''))
        {
            return null;
        }

        foreach (SyntaxNode node in Nodes())
        {
            if (node is StringValueSyntax && End(node) == offset && IsMultiLineQuote(node.Span.Offset) && _text[node.Span.Offset] == quote)
            {
                return (offset, $"too many {(char)quote} characters at the end of a multi-line string");
            }
        }

        return null;
    }

    // ------------------------------------------------------------------ numbers

    /// <summary>A translation given the number literal around the offset and where it starts.</summary>
    private (int, string)? Number(int offset, Func<string, int, (int, string)?> reason)
    {
        int start = offset;
        while (start > 0 && IsScalarChar(_text[start - 1]))
        {
            start--;
        }

        string token = ScalarRun(start);
        return token.Length == 0 ? null : reason(token, start);
    }

    // Tomlyn points after the underscore: at the end of the number it trails, else at what follows it.
    private (int, string)? UnderscoreBefore(int offset) =>
        CharAt(offset - 1) != '_' ? null
            : Number(offset - 1, (token, _) => IsScalarChar(CharAt(offset))
                ? (offset - 1, $"underscore must be between digits in '{token}'")
                : (offset - 1, $"trailing underscore in number '{token}'"));

    // Tomlyn reports a misplaced underscore in a 0x / 0o / 0b integer at the literal's start: name the first.
    private static (int, string)? Underscore(string token, int start)
    {
        int digits = token[0] is '+' or '-' ? 3 : 2;
        for (int i = digits; i < token.Length; i++)
        {
            if (token[i] != '_')
            {
                continue;
            }

            return i == digits ? (start + i, $"underscore must be between digits in '{token}'")
                : i + 1 < token.Length && token[i + 1] == '_' ? (start + i + 1, $"double underscore in number '{token}'")
                : i + 1 == token.Length ? (start + i, $"trailing underscore in number '{token}'")
                : !char.IsAsciiHexDigit(token[i + 1]) ? (start + i, $"underscore must be between digits in '{token}'")
                : null;
        }

        return null;
    }

    private (int, string)? PrefixWithoutDigits(int offset, string radix, string prefix)
    {
        int digit = offset + prefix.Length;
        return IsScalarChar(CharAt(digit))
            ? Number(offset, (token, _) => (digit, $"invalid {radix} digit '{_text[digit]}' in '{token}'"))
            : (digit, $"expected digits after '{prefix}'");
    }

    /// <summary>The last of the characters in the number between its start and the offset.</summary>
    private int? Back(int offset, int start, string characters)
    {
        for (int i = Math.Min(offset, _text.Length) - 1; i >= start; i--)
        {
            if (characters.Contains(_text[i], StringComparison.Ordinal))
            {
                return i;
            }
        }

        return null;
    }

    private static string RadixName(char prefix) => prefix switch
    {
        'x' => "hexadecimal",
        'o' => "octal",
        _ => "binary",
    };

    // ------------------------------------------------------------------ the syntax tree

    /// <summary>
    /// The key/value and the array items and inline-table keys inside it that the offset falls in, outermost
    /// first, with their paths as the walk names them ("tbl.y[1].z").
    /// </summary>
    private List<Slot> Slots(int offset, bool opened = false)
    {
        var slots = new List<Slot>();
        KeyValueSyntax? found = null;
        string prefix = "";
        Consider(_document.KeyValues, "");
        foreach (TableSyntaxBase table in _document.Tables)
        {
            if (table.Name is { } name)
            {
                Consider(table.Items, FormatKey(name) + ".");
            }
        }

        if (found is null)
        {
            return slots;
        }

        string path = prefix + (found.Key is { } key ? FormatKey(key) : "");
        slots.Add(new Slot(path, found, found.Value, null));
        SyntaxNode? node = found.Value;
        while (true)
        {
            if (node is ArraySyntax array)
            {
                int index = -1;
                ArrayItemSyntax? item = null;
                for (int i = 0; i < array.Items.ChildrenCount; i++)
                {
                    if (array.Items.GetChild(i) is ArrayItemSyntax candidate && Before(candidate))
                    {
                        (index, item) = (i, candidate);
                    }
                }

                if (item is null)
                {
                    return slots;
                }

                path += "[" + index.ToString(CultureInfo.InvariantCulture) + "]";
                slots.Add(new Slot(path, null, item.Value, array));
                node = item.Value;
            }
            else if (node is InlineTableSyntax inline)
            {
                KeyValueSyntax? keyValue = null;
                foreach (InlineTableItemSyntax item in inline.Items)
                {
                    if (item.KeyValue is { } candidate && Before(candidate))
                    {
                        keyValue = candidate;
                    }
                }

                if (keyValue is null)
                {
                    return slots;
                }

                path += "." + (keyValue.Key is { } itemKey ? FormatKey(itemKey) : "");
                slots.Add(new Slot(path, keyValue, keyValue.Value, inline));
                node = keyValue.Value;
            }
            else
            {
                return slots;
            }
        }

        // An item Tomlyn opened at the offset was begun after the error there, in recovery; a container
        // the error is about was opened before it.
        bool Before(SyntaxNode item) => opened ? item.Span.Offset < offset : item.Span.Offset <= offset;

        void Consider(SyntaxList<KeyValueSyntax> keyValues, string tablePrefix)
        {
            foreach (KeyValueSyntax keyValue in keyValues)
            {
                if (keyValue.Span.Offset <= offset && (found is null || keyValue.Span.Offset >= found.Span.Offset))
                {
                    (found, prefix) = (keyValue, tablePrefix);
                }
            }
        }
    }

    /// <summary>The innermost key/value being defined at the offset.</summary>
    private KeyValueSyntax? KeyValueAt(int offset)
    {
        List<Slot> slots = Slots(offset);
        for (int i = slots.Count - 1; i >= 0; i--)
        {
            if (slots[i].KeyValue is { } keyValue)
            {
                return keyValue;
            }
        }

        return null;
    }

    private List<SyntaxNode> Nodes()
    {
        if (_nodes is null)
        {
            _nodes = [];
            Collect(_document, _nodes);
        }

        return _nodes;

        static void Collect(SyntaxNode node, List<SyntaxNode> into)
        {
            for (int i = 0; i < node.ChildrenCount; i++)
            {
                if (node.GetChild(i) is { } child)
                {
                    into.Add(child);
                    Collect(child, into);
                }
            }
        }
    }

    private static BareKeyOrStringValueSyntax? LastPart(KeySyntax key) =>
        key.DotKeys.ChildrenCount == 0 ? key.Key
            : key.DotKeys.GetChild(key.DotKeys.ChildrenCount - 1) is DottedKeyItemSyntax dotted ? dotted.Key
            : null;

    private static string FormatKey(KeySyntax key)
    {
        var sb = new StringBuilder();
        Append(key.Key);
        foreach (DottedKeyItemSyntax dotted in key.DotKeys)
        {
            sb.Append('.');
            Append(dotted.Key);
        }

        return sb.ToString();

        void Append(BareKeyOrStringValueSyntax? part)
        {
            switch (part)
            {
                case BareKeySyntax bare:
                    sb.Append(bare.Key?.Text);
                    break;
                case StringValueSyntax quoted:
                    TomlSyntaxWalk.AppendKeyName(sb, quoted.Value ?? "");
                    break;
            }
        }
    }

    // ------------------------------------------------------------------ the source text

    private static int End(SyntaxNodeBase node) => node.Span.Offset + node.Span.Length;

    private int CharAt(int offset) => offset >= 0 && offset < _text.Length ? _text[offset] : -1;

    private string At(int offset) => CharAt(offset) is int c and >= 0 ? ((char)c).ToString() : "";

    private int PreviousNonBlank(int offset)
    {
        int i = Math.Min(offset, _text.Length) - 1;
        while (i >= 0 && _text[i] is ' ' or '\t')
        {
            i--;
        }

        return CharAt(i);
    }

    private int SkipBlanks(int offset)
    {
        while (CharAt(offset) is ' ' or '\t')
        {
            offset++;
        }

        return offset;
    }

    private bool IsMultiLineQuote(int offset)
    {
        ReadOnlySpan<char> rest = _text.AsSpan(Math.Clamp(offset, 0, _text.Length));
        return rest.StartsWith("\"\"\"", StringComparison.Ordinal) || rest.StartsWith("'''", StringComparison.Ordinal);
    }

    // The characters a number, boolean, inf/nan or date is written with: what a reader takes as one word.
    private static bool IsScalarChar(int c) => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_' or '+' or '-' or '.' or ':';

    private string ScalarRun(int start)
    {
        int end = start;
        while (IsScalarChar(CharAt(end)))
        {
            end++;
        }

        return _text[start..end];
    }

    private string Describe(int offset) => CharAt(offset) switch
    {
        -1 => "end of file",
        '\n' or '\r' => "end of line",
        int c when c < 0x20 || c == 0x7F || char.IsSurrogate((char)c) => $"U+{c:X4}",
        '\'' => "\"'\"",
        int c => $"'{(char)c}'",
    };
}
