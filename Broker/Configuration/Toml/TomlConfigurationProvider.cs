using Microsoft.Extensions.Configuration;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>
/// Loads broker.toml into configuration keys ("section:key"). Parse errors propagate as
/// <see cref="TomlParseException"/>; <see cref="Leaves"/> keeps each key's kind and position so that
/// binding can report an unknown key or a wrong type as "file:line:col".
/// </summary>
public sealed class TomlConfigurationProvider : ConfigurationProvider
{
    private static readonly IReadOnlyDictionary<string, TomlLeaf> NoLeaves =
        new Dictionary<string, TomlLeaf>(StringComparer.OrdinalIgnoreCase);

    private static readonly IReadOnlyDictionary<string, TomlPosition> NoContainers =
        new Dictionary<string, TomlPosition>(StringComparer.OrdinalIgnoreCase);

    public TomlConfigurationProvider(TomlConfigurationSource source)
    {
        ArgumentNullException.ThrowIfNull(source);
        Path = source.Path;
        Optional = source.Optional;
    }

    public string Path { get; }

    public bool Optional { get; }

    /// <summary>The same keys as the provider's data, case-insensitive, with kind and positions.</summary>
    public IReadOnlyDictionary<string, TomlLeaf> Leaves { get; private set; } = NoLeaves;

    /// <summary>Paths of empty tables and arrays, which have no key in the data.</summary>
    public IReadOnlyDictionary<string, TomlPosition> EmptyContainers { get; private set; } = NoContainers;

    public override void Load()
    {
        if (!File.Exists(Path))
        {
            if (!Optional)
            {
                throw new FileNotFoundException($"The configuration file '{Path}' was not found and is not optional.", Path);
            }

            Leaves = NoLeaves;
            EmptyContainers = NoContainers;
            Data = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
            return;
        }

        TomlDocument document = TomlDocument.Load(Path);
        IReadOnlyDictionary<string, TomlLeaf> leaves = document.Flatten();
        var data = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (KeyValuePair<string, TomlLeaf> leaf in leaves)
        {
            data.Add(leaf.Key, leaf.Value.Value);
        }

        Leaves = leaves;
        EmptyContainers = document.EmptyContainers();
        Data = data;
    }

    public override string ToString() => $"{GetType().Name} for '{Path}' ({(Optional ? "Optional" : "Required")})";
}
