using System.CommandLine;
using ChatBroker.Broker.Configuration;
using ChatBroker.Protocol;
using ChatBroker.Tokens;
using Microsoft.Extensions.Hosting;

namespace ChatBroker.Host;

/// <summary>
/// The <c>chatbroker</c> command line. <c>serve</c> is the default command; every command that reads
/// configuration takes <c>--config</c> (default ./broker.toml when present) and repeated
/// <c>--set section.key=value</c> overrides, layered over CHATBROKER__SECTION__KEY environment variables.
/// Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
/// </summary>
public static class Program
{
    public const int ExitOk = 0;
    public const int ExitFailure = 1;
    public const int ExitUsage = 2;

    public static Task<int> Main(string[] args)
    {
        ChatBroker.Broker.Hosting.SignalMask.UnblockHandled(); // before any thread of ours starts: they inherit the mask
        return BuildCommandLine().Parse(args).InvokeAsync();
    }

    public static RootCommand BuildCommandLine()
    {
        var configOption = new Option<string?>("--config", "-c")
        {
            Description = "Configuration file (TOML). Default: ./broker.toml when it exists, else the embedded defaults.",
            Recursive = true,
        };
        var setOption = new Option<string[]>("--set")
        {
            Description = "Override one setting, e.g. --set tcp.listen=127.0.0.1:7883 (repeatable; wins over file and environment).",
            Recursive = true,
            AllowMultipleArgumentsPerToken = false,
        };

        var root = new RootCommand("ChatBroker: a durable chat message broker. Runs `serve` when no command is given.");
        root.Options.Add(configOption);
        root.Options.Add(setOption);

        var serve = new Command("serve", "Run the broker (the default command).");
        serve.SetAction((result, token) => ServeAsync(result.GetValue(configOption), result.GetValue(setOption), token));
        root.SetAction((result, token) => ServeAsync(result.GetValue(configOption), result.GetValue(setOption), token));
        root.Subcommands.Add(serve);

        var userOption = new Option<string>("--user", "-u") { Description = "User id the token is for.", Required = true };
        var deviceOption = new Option<string?>("--device", "-d") { Description = "Device id; without it the token admits any device of the user." };
        var ttlOption = new Option<string?>("--ttl") { Description = "Lifetime such as 1h or 30d (default: auth.default_token_ttl)." };
        var tokenCommand = new Command("token", "Print a device token signed with this node's secret (HMAC-SHA256 JWT).")
        {
            userOption, deviceOption, ttlOption,
        };
        tokenCommand.SetAction(result => Token(
            result.GetValue(configOption), result.GetValue(setOption),
            result.GetValue(userOption)!, result.GetValue(deviceOption), result.GetValue(ttlOption)));
        root.Subcommands.Add(tokenCommand);

        var fileArgument = new Argument<string?>("file") { Description = "File to check (default: --config, else ./broker.toml).", Arity = ArgumentArity.ZeroOrOne };
        var check = new Command("check", "Validate configuration and print the effective settings, secrets masked.") { fileArgument };
        check.SetAction(result => ConfigCheck(
            result.GetValue(fileArgument) ?? result.GetValue(configOption), result.GetValue(setOption)));
        var config = new Command("config", "Configuration commands.") { check };
        root.Subcommands.Add(config);
        Cli.MessagingCommands.Add(root, configOption, setOption);
        Cli.ClusterCommands.Add(root, configOption, setOption);
        Cli.DeviceCommands.Add(root, configOption, setOption);
        return root;
    }

    internal static BrokerConfiguration? LoadConfiguration(string? file, string[]? overrides)
    {
        try
        {
            return BrokerConfiguration.Load(file, overrides);
        }
        catch (BrokerConfigurationException e)
        {
            Console.Error.WriteLine("chatbroker: invalid configuration:");
            foreach (var error in e.Errors)
            {
                Console.Error.WriteLine("  " + error);
            }

            return null;
        }
    }

