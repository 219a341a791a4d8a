using Microsoft.Extensions.Configuration;

namespace ChatBroker.Broker.Configuration.Toml;

/// <summary>A broker.toml file as a configuration source.</summary>
public sealed class TomlConfigurationSource : IConfigurationSource
{
    public required string Path { get; init; }

    /// <summary>When true a missing file contributes no keys; when false it is a <see cref="FileNotFoundException"/>.</summary>
    public bool Optional { get; init; }

    public IConfigurationProvider Build(IConfigurationBuilder builder) => new TomlConfigurationProvider(this);
}
