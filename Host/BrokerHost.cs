using System.Reflection;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Hosting;
using ChatBroker.Storage;
using ChatBroker.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// The composition root: turns a validated <see cref="BrokerConfiguration"/> into a running host with the
/// broker library (<see cref="BrokerServices.AddChatBroker"/>), the admin HTTP endpoint and readiness.
/// Shutdown (SIGTERM, Ctrl-C) goes through the generic host: listeners stop accepting, connections drain
/// within shutdown.grace_period.
/// </summary>
public static class BrokerHost
{
    public static string Version { get; } =
        typeof(BrokerHost).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    public static IHost Build(BrokerConfiguration configuration)
    {
        var options = configuration.Options;
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
        {
            DisableDefaults = true,
            ApplicationName = "chatbroker",
            ContentRootPath = Directory.GetCurrentDirectory(),
        });
        ConfigureLogging(builder.Logging, options.Log);
        builder.Services.Configure<HostOptions>(o =>
        {
            o.ShutdownTimeout = options.Shutdown.GracePeriod;
            o.ServicesStartConcurrently = false;
            o.ServicesStopConcurrently = false;
        });

        Directory.CreateDirectory(options.Node.DataDir);
        var secretFile = options.Auth.ResolveSecretFile(options.Node);
        bool secretCreated = false;
        var secret = options.Auth.Secret.Length > 0
            ? TokenSecret.FromBase64(options.Auth.Secret)
            : TokenSecret.LoadOrCreate(secretFile, out secretCreated);

        // Open the store before anything listens: a store that cannot open is a start failure with its path.
        var storageOptions = BrokerServices.StorageOptionsFrom(options);
        var store = RocksDbChatStore.Open(storageOptions);

        // Hosted services start in registration order: the banner first, readiness last. In cluster mode the
        // node registers and has the map before the listener accepts devices (and stops after it drained).
        builder.Services.AddHostedService<StartupLog>(sp => new StartupLog(sp, configuration, secretCreated ? secretFile : null, storageOptions));
        ClusterNode.AddTo(builder.Services, options);
        builder.Services.AddChatBroker(configuration, secret, store);
        builder.Services.AddSingleton(sp => new Readiness(sp.GetService<ChatBroker.Cluster.Coordination.ClusterView>()));
        if (options.Admin.Enabled)
        {
            builder.Services.AddSingleton<AdminEndpoint>();
            builder.Services.AddHostedService(sp => sp.GetRequiredService<AdminEndpoint>());
        }

        builder.Services.AddHostedService<ReadinessTracker>();

        // Under systemd (Type=notify): READY=1 once the host started, i.e. the store is open and every listener
        // bound; STOPPING=1 when it stops; WATCHDOG=1 while ready when the unit sets WatchdogSec.
        Systemd.AddServiceManagerIntegration(builder.Services);
        return builder.Build();
    }

    internal static void ConfigureLogging(ILoggingBuilder logging, LogOptions options)
    {
        logging.ClearProviders();
        logging.SetMinimumLevel(options.Level);
        logging.AddFilter("Microsoft", LogLevel.Warning);
        logging.AddFilter("System", LogLevel.Warning);
        if (options.Format == LogFormat.Json)
        {
            logging.AddJsonConsole(o =>
            {
                o.UseUtcTimestamp = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
                o.IncludeScopes = false;
            });
        }
        else if (Systemd.LogsToJournal)
        {
            // One line per entry, the level as a syslog priority prefix ("<6>" for information) that journald
            // turns into the entry's PRIORITY (journalctl -p warning works), no timestamp of our own.
            logging.AddSystemdConsole(o => o.IncludeScopes = false);
        }
        else
        {
            logging.AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.UseUtcTimestamp = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
            });
        }
    }

    /// <summary>Logs the start banner before anything else starts, and remembers when a secret was generated.</summary>
    private sealed class StartupLog(IServiceProvider services, BrokerConfiguration configuration, string? generatedSecret, StorageOptions storage) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            var logger = services.GetRequiredService<ILoggerFactory>().CreateLogger("ChatBroker");
            var options = configuration.Options;
            Log.Starting(logger, Version, options.Node.Name, configuration.File ?? "embedded defaults", Path.GetFullPath(options.Node.DataDir));
            if (ChatBroker.Broker.Hosting.SignalMask.UnblockedAtStart is { Count: > 0 } unblocked)
            {
                Log.SignalsUnblocked(logger, string.Join(", ", unblocked));
            }
            if (generatedSecret is not null)
            {
                Log.SecretGenerated(logger, Path.GetFullPath(generatedSecret));
            }

            Log.StoreOpened(logger, Path.GetFullPath(storage.Path), storage.Durability.ToString().ToLowerInvariant(), storage.Retention.ToString());

            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
