using System.Buffers;
using System.Globalization;
using System.Text.Unicode;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>A parsed broker.toml, and its flattened form for Microsoft.Extensions.Configuration.</summary>
public sealed class TomlDocument
{
    private TomlDocument(TomlTable root)
    {
        Root = root;
    }

    public TomlTable Root { get; }

    /// <summary>Parses TOML text; every error is a <see cref="TomlParseException"/> naming <paramref name="fileName"/>.</summary>
    public static TomlDocument Parse(string text, string fileName)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(fileName);
        return new TomlDocument(TomlSyntaxWalk.Parse(text, fileName));
    }

    /// <summary>Reads and parses a UTF-8 file. Invalid UTF-8 is a parse error at the offending byte.</summary>
    public static TomlDocument Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return Parse(DecodeUtf8(File.ReadAllBytes(path), path), path);
    }

    /// <summary>
    /// Scalars keyed by configuration path ("section:sub:key", array items as "key:0"), keys spelled as in
    /// the file and compared case-insensitively. Throws <see cref="TomlParseException"/> for keys that the
    /// configuration system cannot represent: two keys of a table that differ only by case, a key
    /// containing ':', and an empty key.
    /// </summary>
    public IReadOnlyDictionary<string, TomlLeaf> Flatten()
    {
        var leaves = new Dictionary<string, TomlLeaf>(StringComparer.OrdinalIgnoreCase);
        FlattenTable(Root, prefix: null, leaves, emptyContainers: null);
        return leaves;
    }

    /// <summary>
    /// Configuration paths of empty arrays and empty tables (which yield no leaf), with their key positions,
    /// so that a binder can tell "present but empty" from "absent".
    /// </summary>
    public IReadOnlyDictionary<string, TomlPosition> EmptyContainers()
    {
        var leaves = new Dictionary<string, TomlLeaf>(StringComparer.OrdinalIgnoreCase);
        var empty = new Dictionary<string, TomlPosition>(StringComparer.OrdinalIgnoreCase);
        FlattenTable(Root, prefix: null, leaves, empty);
        return empty;
    }

    /// <summary>The configuration string for a scalar: invariant culture, floats round-trippable.</summary>
    public static string FormatScalar(TomlValue value) => value switch
    {
        TomlString s => s.Value,
        TomlInteger i => i.Value.ToString(CultureInfo.InvariantCulture),
        TomlFloat f => f.Value.ToString("R", CultureInfo.InvariantCulture),
        TomlBoolean b => b.Value ? "true" : "false",
        _ => throw new ArgumentException($"a {value.Kind} is not a scalar", nameof(value)),
    };

    private static void FlattenTable(TomlTable table, string? prefix, Dictionary<string, TomlLeaf> leaves, Dictionary<string, TomlPosition>? emptyContainers)
    {
        // TOML keys are case-sensitive but configuration keys are not: "Port" and "port" in one table
        // would silently overwrite each other, so they are an error.
        var seen = new Dictionary<string, TomlPosition>(StringComparer.OrdinalIgnoreCase);
        foreach (TomlTableEntry entry in table.Entries)
        {
            if (entry.Key.Length == 0)
            {
                throw new TomlParseException(entry.KeyPosition, "an empty key cannot be used in broker.toml");
            }

            if (entry.Key.Contains(':', StringComparison.Ordinal))
            {
                throw new TomlParseException(entry.KeyPosition, $"key '{entry.Key}' contains ':', which configuration uses as a path separator");
            }

            if (!seen.TryAdd(entry.Key, entry.KeyPosition))
            {
                string other = FindKeyIgnoringCase(table, entry.Key);
                TomlPosition first = seen[entry.Key];
                throw new TomlParseException(entry.KeyPosition, $"key '{entry.Key}' differs from '{other}' (at {first.Line}:{first.Column}) only by case; configuration keys are case-insensitive");
            }

            string path = prefix is null ? entry.Key : prefix + ":" + entry.Key;
            FlattenValue(entry.Value, path, entry.KeyPosition, leaves, emptyContainers);
        }
    }

    private static void FlattenValue(TomlValue value, string path, TomlPosition keyPosition, Dictionary<string, TomlLeaf> leaves, Dictionary<string, TomlPosition>? emptyContainers)
    {
        switch (value)
        {
            case TomlTable table:
                if (table.Count == 0)
                {
                    emptyContainers?.TryAdd(path, keyPosition);
                }

                FlattenTable(table, path, leaves, emptyContainers);
                break;
            case TomlArray array:
                if (array.Items.Count == 0)
                {
                    emptyContainers?.TryAdd(path, keyPosition);
                }

                for (int i = 0; i < array.Items.Count; i++)
                {
                    FlattenValue(array.Items[i], path + ":" + i.ToString(CultureInfo.InvariantCulture), keyPosition, leaves, emptyContainers);
                }

                break;
            default:
                leaves.Add(path, new TomlLeaf(FormatScalar(value), value.Kind, keyPosition, value.Position));
                break;
        }
    }

    private static string FindKeyIgnoringCase(TomlTable table, string key)
    {
        foreach (TomlTableEntry entry in table.Entries)
        {
            if (string.Equals(entry.Key, key, StringComparison.OrdinalIgnoreCase))
            {
                return entry.Key;
            }
        }

        return key;
    }

    // TOML 1.0: "A TOML file must be a valid UTF-8 encoded Unicode document." Decoding is strict so a
    // stray Latin-1 byte is reported where it is instead of becoming U+FFFD in a value.
    private static string DecodeUtf8(byte[] bytes, string path)
    {
        ReadOnlySpan<byte> span = bytes;
        if (span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]))
        {
            span = span[3..];
        }

        char[] chars = new char[span.Length];
        OperationStatus status = Utf8.ToUtf16(span, chars, out int bytesRead, out int charsWritten, replaceInvalidSequences: false);
        if (status == OperationStatus.Done)
        {
            return new string(chars, 0, charsWritten);
        }

        int line = 1;
        int column = 1;
        for (int i = 0; i < charsWritten; i++)
        {
            if (chars[i] == '\n')
            {
                line++;
                column = 1;
            }
            else if (!char.IsLowSurrogate(chars[i]))
            {
                column++;
            }
        }

        string reason = bytesRead < span.Length
            ? $"invalid UTF-8 byte 0x{span[bytesRead]:X2}; broker.toml must be UTF-8"
            : "truncated UTF-8 sequence at the end of the file";
        throw new TomlParseException(new TomlPosition(path, line, column), reason);
    }
}
