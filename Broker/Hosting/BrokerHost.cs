using System.Reflection;
using ChatBroker.Broker.Auth;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Push;
using ChatBroker.Broker.Sessions;
using ChatBroker.Broker.Transport;
using ChatBroker.Storage;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Hosting;

/// <summary>
/// The composition root: turns a validated <see cref="BrokerConfiguration"/> into a running host with the
/// native TCP listener, the admin HTTP endpoint and everything they depend on. Shutdown (SIGTERM, Ctrl-C)
/// goes through the generic host: listeners stop accepting, connections drain within shutdown.grace_period.
/// </summary>
public static class BrokerHost
{
    public static string Version { get; } =
        typeof(BrokerHost).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    public static IHost Build(BrokerConfiguration configuration)
    {
        var options = configuration.Options;
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
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
        var storageOptions = StorageOptionsFrom(options);
        var store = RocksDbChatStore.Open(storageOptions);

        builder.Services.AddSingleton(configuration);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(options.Push);
        builder.Services.AddSingleton(secret);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton<IChatStore>(_ => store); // created by a factory, so disposed (flushed) by the host
        builder.Services.AddSingleton(_ => new BrokerMetrics(options.Node.Name));
        builder.Services.AddSingleton(_ => new PrometheusExporter(BrokerMetrics.MeterName + "*", "ChatBroker.Storage", "System.Runtime"));
        builder.Services.AddSingleton<Readiness>();
        builder.Services.AddSingleton<SessionRegistry>();
        builder.Services.AddSingleton(sp => new ConversationDirectory(sp.GetRequiredService<IChatStore>()));
        builder.Services.AddSingleton(options.Groups);
        builder.Services.AddSingleton(options.Fanout);
        builder.Services.AddSingleton(options.Retention);
        builder.Services.AddSingleton<ChatService>();
        builder.Services.AddSingleton(sp => new PresenceService(
            sp.GetRequiredService<IChatStore>(), sp.GetRequiredService<ConversationDirectory>(), sp.GetRequiredService<BrokerMetrics>(),
            sp.GetRequiredService<TimeProvider>(), options.Presence));
        builder.Services.AddSingleton<TypingRelay>();
        builder.Services.AddSingleton(sp => new KeyDirectory(
            sp.GetRequiredService<IChatStore>(), sp.GetRequiredService<SessionRegistry>(), sp.GetRequiredService<BrokerMetrics>(), options.Keys));
        builder.Services.AddSingleton<GroupService>();
        builder.Services.AddSingleton<BrokerContext>();
        builder.Services.AddSingleton<ISocketConnectionHandler, DeviceConnectionHandler>();
        builder.Services.AddSingleton<SocketListener>();
        if (options.Push.Notifier == NotifierKind.Webhook)
        {
            builder.Services.AddSingleton<IPushNotifier>(_ => new WebhookPushNotifier(new HttpClient { Timeout = Timeout.InfiniteTimeSpan }, options.Push));
        }
        else
        {
            builder.Services.AddSingleton<IPushNotifier, LogPushNotifier>();
        }

        builder.Services.AddSingleton<PushDispatcher>();
        builder.Services.AddHostedService<StartupLog>(sp => new StartupLog(sp, configuration, secretCreated ? secretFile : null, storageOptions));
        builder.Services.AddHostedService<KeepaliveMonitor>();
        builder.Services.AddHostedService(sp =>
        {
            var dispatcher = sp.GetRequiredService<PushDispatcher>();
            sp.GetRequiredService<ChatService>().PushJobsAdded += dispatcher.Wake;
            return dispatcher;
        });
        // Stopped in reverse order: the listener drains sessions before the dispatcher and the store go.
        builder.Services.AddHostedService(sp => sp.GetRequiredService<SocketListener>());
        if (options.Admin.Enabled)
        {
            builder.Services.AddSingleton<AdminEndpoint>();
            builder.Services.AddHostedService(sp => sp.GetRequiredService<AdminEndpoint>());
        }

        builder.Services.AddHostedService<ReadinessTracker>();
        return builder.Build();
    }

    public static StorageOptions StorageOptionsFrom(BrokerOptions options) => new()
    {
        Path = Path.Combine(options.Node.DataDir, "store"),
        Durability = options.Storage.Durability == DurabilityMode.Sync ? Durability.Sync : Durability.Async,
        MaxBatchCount = options.Storage.MaxBatchMessages,
        MaxBatchBytes = (int)Math.Min(int.MaxValue, options.Storage.MaxBatchBytes),
        QueueCapacity = options.Storage.QueueCapacity,
        BlockCacheBytes = options.Storage.BlockCacheBytes,
        WriteBufferBytes = options.Storage.WriteBufferBytes,
        IdempotencyWindow = options.Storage.IdempotencyWindow,
        IdempotencyCacheDevices = options.Storage.IdempotencyCacheDevices,
        // Async durability: a SEND handled on an idle store is written by the thread that read it, with no
        // hand-off to the writer thread and back (see StorageOptions.CallerWritesAfterIdle).
        CallerWritesAfterIdle = TimeSpan.Zero,
        Retention = options.Retention.Policy == Configuration.RetentionPolicy.Keep
            ? Storage.RetentionPolicy.Keep
            : Storage.RetentionPolicy.ForDays(options.Retention.Days),
    };

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

/// <summary>Whether the node should receive traffic: true once every service started, false again when stopping.</summary>
public sealed class Readiness
{
    private volatile bool _ready;

    public bool IsReady => _ready;

    internal void Set(bool ready) => _ready = ready;
}

internal sealed class ReadinessTracker(Readiness readiness, IHostApplicationLifetime lifetime, BrokerOptions options, ILogger<ReadinessTracker> logger)
    : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(() =>
        {
            readiness.Set(true);
            Log.Ready(logger);
        });
        lifetime.ApplicationStopping.Register(() =>
        {
            readiness.Set(false);
            Log.ShuttingDown(logger, options.Shutdown.GracePeriod);
        });
        lifetime.ApplicationStopped.Register(() => Log.Stopped(logger));
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
