using System.Diagnostics.CodeAnalysis;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>One key of a table: its spelling in the file, where the key is, and its value.</summary>
public readonly record struct TomlTableEntry(string Key, TomlPosition KeyPosition, TomlValue Value);

/// <summary>How a table came to exist; TOML 1.0 decides from this whether it may be extended later.</summary>
internal enum TomlTableOrigin
{
    Root,

    // Created as a parent of a header ("[a.b]" creates "a"); a later "[a]" may still define it.
    Implicit,

    // Defined by its own "[a.b]" header; cannot be defined again.
    Header,

    // Created by a dotted key ("a.b = 1" creates "a"); dotted keys in the same table may add to it.
    DottedKey,

    // "{ ... }": complete when closed, nothing may be added to it afterwards.
    Inline,
}

/// <summary>A TOML table: keys in file order, compared ordinally (TOML keys are case-sensitive).</summary>
public sealed class TomlTable : TomlValue
{
    private readonly List<TomlTableEntry> _entries = [];
    private readonly Dictionary<string, int> _indexByKey = new(StringComparer.Ordinal);

    internal TomlTable(TomlPosition position, TomlTableOrigin origin)
        : base(TomlValueKind.Table, position)
    {
        Origin = origin;
    }

    internal TomlTableOrigin Origin { get; set; }

    public int Count => _entries.Count;

    public IReadOnlyList<TomlTableEntry> Entries => _entries;

    public TomlValue this[string key] =>
        TryGetValue(key, out var value) ? value : throw new KeyNotFoundException($"TOML table has no key '{key}'.");

    public bool ContainsKey(string key) => _indexByKey.ContainsKey(key);

    public bool TryGetValue(string key, [MaybeNullWhen(false)] out TomlValue value)
    {
        if (_indexByKey.TryGetValue(key, out int index))
        {
            value = _entries[index].Value;
            return true;
        }

        value = null;
        return false;
    }

    public bool TryGetEntry(string key, out TomlTableEntry entry)
    {
        if (_indexByKey.TryGetValue(key, out int index))
        {
            entry = _entries[index];
            return true;
        }

        entry = default;
        return false;
    }

    internal void Add(string key, TomlPosition keyPosition, TomlValue value)
    {
        _indexByKey.Add(key, _entries.Count);
        _entries.Add(new TomlTableEntry(key, keyPosition, value));
    }

    internal void MoveKey(string key, TomlPosition keyPosition)
    {
        int index = _indexByKey[key];
        _entries[index] = _entries[index] with { KeyPosition = keyPosition };
    }
}
