namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>
/// One scalar of a flattened document. <see cref="Value"/> is the configuration string (invariant culture);
/// <see cref="Kind"/> lets a binder reject a wrong type with the key's position. For an array item the key
/// position is that of the array's key.
/// </summary>
public readonly record struct TomlLeaf(string Value, TomlValueKind Kind, TomlPosition KeyPosition, TomlPosition ValuePosition);
