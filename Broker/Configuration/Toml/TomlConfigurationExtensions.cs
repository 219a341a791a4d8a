using Microsoft.Extensions.Configuration;

namespace ChatBroker.Broker.Configuration.Toml;

public static class TomlConfigurationExtensions
{
    /// <summary>
    /// Adds a broker.toml file. Sources added later (environment variables, command-line flags) override it.
    /// </summary>
    public static IConfigurationBuilder AddTomlFile(this IConfigurationBuilder builder, string path, bool optional)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(path);
        return builder.Add(new TomlConfigurationSource { Path = path, Optional = optional });
    }
}
