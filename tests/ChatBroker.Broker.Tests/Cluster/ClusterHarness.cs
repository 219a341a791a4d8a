using System.Net;
using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Cluster;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Cluster.Ring;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// N broker nodes in one process: each a whole broker core behind its sessions (<see cref="SessionHarness"/>, its
/// own in-memory store), its <see cref="ClusterNode"/>, a real mesh server on 127.0.0.1 port 0 and an
/// <see cref="InMemoryCoordinator"/>; one <see cref="InMemoryCoordinationStore"/> holds the map, in which every
/// node is active. Devices connect to any node over in-memory transports.
/// </summary>
internal sealed class ClusterHarness : IAsyncDisposable
{
    public const int VirtualNodes = 64;

    private readonly List<ClusterTestNode> _nodes;
    private readonly ClusterRoutingOptions? _routing;
    private readonly Dictionary<string, (InMemoryChatStore Store, IPEndPoint Mesh)> _down = new(StringComparer.Ordinal);
    private Action<BrokerOptions>? _configure;

    private ClusterHarness(InMemoryCoordinationStore coordination, List<ClusterTestNode> nodes, ClusterMap map, ClusterRoutingOptions? routing)
    {
        Coordination = coordination;
        _nodes = nodes;
        _routing = routing;
        Map = map;
        Ring = HashRing.Create(nodes.Select(n => n.Id), VirtualNodes);
    }

    public InMemoryCoordinationStore Coordination { get; }

    public IReadOnlyList<ClusterTestNode> Nodes => _nodes;

    /// <summary>The map every node routes by once started.</summary>
    public ClusterMap Map { get; }

    /// <summary>The same ring the nodes build from <see cref="Map"/>: where a test's users and conversations live.</summary>
    public HashRing Ring { get; }

    public ClusterTestNode this[string id] => _nodes.Single(n => n.Id == id);

    /// <param name="configure">Settings of every node's broker (e.g. a small fan-out threshold, no presence debounce).</param>
    public static async Task<ClusterHarness> StartAsync(int count, ClusterRoutingOptions? routing = null, Action<BrokerOptions>? configure = null)
    {
        var coordination = new InMemoryCoordinationStore();
        var nodes = new List<ClusterTestNode>();
        for (var i = 1; i <= count; i++)
        {
            nodes.Add(await ClusterTestNode.StartAsync($"node{i}", coordination, routing, configure: configure));
        }

        var map = ClusterMap.Empty with { VirtualNodes = VirtualNodes };
        foreach (var node in nodes)
        {
            map = map.WithMember(new ClusterMember(node.Id, node.Coordinator.Self.MeshAddress, "", MemberState.Active));
        }

        var update = await nodes[0].Coordinator.TryUpdateMapAsync(map, CancellationToken.None);
        Assert.True(update.Applied, update.Error);
        using var timeout = new CancellationTokenSource(TestDevice.Timeout);
        foreach (var node in nodes)
        {
            await node.Cluster.WaitForEpochAsync((ulong)update.Map.Epoch, timeout.Token);
        }

        return new ClusterHarness(coordination, nodes, update.Map, routing) { _configure = configure };
    }

    /// <summary>
    /// Stops a node as a crash does (its sessions, its cluster layer with everything queued in memory, its mesh
    /// server and its coordinator go; its store stays) and starts it again over the same store and mesh port. The
    /// map is unchanged: the node comes back under the same id and address.
    /// </summary>
    public async Task<ClusterTestNode> RestartAsync(string id)
    {
        var old = this[id];
        var store = old.Broker.Store;
        var endpoint = old.Mesh.Endpoint;
        await old.DisposeAsync(keepStore: true);
        var restarted = await ClusterTestNode.StartAsync(id, Coordination, _routing, store, endpoint, _configure);
        _nodes[_nodes.IndexOf(old)] = restarted;
        using var timeout = new CancellationTokenSource(TestDevice.Timeout);
        await restarted.Cluster.WaitForEpochAsync((ulong)Map.Epoch, timeout.Token);
        return restarted;
    }

    /// <summary>Starts a node that is not in the map yet (a join adds it).</summary>
    public async Task<ClusterTestNode> AddNodeAsync(string id)
    {
        var node = await ClusterTestNode.StartAsync(id, Coordination, _routing, configure: _configure);
        _nodes.Add(node);
        return node;
    }

    /// <summary>The first map (seen by the first node) that <paramref name="condition"/> accepts; then waits until every
    /// node routes by it or a newer one.</summary>
    public async Task<ClusterMap> WaitForMapAsync(Func<ClusterMap, bool> condition, TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        await foreach (var map in _nodes[0].Coordinator.View.WatchMapAsync(cancel.Token))
        {
            if (condition(map))
            {
                foreach (var node in _nodes)
                {
                    await node.Cluster.WaitForEpochAsync((ulong)map.Epoch, cancel.Token);
                }

                return map;
            }
        }

        throw new InvalidOperationException("the map watch ended");
    }

    /// <summary>Completes when every node's forward queues are acked by their homes.</summary>
    public async Task DrainForwardsAsync(TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        foreach (var node in _nodes)
        {
            foreach (var other in _nodes)
            {
                if (other != node)
                {
                    await node.Cluster.WhenForwardedAsync(other.Id, cancel.Token);
                }
            }
        }
    }

