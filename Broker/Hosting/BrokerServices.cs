using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Mqtt;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Push;
using ChatBroker.Broker.Sessions;
using ChatBroker.Broker.Transport;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Storage;
using ChatBroker.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Hosting;

/// <summary>
/// How the broker library plugs into a generic host (as Kestrel's <c>UseKestrel</c> does): registers the
/// native TCP listener, the messaging core, sessions, push and metrics over a store and a secret that the
/// caller opened. The process around it (command line, logging, admin endpoint, readiness) is the Host
/// project's; it owns the store once registered and disposes (flushes) it on shutdown.
/// </summary>
public static class BrokerServices
{
    public static IServiceCollection AddChatBroker(this IServiceCollection services, BrokerConfiguration configuration, TokenSecret secret, IChatStore store)
    {
        var options = configuration.Options;
        services.AddSingleton(configuration);
        services.AddSingleton(options);
        services.AddSingleton(options.Push);
        services.AddSingleton(secret);
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<IChatStore>(_ => store); // created by a factory, so disposed (flushed) by the host
        services.AddSingleton(_ => new BrokerMetrics(options.Node.Name));
        services.AddSingleton(_ => new PrometheusExporter(BrokerMetrics.MeterName + "*", "ChatBroker.Storage", "System.Runtime"));
        services.AddSingleton<SessionRegistry>();
        services.AddSingleton(sp => new ConversationDirectory(sp.GetRequiredService<IChatStore>()));
        services.AddSingleton(options.Groups);
        services.AddSingleton(options.Fanout);
        services.AddSingleton(options.Retention);
        services.AddSingleton<ChatService>();
        services.AddSingleton(sp => new PresenceService(
            sp.GetRequiredService<IChatStore>(), sp.GetRequiredService<ConversationDirectory>(), sp.GetRequiredService<BrokerMetrics>(),
            sp.GetRequiredService<TimeProvider>(), options.Presence));
        services.AddSingleton<TypingRelay>();
        services.AddSingleton(sp => new KeyDirectory(
            sp.GetRequiredService<IChatStore>(), sp.GetRequiredService<SessionRegistry>(), sp.GetRequiredService<BrokerMetrics>(), options.Keys,
            sp.GetRequiredService<TimeProvider>()));
        services.AddSingleton<GroupService>();
        services.AddSingleton<DeviceRevocations>();
        services.AddSingleton<BrokerContext>();
        services.AddSingleton<ISocketConnectionHandler, DeviceConnectionHandler>();
        services.AddSingleton<SocketListener>();
        if (options.Push.Notifier == NotifierKind.Webhook)
        {
            services.AddSingleton<IPushNotifier>(_ => new WebhookPushNotifier(new HttpClient { Timeout = Timeout.InfiniteTimeSpan }, options.Push));
        }
        else
        {
            services.AddSingleton<IPushNotifier, LogPushNotifier>();
        }

        services.AddSingleton<PushDispatcher>();
        services.AddHostedService<KeepaliveMonitor>();
        services.AddHostedService(sp =>
        {
            var dispatcher = sp.GetRequiredService<PushDispatcher>();
            sp.GetRequiredService<ChatService>().PushJobsAdded += dispatcher.Wake;
            return dispatcher;
        });
        // Stopped in reverse order: the listener drains sessions before the dispatcher and the store go.
        services.AddHostedService(sp => sp.GetRequiredService<SocketListener>());
        services.AddSingleton<IDeviceConnectionHandler>(sp => (DeviceConnectionHandler)sp.GetRequiredService<ISocketConnectionHandler>());
        services.AddChatBrokerTransports(options); // tls.listen, ws.listen: stopped before the TCP listener
        services.AddChatBrokerMqtt(options); // mqtt.listen, mqtt.tls_listen (Broker/Mqtt)
        return services;
    }

    /// <summary>
    /// Cluster mode, after <see cref="AddChatBroker"/>: the node's cluster layer (<see cref="ClusterNode"/>, which
    /// routes SENDs and inbox entries between nodes) and the <see cref="MeshReceiver"/> that hands it what other
    /// nodes send (map it with <c>AddMesh</c>/<c>MapMesh</c> or serve it with <c>MeshServer</c>). The caller
    /// registers and starts the <c>IClusterCoordinator</c>; the node follows its view from host start. Without
    /// this call there is no cluster layer and the core does everything locally, as on a single node.
    /// </summary>
    public static IServiceCollection AddChatBrokerCluster(this IServiceCollection services, string nodeId, ClusterRoutingOptions? routing = null, string? nodeName = null)
    {
        services.AddSingleton(sp =>
        {
            var node = new ClusterNode(
                nodeId, sp.GetRequiredService<ChatService>(), sp.GetRequiredService<ConversationDirectory>(), routing,
                sp.GetRequiredService<ILoggerFactory>().CreateLogger("ChatBroker.Cluster"));
            node.UseSignals(sp.GetRequiredService<PresenceService>(), sp.GetRequiredService<TypingRelay>(), sp.GetRequiredService<KeyDirectory>());
            node.UseAccounts(sp.GetRequiredService<DeviceRevocations>(), sp.GetRequiredService<BrokerContext>().Settings);
            return node;
        });
        services.AddSingleton(sp =>
        {
            var node = sp.GetRequiredService<ClusterNode>();
            return new MeshReceiver(nodeId, node, node.MeshOptions);
        });
        // Its counters on the "ChatBroker.Routing" meter, which the Prometheus exporter takes with every "ChatBroker*".
        services.AddSingleton(sp => new RoutingInstruments(
            sp.GetRequiredService<ClusterNode>(), sp.GetRequiredService<MeshReceiver>(), nodeName ?? nodeId));
        services.AddHostedService<ClusterNodeService>();
        return services;
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
        // Cluster mode: a home may be sent copies of messages it stored itself (re-forwards, a failed home's queue).
        InboxCopyMarks = options.Cluster.EtcdEndpoints.Length > 0,
        RocksDbInfoLog = options.Storage.RocksDbInfoLog,
        // Async durability: a SEND handled on an idle store is written by the thread that read it, with no
        // hand-off to the writer thread and back (see StorageOptions.CallerWritesAfterIdle).
        CallerWritesAfterIdle = TimeSpan.Zero,
        // Replies and deliveries written by the continuations of a batch completed on the pool leave from that
        // work item, after the batch (Sessions/OutboxFlushScope.cs).
        CompletionScope = Sessions.CompletionBatchScope.Instance,
        Retention = options.Retention.Policy == Configuration.RetentionPolicy.Keep
            ? Storage.RetentionPolicy.Keep
            : Storage.RetentionPolicy.ForDays(options.Retention.Days),
    };
}
