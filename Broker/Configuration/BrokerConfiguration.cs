using System.Collections;
using ChatBroker.Broker.Configuration.Toml;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Memory;

namespace ChatBroker.Broker.Configuration;

/// <summary>
/// Builds the broker's configuration in the usual .NET order — broker.toml, then environment variables
/// (<c>CHATBROKER__SECTION__KEY</c>), then command-line overrides (<c>--set section.key=value</c>), later
/// sources winning — and binds it strictly to <see cref="BrokerOptions"/>: an unknown key, a value of the
/// wrong type or out of range is an error that names the key and where it came from (file:line:col for
/// broker.toml). All errors are collected, so an operator fixes a file in one pass.
/// </summary>
public sealed class BrokerConfiguration
{
    public const string EnvironmentPrefix = "CHATBROKER__";
    public const string DefaultFileName = "broker.toml";

    private readonly Dictionary<string, string> _origins;

    private BrokerConfiguration(BrokerOptions options, string? file, Dictionary<string, string> origins)
    {
        Options = options;
        File = file;
        _origins = origins;
    }

    public BrokerOptions Options { get; }

    /// <summary>The configuration file that was read, or null when none was (embedded defaults).</summary>
    public string? File { get; }

    /// <summary>Where a setting's effective value came from: "default", "broker.toml:12:11", "environment variable …", "--set".</summary>
    public string OriginOf(Setting setting) => _origins.GetValueOrDefault(setting.ConfigKey, "default");

    /// <summary>
    /// Loads configuration. <paramref name="configPath"/> null means "./broker.toml if it exists"; a path that
    /// was asked for must exist. <paramref name="environment"/> defaults to the process environment.
    /// </summary>
    /// <exception cref="BrokerConfigurationException">Every problem found, each naming key and location.</exception>
    public static BrokerConfiguration Load(
        string? configPath,
        IReadOnlyList<string>? overrides = null,
        IDictionary? environment = null)
    {
        var errors = new List<string>();
        var file = configPath ?? (System.IO.File.Exists(DefaultFileName) ? DefaultFileName : null);
        if (configPath is not null && !System.IO.File.Exists(configPath))
        {
            throw new BrokerConfigurationException([$"{configPath}: configuration file not found"]);
        }

        var builder = new ConfigurationBuilder();
        if (file is not null)
        {
            builder.AddTomlFile(file, optional: false);
        }

        var envValues = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        var envNames = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (DictionaryEntry entry in environment ?? Environment.GetEnvironmentVariables())
        {
            if (entry.Key is string name && name.StartsWith(EnvironmentPrefix, StringComparison.OrdinalIgnoreCase))
            {
                var key = name[EnvironmentPrefix.Length..].Replace("__", ":", StringComparison.Ordinal).ToLowerInvariant();
                envValues[key] = entry.Value as string ?? "";
                envNames[key] = name;
            }
        }

        builder.Add(new MemoryConfigurationSource { InitialData = envValues });

        var overrideValues = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var item in overrides ?? [])
        {
            var eq = item.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                errors.Add($"--set {item}: expected key=value, e.g. --set tcp.listen=127.0.0.1:7883");
                continue;
            }

