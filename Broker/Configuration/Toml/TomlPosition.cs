namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>A 1-based line and column in a TOML file. Columns count Unicode code points; a tab is one column.</summary>
public readonly record struct TomlPosition(string File, int Line, int Column)
{
    public override string ToString() => $"{File}:{Line}:{Column}";
}