    /// <summary>Makes the runtime run socket continuations on its event threads (one per core when set).</summary>
    internal const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    private static async Task<int> ServeAsync(string? file, string[]? overrides, CancellationToken cancellationToken)
    {
        var configuration = LoadConfiguration(file, overrides);
        if (configuration is null)
        {
            return ExitUsage;
        }

        // tcp.inline_completions: the runtime reads this once, when the process creates its first socket, so
        // it is set before anything listens (and wins over the variable in the environment).
        Environment.SetEnvironmentVariable(InlineCompletionsVariable, configuration.Options.Tcp.InlineCompletions ? "1" : "0");

        IHost host;
        try
        {
            host = BrokerHost.Build(configuration);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or FormatException or ChatBroker.Storage.StorageException)
        {
            Console.Error.WriteLine($"chatbroker: cannot start: {e.Message}");
            return ExitFailure;
        }

        try
        {
            try
            {
                await host.StartAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException
                || e is OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                // A cancellation not asked for by the operator is a start step that timed out: say which, never exit silently.
                Console.Error.WriteLine($"chatbroker: cannot start: {e.Message}");
                return ExitFailure;
            }

            // Returns once SIGTERM or Ctrl-C has stopped the host and every service drained.
            await host.WaitForShutdownAsync(cancellationToken).ConfigureAwait(false);
            return ExitOk;
        }
        finally
        {
            if (host is IAsyncDisposable asyncDisposable)
            {
                await asyncDisposable.DisposeAsync().ConfigureAwait(false);
            }
            else
            {
                host.Dispose();
            }
        }
    }

    private static int Token(string? file, string[]? overrides, string user, string? device, string? ttlText)
    {
        var configuration = LoadConfiguration(file, overrides);
        if (configuration is null)
        {
            return ExitUsage;
        }

        var options = configuration.Options;
        var ttl = options.Auth.DefaultTokenTtl;
        if (ttlText is not null && !SettingParsers.TryParseDuration(ttlText, out ttl, out var error))
        {
            Console.Error.WriteLine($"chatbroker token: --ttl: {error}");
            return ExitUsage;
        }

        if (string.IsNullOrWhiteSpace(user))
        {
            Console.Error.WriteLine("chatbroker token: --user must not be empty");
            return ExitUsage;
        }

        // The broker refuses a CONNECT with such an id whatever the token says: never issue one.
        var invalid = ChatIds.Describe(user) ?? (string.IsNullOrEmpty(device) ? null : ChatIds.Describe(device));
        if (invalid is not null)
        {
            Console.Error.WriteLine($"chatbroker token: {invalid}");
            return ExitUsage;
        }

        TokenSecret secret;
        try
        {
            secret = options.Auth.Secret.Length > 0
                ? TokenSecret.FromBase64(options.Auth.Secret)
                : TokenSecret.LoadOrCreate(options.Auth.ResolveSecretFile(options.Node), out _);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            Console.Error.WriteLine($"chatbroker token: cannot read the token secret: {e.Message}");
            return ExitFailure;
        }

        Console.Out.WriteLine(AccessToken.Issue(secret, user, device, ttl, DateTimeOffset.UtcNow));
        return ExitOk;
    }

    private static int ConfigCheck(string? file, string[]? overrides)
    {
        var configuration = LoadConfiguration(file, overrides);
        if (configuration is null)
        {
            return ExitUsage;
        }

        Console.Out.WriteLine($"# configuration OK ({configuration.File ?? "embedded defaults"}); effective settings:");
        string? section = null;
        foreach (var setting in SettingsSchema.All)
        {
            var dot = setting.Key.IndexOf('.', StringComparison.Ordinal);
            var table = setting.Key[..dot];
            if (table != section)
            {
                Console.Out.WriteLine();
                Console.Out.WriteLine($"[{table}]");
                section = table;
            }

            var value = setting.Get(configuration.Options);
            if (setting.Secret && value.Length > 0)
            {
                value = "********";
            }

            var rendered = setting.Kind is SettingKind.Integer or SettingKind.Boolean ? value : "\"" + value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal) + "\"";
            Console.Out.WriteLine($"{setting.Key[(dot + 1)..]} = {rendered}    # {configuration.OriginOf(setting)}");
        }

        return ExitOk;
    }
}
