using ChatBroker.Broker.Configuration;
using ChatBroker.Cluster;
using ChatBroker.Cluster.Coordination;
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

    /// <summary>Registers the cluster services when cluster mode is on; a single node gets none of them.</summary>
    public static void AddTo(IServiceCollection services, BrokerOptions broker)
    {
        var options = OptionsFrom(broker);
        if (!options.Enabled)
        {
            return;
        }

        var coordinator = new EtcdCoordinator(options);
        services.AddSingleton(options);
        services.AddSingleton<IClusterCoordinator>(coordinator);
        services.AddSingleton(coordinator.View);
        services.AddSingleton(_ => new ClusterMetrics(coordinator.View, broker.Node.Name));
        services.AddSingleton(sp => new ClusterNode(
            options, broker.Cluster.AutoJoin, coordinator, sp.GetRequiredService<ClusterMetrics>(), sp.GetRequiredService<ILogger<ClusterNode>>()));
        services.AddHostedService(sp => sp.GetRequiredService<ClusterNode>());

        // The mesh server (Cluster/Mesh, gRPC h2c on cluster.mesh_listen) is registered here, after the
        // coordinator: it needs the view to refuse stale epochs, and it must listen before this node joins.
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
            var joined = await new ClusterMembership(coordinator, metrics)
                .JoinAsync(SelfMember, options.VirtualNodes, options.ReplicationFactor, cancellationToken).ConfigureAwait(false);
            if (joined.Succeeded)
            {
                Log.ClusterJoined(logger, joined.Message);
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

        return string.Join(", ", parts);
    }
}