    /// <summary>
    /// Stops a node as a crash does (as <see cref="RestartAsync"/>, its store kept) and leaves it down: its registration
    /// is gone, so the other nodes see it drop out of the live members; it stays in the map. <see cref="ReviveAsync"/>
    /// starts it again.
    /// </summary>
    public async Task KillAsync(string id)
    {
        var old = this[id];
        _down[id] = (old.Broker.Store, old.Mesh.Endpoint);
        _nodes.Remove(old);
        await old.DisposeAsync(keepStore: true);
    }

    /// <summary>Starts a node <see cref="KillAsync"/> stopped, over its store and mesh port, once it has the map.</summary>
    public async Task<ClusterTestNode> ReviveAsync(string id)
    {
        var (store, endpoint) = _down[id];
        _down.Remove(id);
        var revived = await ClusterTestNode.StartAsync(id, Coordination, _routing, store, endpoint, _configure);
        _nodes.Add(revived);
        using var timeout = new CancellationTokenSource(TestDevice.Timeout);
        await revived.Cluster.WaitForEpochAsync((ulong)Map.Epoch, timeout.Token);
        return revived;
    }

    /// <summary>Waits until <paramref name="observer"/> sees <paramref name="id"/> live (or not live).</summary>
    public async Task WaitForLivenessAsync(string observer, string id, bool live)
    {
        var node = this[observer];
        using var timeout = new CancellationTokenSource(TestDevice.Timeout);
        while (true)
        {
            var changed = node.Coordinator.View.WaitForChangeAsync(timeout.Token);
            if (node.Cluster.IsLive(id) == live)
            {
                return;
            }

            await changed;
        }
    }

    /// <summary>The first user id of the form <paramref name="prefix"/>N whose home is <paramref name="home"/>.</summary>
    public string UserAt(string prefix, string home, Func<string, bool>? also = null) => RingPlacement.UserAt(Ring, prefix, home, also);

    public async ValueTask DisposeAsync()
    {
        foreach (var node in Nodes)
        {
            await node.DisposeAsync();
        }

        foreach (var (store, _) in _down.Values)
        {
            await store.DisposeAsync();
        }

        Coordination.Dispose();
    }
}

/// <summary>One node of a <see cref="ClusterHarness"/>.</summary>
internal sealed class ClusterTestNode : IAsyncDisposable
{
    private ClusterTestNode(string id, SessionHarness broker, ClusterNode cluster, MeshServer mesh, InMemoryCoordinator coordinator)
    {
        Id = id;
        Broker = broker;
        Cluster = cluster;
        Mesh = mesh;
        Coordinator = coordinator;
    }

    public string Id { get; }

    public SessionHarness Broker { get; }

    public ClusterNode Cluster { get; }

    public InMemoryCoordinator Coordinator { get; }

    /// <summary>A node's store as cluster mode opens it (copy marks on: BrokerServices.StorageOptionsFrom).</summary>
    public static InMemoryChatStore NewStore() => new(new StorageOptions { InboxCopyMarks = true });

    public static async Task<ClusterTestNode> StartAsync(string id, InMemoryCoordinationStore coordination, ClusterRoutingOptions? routing, InMemoryChatStore? store = null, IPEndPoint? meshEndpoint = null, Action<BrokerOptions>? configure = null)
    {
        var broker = new SessionHarness(configure, store: store ?? NewStore()); // the node, not the harness, owns it
        var cluster = new ClusterNode(id, broker.Context.Chat, broker.Context.Directory, routing);
        cluster.UseSignals(broker.Context.Presence, broker.Context.Typing, broker.Context.Keys);
        cluster.UseAccounts(broker.Revocations, broker.Context.Settings);
        var mesh = await StartMeshAsync(meshEndpoint ?? new IPEndPoint(IPAddress.Loopback, 0), new MeshReceiver(id, cluster, cluster.MeshOptions));
        var coordinator = new InMemoryCoordinator(coordination, new ClusterOptions
        {
            NodeId = id,
            MeshListen = mesh.Endpoint,
            AdvertiseMesh = mesh.Endpoint.ToString(),
            AdvertiseClient = "",
            LeaseTtl = TimeSpan.FromSeconds(5),
        });
        await coordinator.StartAsync(CancellationToken.None);
        cluster.Start(coordinator.View, coordinator);
        return new ClusterTestNode(id, broker, cluster, mesh, coordinator);
    }

    public MeshServer Mesh { get; private set; }

    public Task<TestDevice> ConnectAsync(string user, string device, ulong resumeInboxSeq = 0) => Broker.ConnectAsync(user, device, resumeInboxSeq);

    /// <summary>Closes the mesh port: other nodes cannot reach this one (it can still reach them).</summary>
    public Task StopMeshAsync() => Mesh.DisposeAsync().AsTask();

    /// <summary>Opens the mesh port again at the same address, with the same receiver (a link that was cut, not a
    /// node that restarted).</summary>
    public async Task RestartMeshAsync() => Mesh = await StartMeshAsync(Mesh.Endpoint, Mesh.Receiver);

    public ValueTask DisposeAsync() => DisposeAsync(keepStore: false);

    public async ValueTask DisposeAsync(bool keepStore)
    {
        await Cluster.DisposeAsync();
        await Mesh.DisposeAsync();
        await Coordinator.DisposeAsync();
        await Broker.DisposeAsync();
        if (!keepStore)
        {
            await Broker.Store.DisposeAsync();
        }
    }

    /// <summary>Kestrel listens with SO_REUSEADDR, so a port this node's previous server released binds at once.</summary>
    private static Task<MeshServer> StartMeshAsync(IPEndPoint endpoint, MeshReceiver receiver) => MeshServer.StartAsync(endpoint, receiver);
}
