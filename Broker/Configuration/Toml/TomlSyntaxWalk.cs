using System.Globalization;
using System.Text;
using Tomlyn;
using Tomlyn.Parsing;
using Tomlyn.Syntax;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>
/// Builds a <see cref="TomlTable"/> from Tomlyn's syntax tree. Tomlyn does the lexing and grammar (its
/// syntax errors are worded as broker.toml's by <see cref="TomlDiagnostics"/>); this walk adds what broker.toml
/// needs on top: TOML 1.0's rules for defining keys and tables (duplicates, redefinitions, extending
/// inline tables), int64/float range, and the constructs we reject on purpose (arrays of tables,
/// dates and times, inline tables over several lines or with a trailing comma). Not Tomlyn's
/// serializer: it accepts duplicate keys and unknown members silently.
/// </summary>
internal sealed class TomlSyntaxWalk
{
    private const int MaxNesting = 64;

    private static readonly TomlSerializerOptions ParserOptions = new() { MaxDepth = MaxNesting };

    private readonly string _text;
    private readonly string _file;
    private readonly List<int> _lineStarts = [0];
    private readonly TomlTable _root;

    private TomlSyntaxWalk(string text, string file)
    {
        _text = text;
        _file = file;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] == '\n')
            {
                _lineStarts.Add(i + 1);
            }
        }

        _root = new TomlTable(Position(0), TomlTableOrigin.Root);
    }

    private readonly record struct KeySegment(string Name, TomlPosition Position);

    public static TomlTable Parse(string text, string fileName)
    {
        // A byte order mark is not content and does not occupy column 1.
        if (text.Length > 0 && text[0] == '\uFEFF')
        {
            text = text[1..];
        }

        var walk = new TomlSyntaxWalk(text, fileName);
        DocumentSyntax document;
        try
        {
            document = SyntaxParser.Parse(text, ParserOptions, fileName, validate: false);
        }
        catch (ArgumentOutOfRangeException)
        {
            // Tomlyn 2.11.1 decodes a \u or \U escape cut short by the end of the file as code point -1.
            (int offset, string reason) = TomlDiagnostics.EscapeCutShort(text);
            throw new TomlParseException(walk.Position(offset), reason);
        }
        catch (TomlException ex) when (ex.Span is null)
        {
            // Tomlyn stops at MaxDepth without saying where; the first bracket past it is.
            throw new TomlParseException(walk.Position(walk.FirstTooDeep()), $"arrays and inline tables are nested more than {MaxNesting} deep");
        }

        if (document.HasErrors)
        {
            (int offset, string reason) = TomlDiagnostics.Translate(text, document);
            throw new TomlParseException(walk.Position(offset), reason);
        }

        return walk.Walk(document);
    }

    private TomlTable Walk(DocumentSyntax document)
    {
        foreach (KeyValueSyntax keyValue in document.KeyValues)
        {
            AddKeyValue(_root, "", keyValue);
        }

        foreach (TableSyntaxBase header in document.Tables)
        {
            TomlPosition open = Position(header.OpenBracket!.Span.Offset);
            if (header is TableArraySyntax)
            {
                throw new TomlParseException(open, TomlDiagnostics.ArraysOfTablesNotSupported);
            }

            (TomlTable table, string path) = DefineTable(Segments(header.Name!), open);
            foreach (KeyValueSyntax keyValue in header.Items)
            {
                AddKeyValue(table, path, keyValue);
            }
        }

        return _root;
    }

    // std-table = "[" key "]". Each header defines its table once (TOML 1.0 "Table": "you cannot define a
    // table more than once"); parent tables it names are created implicitly and may be defined by their
    // own header later.
    private (TomlTable Table, string Path) DefineTable(List<KeySegment> key, TomlPosition open)
    {
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

    // keyval = key "=" val. A dotted key creates a table for each part before the last (TOML 1.0 "Keys");
    // those tables can be extended only by more dotted keys in the same table.
    private void AddKeyValue(TomlTable table, string tablePath, KeyValueSyntax keyValue)
    {
        List<KeySegment> key = Segments(keyValue.Key!);
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

        target.Add(last.Name, last.Position, Value(keyValue.Value!, fullKey));
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

    private List<KeySegment> Segments(KeySyntax key)
    {
        var segments = new List<KeySegment> { Segment(key.Key!) };
        foreach (DottedKeyItemSyntax dotted in key.DotKeys)
        {
            segments.Add(Segment(dotted.Key!));
        }

        return segments;
    }

    private KeySegment Segment(BareKeyOrStringValueSyntax key) => key switch
    {
        BareKeySyntax bare => new(bare.Key!.Text!, Position(key.Span.Offset)),
        StringValueSyntax quoted => new(quoted.Value!, Position(key.Span.Offset)),
        _ => throw Error(Position(key.Span.Offset), $"unexpected key syntax {key.Kind}"),
    };

    private TomlValue Value(ValueSyntax value, string key)
    {
        TomlPosition start = Position(value.Span.Offset);
        switch (value)
        {
            case StringValueSyntax s:
                return new TomlString(NormalizeNewlines(s), start);
            case BooleanValueSyntax b:
                return new TomlBoolean(b.Value, start);
            case IntegerValueSyntax i:
                return new TomlInteger(Integer(i, start), start);
            case FloatValueSyntax f:
                // Tomlyn turns a literal beyond double's range into infinity; only inf itself may be one.
                string literal = f.Token!.Text!;
                if (double.IsInfinity(f.Value) && !literal.EndsWith("inf", StringComparison.Ordinal))
                {
                    throw Error(start, $"float '{literal}' is out of range for a 64-bit float");
                }

                return new TomlFloat(f.Value, start);
            case DateTimeValueSyntax:
                throw Error(start, "dates and times are not supported in broker.toml");
            case ArraySyntax array:
                var items = new List<TomlValue>(array.Items.ChildrenCount);
                foreach (ArrayItemSyntax item in array.Items)
                {
                    items.Add(Value(item.Value!, key + "[" + items.Count.ToString(CultureInfo.InvariantCulture) + "]"));
                }

                return new TomlArray(items, start);
            case InlineTableSyntax inline:
                return InlineTable(inline, key, start);
            default:
                throw Error(start, $"unsupported value for key '{key}'");
        }
    }

    // A multi-line string's line breaks are "\n" whatever the file uses (Tomlyn keeps a CRLF as it is); a
    // "\r" written as an escape stays.
    private static string NormalizeNewlines(StringValueSyntax value)
    {
        string text = value.Value!;
        string literal = value.Token!.Text!;
        return literal.Contains("\r\n", StringComparison.Ordinal) && !literal.Contains("\\r", StringComparison.Ordinal)
            ? text.Replace("\r\n", "\n", StringComparison.Ordinal)
            : text;
    }

    // Tomlyn reads hexadecimal, octal and binary literals as 64 unsigned bits; TOML allows int64 only.
    private static long Integer(IntegerValueSyntax value, TomlPosition start)
    {
        string literal = value.Token!.Text!;
        int radix = literal.StartsWith("0x", StringComparison.Ordinal) ? 16
            : literal.StartsWith("0o", StringComparison.Ordinal) ? 8
            : literal.StartsWith("0b", StringComparison.Ordinal) ? 2
            : 10;
        if (radix == 10)
        {
            return value.Value;
        }

        try
        {
            ulong bits = Convert.ToUInt64(literal[2..].Replace("_", "", StringComparison.Ordinal), radix);
            return bits <= long.MaxValue ? (long)bits : throw new OverflowException();
        }
        catch (OverflowException)
        {
            throw Error(start, $"integer '{literal}' does not fit in a 64-bit signed integer");
        }
    }

    // inline-table = "{" [ keyval *( "," keyval ) ] "}" on one line (TOML 1.0; Tomlyn reads TOML 1.1,
    // which also allows newlines and a trailing comma). Complete when closed: headers and dotted keys
    // cannot add to it.
    private TomlTable InlineTable(InlineTableSyntax inline, string key, TomlPosition start)
    {
        var table = new TomlTable(start, TomlTableOrigin.Inline);
        (int Offset, string Reason)? layout = InlineTableLayoutError(_text, inline, key, _text.Length);
        foreach (InlineTableItemSyntax item in inline.Items)
        {
            // In file order: a key defined twice before the line break is reported first.
            KeyValueSyntax keyValue = item.KeyValue!;
            if (layout is { } broken && broken.Offset < keyValue.Value!.Span.Offset)
            {
                throw Error(Position(broken.Offset), broken.Reason);
            }

            AddKeyValue(table, key, keyValue);
        }

        if (layout is { } error)
        {
            throw Error(Position(error.Offset), error.Reason);
        }

        Seal(table);
        return table;
    }

    /// <summary>
    /// Where an inline table breaks TOML 1.0's layout, looking only before <paramref name="limit"/>: a line
    /// break between its parts (not inside a value, where arrays may span lines), or a trailing comma. The
    /// walk asks it about complete tables, <see cref="TomlDiagnostics"/> about those before a syntax error
    /// (where parts may be missing).
    /// </summary>
    internal static (int Offset, string Reason)? InlineTableLayoutError(string text, InlineTableSyntax inline, string key, int limit)
    {
        if (inline.OpenBrace is not { } open)
        {
            return null;
        }

        string unterminated = $"unterminated inline table '{key}': expected '}}' before the end of the line";
        int from = End(open);
        SyntaxNode? trailing = null;
        foreach (InlineTableItemSyntax item in inline.Items)
        {
            foreach (SyntaxNode? part in (SyntaxNode?[])[item.KeyValue?.Key, item.KeyValue?.Value, item.Comma])
            {
                if (part is null)
                {
                    continue;
                }

                if (Newline(part.Span.Offset) is int newline)
                {
                    return (newline, unterminated);
                }

                from = End(part);
            }

            trailing = item.Comma;
        }

        int close = inline.CloseBrace?.Span.Offset ?? limit;
        if (Newline(close) is int beforeClose)
        {
            return (beforeClose, unterminated);
        }

        return trailing is not null && inline.CloseBrace is not null && trailing.Span.Offset < limit
            ? (trailing.Span.Offset, $"trailing comma is not allowed in inline table '{key}'")
            : null;

        int? Newline(int to)
        {
            to = Math.Min(Math.Min(to, limit), text.Length);
            int at = from < to ? text.AsSpan(from, to - from).IndexOfAny('\n', '\r') : -1;
            return at >= 0 ? from + at : null;
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

    private static int End(SyntaxNodeBase node) => node.Span.Offset + node.Span.Length;

    /// <summary>The offset of the first '[' or '{' nested deeper than <see cref="MaxNesting"/>, from Tomlyn's
    /// tokens (its lexer alone, so "[[" is one token and every bracket counts; headers never nest).</summary>
    private int FirstTooDeep()
    {
        int depth = 0;
        TomlLexer lexer = TomlLexer.Create(_text, _file);
        while (lexer.MoveNext())
        {
            TomlToken token = lexer.Current;
            int opened = token.Kind switch
            {
                TokenKind.OpenBracket or TokenKind.OpenBrace => 1,
                TokenKind.OpenBracketDouble => 2,
                TokenKind.CloseBracket or TokenKind.CloseBrace => -1,
                TokenKind.CloseBracketDouble => -2,
                _ => 0,
            };
            for (int i = 0; i < opened; i++)
            {
                if (++depth > MaxNesting)
                {
                    return token.Start.Offset + i;
                }
            }

            depth = Math.Max(0, depth + Math.Min(opened, 0));
        }

        return _text.Length;
    }

    /// <summary>1-based line and column of a character offset; columns count code points.</summary>
    private TomlPosition Position(int offset)
    {
        offset = Math.Clamp(offset, 0, _text.Length);
        int line = _lineStarts.BinarySearch(offset);
        line = line >= 0 ? line : ~line - 1;
        int column = 1;
        for (int i = _lineStarts[line]; i < offset; i++)
        {
            if (!char.IsLowSurrogate(_text[i]) || i == 0 || !char.IsHighSurrogate(_text[i - 1]))
            {
                column++;
            }
        }

        return new TomlPosition(_file, line + 1, column);
    }

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

            AppendKeyName(sb, key[i].Name);
        }

        return sb.ToString();
    }

    /// <summary>A key part as written in messages: bare when it can be, quoted otherwise.</summary>
    internal static void AppendKeyName(StringBuilder sb, string name)
    {
        bool bare = name.Length > 0;
        foreach (char c in name)
        {
            bare &= char.IsAsciiLetterOrDigit(c) || c is '_' or '-';
        }

        sb.Append(bare ? name : $"\"{name}\"");
    }

    private static TomlParseException Error(TomlPosition position, string reason) => new(position, reason);
}
