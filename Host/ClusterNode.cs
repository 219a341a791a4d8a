using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Hosting;
using ChatBroker.Cluster;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host;

/// <summary>
/// This process as a member of a cluster (cluster mode: <c>cluster.etcd_endpoints</c> set). On start it
/// registers in etcd under its lease, waits for the map, and with <c>cluster.auto_join</c> joins the map (the
/// first node writes it); the host starts it before the listener and readiness, so a node reports ready only
/// with the map. Then it follows the map (log line and metric per new epoch, and when etcd is lost or back).
/// On stop it revokes its lease, so it leaves the live members at once.
/// </summary>
internal sealed class ClusterNode(
    ClusterOptions options, bool autoJoin, IClusterCoordinator coordinator, ClusterMetrics metrics, ILogger<ClusterNode> logger)
    : IHostedService, IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private Task _follow = Task.CompletedTask;
    private int _disposed;

    /// <summary>
    /// Registers the cluster services when cluster mode is on; a single node gets none of them. Hosted services
    /// start in registration order, so the caller registers these before the broker's listener: the mesh listens
    /// (other nodes can reach this one as soon as the map lists it), then this node registers and joins, then the
    /// router takes the map (<see cref="ClusterNodeService"/>), and only then does the device listener accept.
    /// </summary>
    public static void AddTo(IServiceCollection services, BrokerOptions broker)
    {
        var options = OptionsFrom(broker);
        if (!options.Enabled)
        {
            return;
        }

        var routing = RoutingFrom(broker);
        var coordinator = new EtcdCoordinator(options);
        services.AddSingleton(options);
        services.AddSingleton<IClusterCoordinator>(coordinator);
        services.AddSingleton(coordinator.View);
        services.AddSingleton(_ => new ClusterMetrics(coordinator.View, broker.Node.Name));
        services.AddSingleton(sp => new MeshEndpoint(options.MeshListen, sp.GetRequiredService<MeshReceiver>(), sp.GetRequiredService<ILoggerFactory>()));
        services.AddHostedService(sp => sp.GetRequiredService<MeshEndpoint>());
        services.AddSingleton(sp => new ClusterNode(
            options, broker.Cluster.AutoJoin, coordinator, sp.GetRequiredService<ClusterMetrics>(), sp.GetRequiredService<ILogger<ClusterNode>>()));
        services.AddHostedService(sp => sp.GetRequiredService<ClusterNode>());
        services.AddChatBrokerCluster(options.NodeId, routing, broker.Node.Name);
    }

    /// <summary>
    /// The <c>cluster.*</c> settings as ChatBroker.Cluster needs them: the node id defaults to node.name and
    /// the client address to tcp.listen. Throws <see cref="InvalidDataException"/> for settings that cannot
    /// run a cluster node (each key is validated on its own by the configuration; this checks them together).
    /// </summary>
    public static ClusterOptions OptionsFrom(BrokerOptions broker)
    {
        var c = broker.Cluster;
        if (!ClusterOptions.TryParseEtcdEndpoints(c.EtcdEndpoints, out var endpoints, out var error))
        {
            throw new InvalidDataException("cluster.etcd_endpoints: " + error);
        }

        if (endpoints.Count > 0 && c.MeshListen.Port == 0)
        {
            // The other nodes dial the advertised address, which must name the port the mesh listens on.
            throw new InvalidDataException("cluster.mesh_listen: a cluster node needs a fixed mesh port (the other nodes dial it), got port 0");
        }

        var options = new ClusterOptions
        {
            EtcdEndpoints = endpoints,
            EtcdPrefix = c.EtcdPrefix,
            EtcdTimeout = c.EtcdTimeout,
            NodeId = c.NodeId.Length > 0 ? c.NodeId : broker.Node.Name,
            LeaseTtl = c.LeaseTtl,
            MeshListen = c.MeshListen,
            AdvertiseMesh = c.AdvertiseMesh,
            AdvertiseClient = c.AdvertiseClient.Length > 0 ? c.AdvertiseClient : broker.Tcp.Listen.ToString(),
            VirtualNodes = c.VirtualNodes,
            ReplicationFactor = c.ReplicationFactor,
        };
        return options.Validate() is { } invalid ? throw new InvalidDataException("cluster settings: " + invalid) : options;
    }

    /// <summary>
    /// The routing and mesh bounds (<c>cluster.forward_timeout</c> … <c>cluster.mesh_*</c>) as the broker's cluster
    /// layer takes them. Throws <see cref="InvalidDataException"/> naming the settings when they do not fit together.
    /// </summary>
    public static ClusterRoutingOptions RoutingFrom(BrokerOptions broker)
    {
        var c = broker.Cluster;
        var routing = new ClusterRoutingOptions
        {
            ForwardTimeout = c.ForwardTimeout,
            ReadTimeout = c.ReadTimeout,
            RetryAfter = c.RetryAfter,
            ForwardBatch = c.ForwardBatch,
            MaxStaleRetries = c.MaxStaleRetries,
            LeaseSafetyMargin = c.LeaseMargin,
            FailoverBackupDelay = c.FailoverBackupDelay,
            FailedNodeTimeout = c.FailedNodeTimeout,
            ReforwardWindow = c.ReforwardWindow,
            ReplicationTimeout = c.ReplicationTimeout,
            ReplicationMaxQueueBatches = c.ReplicationMaxQueueBatches,
            Mesh = new MeshOptions
            {
                MaxBatchMessages = c.MeshMaxBatchMessages,
                MaxBatchBytes = (int)Math.Min(int.MaxValue, c.MeshMaxBatchBytes),
                MaxMessageBytes = (int)Math.Min(int.MaxValue, c.MeshMaxMessageBytes),
                MaxReplyBytes = (int)Math.Min(int.MaxValue, c.MeshMaxReplyBytes),
                MaxQueueBytes = c.MeshMaxQueueBytes,
                MaxQueueMessages = c.MeshMaxQueueMessages,
                MaxLinks = c.MeshMaxLinks,
                MaxCachedResults = c.MeshMaxCachedResults,
                ReconnectInitialDelay = c.MeshReconnectInitialDelay,
                ReconnectMaxDelay = c.MeshReconnectMaxDelay,
            },
        };

        if (c.LeaseMargin >= c.LeaseTtl)
        {
            throw new InvalidDataException($"cluster.lease_margin ({c.LeaseMargin.TotalSeconds} s) must be below cluster.lease_ttl ({c.LeaseTtl.TotalSeconds} s): a node would never acknowledge");
        }

        if (c.MeshMaxMessageBytes < broker.Tcp.MaxFrameBytes + 1024)
        {
            throw new InvalidDataException(
                $"cluster.mesh_max_message_bytes ({c.MeshMaxMessageBytes}) must be at least tcp.max_frame_bytes + 1024 ({broker.Tcp.MaxFrameBytes + 1024}): a forwarded SEND carries one client frame");
        }

        try
        {
            routing.Validate();
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new InvalidDataException($"cluster settings: {SettingOf(e.ParamName)} is out of range: {e.Message.Split(Environment.NewLine)[0]}", e);
        }

        return routing;
    }

    /// <summary>The setting behind a property that <see cref="ClusterRoutingOptions.Validate"/> named.</summary>
    private static string SettingOf(string? property) => property switch
    {
        "ForwardTimeout" => "cluster.forward_timeout",
        "ReadTimeout" => "cluster.read_timeout",
        "RetryAfter" => "cluster.retry_after",
        "ForwardBatch" => "cluster.forward_batch",
        "MaxStaleRetries" => "cluster.max_stale_retries",
        "LeaseSafetyMargin" => "cluster.lease_margin",
        "FailoverBackupDelay" => "cluster.failover_backup_delay",
        "FailedNodeTimeout" => "cluster.failed_node_timeout",
        "ReforwardWindow" => "cluster.reforward_window",
        "MaxBatchMessages" => "cluster.mesh_max_batch_messages",
        "MaxBatchBytes" => "cluster.mesh_max_batch_bytes (at least cluster.mesh_max_message_bytes)",
        "MaxMessageBytes" => "cluster.mesh_max_message_bytes",
        "MaxReplyBytes" or "Mesh.MaxReplyBytes" => "cluster.mesh_max_reply_bytes (at least cluster.mesh_max_message_bytes + 1024)",
        "MaxQueueBytes" => "cluster.mesh_max_queue_bytes (at least cluster.mesh_max_message_bytes)",
        "MaxQueueMessages" => "cluster.mesh_max_queue_messages (at least cluster.mesh_max_batch_messages)",
        "MaxLinks" => "cluster.mesh_max_links",
        "MaxCachedResults" => "cluster.mesh_max_cached_results (at least cluster.mesh_max_batch_messages)",
        "ReconnectInitialDelay" => "cluster.mesh_reconnect_initial_delay",
        "ReconnectMaxDelay" => "cluster.mesh_reconnect_max_delay (at least cluster.mesh_reconnect_initial_delay)",
        _ => property ?? "a cluster setting",
    };

    public ClusterMember SelfMember => new(coordinator.Self.NodeId, coordinator.Self.MeshAddress, coordinator.Self.ClientAddress, MemberState.Active);

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        Log.ClusterStarting(logger, options.NodeId, string.Join(",", options.EtcdEndpoints), options.EtcdPrefix);
        try
        {
            await coordinator.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ClusterCoordinationException e)
        {
            throw new InvalidOperationException($"cluster: {e.Message}", e);
        }

        if (autoJoin)
        {
            // Joining until this node's cluster layer has had its ranges handed to it; it then makes itself Active.
            var joined = await new ClusterMembership(coordinator, metrics) { HandOverRanges = true }
                .JoinAsync(SelfMember, options.VirtualNodes, options.ReplicationFactor, cancellationToken).ConfigureAwait(false);
            if (joined.Succeeded)
            {
                Log.ClusterJoined(logger, joined.Message);
                await WaitForViewAsync(joined.Map.Epoch, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                // The node still serves with the map it has and stays a live node; the operator can join it.
                Log.ClusterJoinFailed(logger, joined.Message);
            }
        }

        _follow = Task.Run(() => FollowAsync(_stop.Token), CancellationToken.None);
    }

    public async Task StopAsync(CancellationToken cancellationToken) => await DisposeAsync().ConfigureAwait(false);

    /// <summary>Waits (at most a few etcd deadlines) until the watch has brought the map this node's join wrote, so
    /// the router starts with it; past the wait the router follows it when it comes.</summary>
    private async Task WaitForViewAsync(long epoch, CancellationToken cancellationToken)
    {
        var view = coordinator.View;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(options.EtcdTimeout * 3);
        try
        {
            while (view.Epoch < epoch)
            {
                var changed = view.WaitForChangeAsync(deadline.Token);
                if (view.Epoch >= epoch)
                {
                    break;
                }

                await changed.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        await _follow.ConfigureAwait(false);
        await coordinator.DisposeAsync().ConfigureAwait(false); // revokes the lease: out of the live members now
        Log.ClusterLeftLive(logger, options.NodeId);
        _stop.Dispose();
    }

    /// <summary>Logs and counts each new map, and the loss and return of etcd, as the view reports them.</summary>
    private async Task FollowAsync(CancellationToken stop)
    {
        var view = coordinator.View;
        var epoch = -1L;
        var live = System.Collections.Immutable.ImmutableArray<NodeRegistration>.Empty;
        var connected = true;
        try
        {
            while (true)
            {
                var changed = view.WaitForChangeAsync(stop);
                var map = view.Map;
                if (map.Epoch != epoch)
                {
                    epoch = map.Epoch;
                    metrics.CountMapApplied();
                    Log.ClusterMap(logger, map.Epoch, Describe(map));
                }

                var nowLive = view.LiveMembers;
                if (!nowLive.SequenceEqual(live))
                {
                    live = nowLive;
                    Log.ClusterLiveNodes(logger, live.Length, DescribeLive(live));
                }

                if (view.HasCurrentMap != connected)
                {
                    connected = view.HasCurrentMap;
                    if (connected)
                    {
                        Log.ClusterEtcdBack(logger, map.Epoch);
                    }
                    else
                    {
                        Log.ClusterEtcdLost(logger, map.Epoch, view.LastError ?? "unknown");
                    }
                }

                await changed.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private static string DescribeLive(System.Collections.Immutable.ImmutableArray<NodeRegistration> live)
    {
        var ids = new string[live.Length];
        for (var i = 0; i < ids.Length; i++)
        {
            ids[i] = live[i].NodeId;
        }

        return string.Join(", ", ids);
    }

    internal static string Describe(ClusterMap map)
    {
        if (map.Members.IsEmpty)
        {
            return "no members";
        }

        var parts = new string[map.Members.Length];
        for (var i = 0; i < parts.Length; i++)
        {
            var m = map.Members[i];
            parts[i] = $"{m.NodeId} {m.State} (mesh {m.MeshAddress}, client {m.ClientAddress})";
        }

        if (map.ReplicaSets.IsDefaultOrEmpty)
        {
            return string.Join(", ", parts);
        }

        // Replication (docs/cluster.md): each primary's replicas and which of them are in sync, e.g.
        // "replicas: n1 {n2, n3} in sync {n2}, n2 {n1, n3} in sync {n1, n3}, …".
        var sets = new string[map.ReplicaSets.Length];
        for (var i = 0; i < sets.Length; i++)
        {
            var set = map.ReplicaSets[i];
            sets[i] = $"{set.Primary} {{{string.Join(", ", set.Replicas)}}} in sync {{{string.Join(", ", set.InSync)}}}";
        }

        return string.Join(", ", parts) + "; replicas: " + string.Join(", ", sets);
    }
}
