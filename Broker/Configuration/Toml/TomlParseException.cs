namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>A malformed broker.toml. <see cref="Exception.Message"/> is "file:line:col: reason".</summary>
public sealed class TomlParseException : Exception
{
    public TomlParseException(TomlPosition position, string reason)
        : base($"{position}: {reason}")
    {
        Position = position;
        Reason = reason;
    }

    public TomlPosition Position { get; }

    public string Reason { get; }
}
