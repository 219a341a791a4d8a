namespace ChatBroker.Broker.Configuration.Toml;

public enum TomlValueKind
{
    String,
    Integer,
    Float,
    Boolean,
    Array,
    Table,
}

/// <summary>A parsed TOML value. <see cref="Position"/> is where its first character is.</summary>
public abstract class TomlValue
{
    private protected TomlValue(TomlValueKind kind, TomlPosition position)
    {
        Kind = kind;
        Position = position;
    }

    public TomlValueKind Kind { get; }

    // Settable only so that a table first created implicitly (by "[a.b]" creating "a") can take
    // the position of the "[a]" header that later defines it.
    public TomlPosition Position { get; internal set; }
}

public sealed class TomlString(string value, TomlPosition position) : TomlValue(TomlValueKind.String, position)
{
    public string Value { get; } = value;
}

public sealed class TomlInteger(long value, TomlPosition position) : TomlValue(TomlValueKind.Integer, position)
{
    public long Value { get; } = value;
}

public sealed class TomlFloat(double value, TomlPosition position) : TomlValue(TomlValueKind.Float, position)
{
    public double Value { get; } = value;
}

public sealed class TomlBoolean(bool value, TomlPosition position) : TomlValue(TomlValueKind.Boolean, position)
{
    public bool Value { get; } = value;
}

public sealed class TomlArray(IReadOnlyList<TomlValue> items, TomlPosition position) : TomlValue(TomlValueKind.Array, position)
{
    public IReadOnlyList<TomlValue> Items { get; } = items;
}
