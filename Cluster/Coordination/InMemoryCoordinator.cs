namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// <see cref="IClusterCoordinator"/> on an <see cref="InMemoryCoordinationStore"/>, for unit tests of the
/// ring, the mesh and the broker that need several nodes in one process. Same contract as
/// <see cref="EtcdCoordinator"/> (one test suite runs against both).
/// </summary>
public sealed class InMemoryCoordinator : IClusterCoordinator
{
    private readonly InMemoryCoordinationStore _store;
    private readonly ClusterOptions _options;
    private readonly TimeProvider _time;
    private readonly CancellationTokenSource _stop = new();
    private Task _keepAliveLoop = Task.CompletedTask;
    private long _leaseId;
    private int _started;
    private int _disposed;
    private bool _revokeOnDispose = true;

    public InMemoryCoordinator(InMemoryCoordinationStore store, ClusterOptions options)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Validate() is { } error)
        {
            throw new ArgumentException(error, nameof(options));
        }

        _store = store;
        _options = options;
        _time = options.Time;
        Self = new NodeRegistration(options.NodeId, options.ResolvedAdvertiseMesh, options.AdvertiseClient);
        View = new ClusterView(_time);
    }

    public NodeRegistration Self { get; }

    public ClusterView View { get; }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("the coordinator is already started");
        }

        await RegisterAsync(cancellationToken).ConfigureAwait(false);
        _store.Watch(View);
        _keepAliveLoop = Task.Run(() => KeepAliveLoopAsync(_stop.Token), CancellationToken.None);
    }

    public Task<ClusterMap> ReadMapAsync(CancellationToken cancellationToken)
    {
        var map = _store.ReadMap();
        View.PublishMap(map);
        return Task.FromResult(map);
    }

    public Task<System.Collections.Immutable.ImmutableArray<NodeRegistration>> ReadLiveMembersAsync(CancellationToken cancellationToken) =>
        Task.FromResult(_store.ReadMembers());

    public Task<MapUpdateResult> TryUpdateMapAsync(ClusterMap proposed, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(proposed);
        if (proposed.Validate() is { } invalid)
        {
            throw new ArgumentException(invalid, nameof(proposed));
        }

        try
        {
            var result = _store.CompareAndSet(proposed);
            View.PublishMap(result.Map);
            return Task.FromResult(result);
        }
        catch (ClusterCoordinationException e)
        {
            View.RecordError(e.Message);
            return Task.FromResult(new MapUpdateResult(MapUpdateStatus.Unavailable, View.Map,
                $"map change refused: {e.Message}. The node keeps serving with the map of epoch {View.Epoch}."));
        }
    }

    /// <summary>Stops renewing the lease and watching, and leaves the registration to expire, as a crash does.</summary>
    internal void StopAsIfCrashed()
    {
        _revokeOnDispose = false;
        _stop.Cancel();
        _store.Unwatch(View);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        await _keepAliveLoop.ConfigureAwait(false);
        _store.Unwatch(View);
        if (_revokeOnDispose && _leaseId != 0)
        {
            try
            {
                _store.Revoke(_leaseId);
            }
            catch (ClusterCoordinationException)
            {
                // Unreachable: the lease expires by itself.
            }
        }

        _stop.Dispose();
    }

    private async Task RegisterAsync(CancellationToken cancellationToken)
    {
        var giveUpAt = _time.GetUtcNow() + _options.LeaseTtl + _options.EtcdTimeout;
        while (true)
        {
            // A new lease per attempt: one granted before a wait would run out during it.
            var sentStamp = _time.GetTimestamp();
            var leaseId = _store.GrantLease(_options.LeaseTtl);
            if (_store.TryRegister(Self, leaseId))
            {
                _leaseId = leaseId;
                View.RecordLeaseRenewal(sentStamp, _options.LeaseTtl);
                return;
            }

            _store.Revoke(leaseId);
            if (_time.GetUtcNow() >= giveUpAt)
            {
                throw new ClusterCoordinationException(
                    $"node id \"{Self.NodeId}\" is registered by another live node; every node needs its own cluster.node_id");
            }

            await Task.Delay(_options.LeaseTtl / 8, _time, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task KeepAliveLoopAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(_options.LeaseTtl / 3, _time, stop).ConfigureAwait(false);
                var sentStamp = _time.GetTimestamp();
                if (_store.KeepAlive(_leaseId))
                {
                    View.RecordLeaseRenewal(sentStamp, _options.LeaseTtl);
                }
                else
                {
                    View.RecordError($"the lease of node \"{Self.NodeId}\" expired; registering again");
                    await RegisterAsync(stop).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (ClusterCoordinationException e)
            {
                View.RecordError($"lease keepalive: {e.Message}");
            }
        }
    }
}
