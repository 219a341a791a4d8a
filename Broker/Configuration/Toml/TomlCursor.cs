namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>
/// A forward-only position in the text that keeps the 1-based line and column of the next character.
/// A column is a Unicode code point: the low half of a surrogate pair does not advance it.
/// </summary>
internal sealed class TomlCursor
{
    public const int End = -1;

    private readonly string _text;
    private readonly string _file;
    private int _offset;
    private int _line = 1;
    private int _column = 1;

    public TomlCursor(string text, string file)
    {
        _text = text;
        _file = file;

        // A UTF-8 byte order mark is not content; it does not occupy column 1.
        if (text.Length > 0 && text[0] == '\uFEFF')
        {
            _offset = 1;
        }
    }

    public bool AtEnd => _offset >= _text.Length;

    public TomlPosition Position => new(_file, _line, _column);

    /// <summary>The character <paramref name="ahead"/> places on, or <see cref="End"/>.</summary>
    public int Peek(int ahead = 0)
    {
        int index = _offset + ahead;
        return index < _text.Length ? _text[index] : End;
    }

    public bool LookingAt(string expected) =>
        string.CompareOrdinal(_text, _offset, expected, 0, expected.Length) == 0;

    public void Advance()
    {
        char c = _text[_offset];
        _offset++;
        if (c == '\n')
        {
            _line++;
            _column = 1;
        }
        else if (!char.IsLowSurrogate(c) || _offset < 2 || !char.IsHighSurrogate(_text[_offset - 2]))
        {
            _column++;
        }
    }

    public void Advance(int count)
    {
        for (int i = 0; i < count; i++)
        {
            Advance();
        }
    }

    /// <summary>Consumes a run of characters that satisfy <paramref name="accept"/> (all on this line).</summary>
    public string ReadWhile(Func<char, bool> accept)
    {
        int start = _offset;
        while (!AtEnd && accept(_text[_offset]))
        {
            Advance();
        }

        return _text[start.._offset];
    }
}