            overrideValues[item[..eq].Trim().Replace('.', ':')] = item[(eq + 1)..];
        }

        builder.Add(new MemoryConfigurationSource { InitialData = overrideValues });

        IConfigurationRoot root;
        try
        {
            root = builder.Build();
        }
        catch (TomlParseException e)
        {
            throw new BrokerConfigurationException([e.Message]);
        }
        catch (IOException e)
        {
            throw new BrokerConfigurationException([$"{file}: cannot read configuration file: {e.Message}"]);
        }

        var providers = root.Providers.ToList();
        var toml = providers.OfType<TomlConfigurationProvider>().FirstOrDefault();
        var envProvider = providers[^2];
        string Describe(IConfigurationProvider provider, string key, bool valuePosition)
        {
            if (provider is TomlConfigurationProvider t && t.Leaves.TryGetValue(key, out var leaf))
            {
                return (valuePosition ? leaf.ValuePosition : leaf.KeyPosition).ToString();
            }

            if (provider == envProvider && envNames.TryGetValue(key, out var envName))
            {
                return $"environment variable {envName}";
            }

            return $"--set {key.Replace(':', '.')}";
        }

        // 1. Unknown keys, from every source.
        foreach (var provider in providers)
        {
            foreach (var key in LeafKeys(provider))
            {
                if (SettingsSchema.Find(key) is null)
                {
                    errors.Add($"{Describe(provider, key, valuePosition: false)}: {UnknownKeyMessage(key)}");
                }
            }
        }

        // 2. Bind each setting from the last source that has it, checking type and range.
        var options = new BrokerOptions();
        var origins = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var setting in SettingsSchema.All)
        {
            IConfigurationProvider? source = null;
            string? value = null;
            foreach (var provider in providers)
            {
                if (provider.TryGet(setting.ConfigKey, out var v))
                {
                    source = provider;
                    value = v;
                }
            }

            if (source is null || value is null)
            {
                continue;
            }

            var where = Describe(source, setting.ConfigKey, valuePosition: true);
            origins[setting.ConfigKey] = where;
            if (source == toml && toml.Leaves.TryGetValue(setting.ConfigKey, out var tomlLeaf))
            {
                var expected = ExpectedKind(setting.Kind);
                if (tomlLeaf.Kind != expected)
                {
                    errors.Add($"{where}: {setting.Key}: expected {Article(expected)}, got {Article(tomlLeaf.Kind)}");
                    continue;
                }
            }

            var error = setting.Set(options, value);
            if (error is not null)
            {
                errors.Add($"{where}: {setting.Key}: {error}");
            }
        }

        // 3. Settings that must agree with each other.
        if (options.Admin.Enabled && options.Tcp.Listen.Port != 0 && options.Admin.Listen.Equals(options.Tcp.Listen))
        {
            errors.Add($"admin.listen and tcp.listen are both {options.Tcp.Listen}: they must differ");
        }

        if (options.Session.MaxOutboundBytes < 4L * options.Tcp.MaxFrameBytes)
        {
            errors.Add($"session.max_outbound_bytes ({options.Session.MaxOutboundBytes}) must be at least 4 x tcp.max_frame_bytes ({options.Tcp.MaxFrameBytes}), so a catching-up device can have frames in flight");
        }

        if (options.Session.MinKeepalive > options.Session.MaxKeepalive)
        {
            errors.Add("session.min_keepalive is greater than session.max_keepalive");
        }

        if ((options.Tls.Listen is not null || options.Ws.Tls) && !options.Tls.HasCertificate)
        {
            errors.Add($"{(options.Tls.Listen is not null ? "tls.listen" : "ws.tls")} needs tls.certificate_file and tls.key_file");
        }

        if (options.Web.Enabled && options.Ws.Listen is null)
        {
            errors.Add("web.enabled needs ws.listen (the web chat is served by the WebSocket listener)");
        }

        if (options.Push.Notifier == NotifierKind.Webhook && options.Push.WebhookUrl.Length == 0)
        {
            errors.Add("push.notifier = \"webhook\" needs push.webhook_url");
        }

        if (errors.Count > 0)
        {
            throw new BrokerConfigurationException(errors);
        }

        return new BrokerConfiguration(options, file, origins);
    }

    private static TomlValueKind ExpectedKind(SettingKind kind) => kind switch
    {
        SettingKind.Integer => TomlValueKind.Integer,
        SettingKind.Boolean => TomlValueKind.Boolean,
        _ => TomlValueKind.String,
    };

    private static string Article(TomlValueKind kind) => kind switch
    {
        TomlValueKind.Integer => "an integer",
        TomlValueKind.Array => "an array",
        _ => "a " + kind.ToString().ToLowerInvariant(),
    };

    private static string UnknownKeyMessage(string configKey)
    {
        var dotted = configKey.Replace(':', '.');
        if (SettingsSchema.IsSection(configKey))
        {
            return $"'{dotted}' is a table of settings, not a value";
        }

        string? best = null;
        var bestDistance = int.MaxValue;
        foreach (var s in SettingsSchema.All)
        {
            var d = EditDistance(s.Key, dotted.ToLowerInvariant());
            if (d < bestDistance)
            {
                bestDistance = d;
                best = s.Key;
            }
        }

        return bestDistance <= 3
            ? $"unknown key '{dotted}' (did you mean '{best}'?)"
            : $"unknown key '{dotted}'";
    }

    private static int EditDistance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (var j = 0; j <= b.Length; j++)
        {
            previous[j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + cost);
            }

            (previous, current) = (current, previous);
        }

        return previous[b.Length];
    }

    /// <summary>Every key for which the provider holds a value, found by walking its tree.</summary>
    private static IEnumerable<string> LeafKeys(IConfigurationProvider provider)
    {
        var pending = new Stack<string?>();
        pending.Push(null);
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        while (pending.Count > 0)
        {
            var parent = pending.Pop();
            foreach (var child in provider.GetChildKeys([], parent))
            {
                var path = parent is null ? child : parent + ":" + child;
                if (!seen.Add(path))
                {
                    continue;
                }

                if (provider.TryGet(path, out _))
                {
                    yield return path;
                }

                pending.Push(path);
            }
        }
    }
}

public sealed class BrokerConfigurationException(IReadOnlyList<string> errors)
    : Exception("Invalid configuration:" + Environment.NewLine + string.Join(Environment.NewLine, errors))
{
    public IReadOnlyList<string> Errors { get; } = errors;
}
