using System.Collections.Immutable;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// An etcd stand-in for unit tests: one per simulated cluster, shared by its <see cref="InMemoryCoordinator"/>s.
/// It keeps etcd's rules that the contract depends on: one revision counter for every write, the map's epoch
/// is the revision of its last write, registrations live as long as their lease, and while the store is
/// "unreachable" every request fails and leases do not expire (etcd restores leases with a fresh TTL when it
/// comes back).
/// </summary>
public sealed class InMemoryCoordinationStore : IDisposable
{
    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private readonly ITimer _expiry;
    private readonly Dictionary<string, (NodeRegistration Registration, long LeaseId)> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<long, Lease> _leases = [];
    private readonly List<ClusterView> _watchers = [];
    private long _revision;
    private long _nextLeaseId = 0x1000;
    private ClusterMap _map = ClusterMap.Empty;
    private bool _reachable = true;

    public InMemoryCoordinationStore(TimeProvider? time = null)
    {
        _time = time ?? TimeProvider.System;
        // etcd checks lease expiry every 500 ms; checking more often only makes tests faster.
        _expiry = _time.CreateTimer(_ => ExpireLeases(), null, TimeSpan.FromMilliseconds(50), TimeSpan.FromMilliseconds(50));
    }

    /// <summary>Makes every request fail (false) or succeed again (true), as an etcd outage does.</summary>
    public void SetReachable(bool reachable)
    {
        lock (_lock)
        {
            if (_reachable == reachable)
            {
                return;
            }

            _reachable = reachable;
            if (reachable)
            {
                var now = _time.GetUtcNow();
                foreach (var lease in _leases.Values)
                {
                    lease.ExpiresAt = now + lease.Ttl;
                }
            }

            foreach (var view in _watchers)
            {
                if (reachable)
                {
                    view.PublishMap(_map);
                    view.PublishMembers(MembersLocked());
                    view.MarkConnected();
                }
                else
                {
                    view.MarkDisconnected("watch: the in-memory store is unreachable");
                }
            }
        }
    }

    internal long GrantLease(TimeSpan ttl)
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            var id = ++_nextLeaseId;
            _leases[id] = new Lease(ttl) { ExpiresAt = _time.GetUtcNow() + ttl };
            return id;
        }
    }

    /// <summary>Extends the lease; false when it has expired (or was revoked).</summary>
    internal bool KeepAlive(long leaseId)
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            if (!_leases.TryGetValue(leaseId, out var lease))
            {
                return false;
            }

            lease.ExpiresAt = _time.GetUtcNow() + lease.Ttl;
            return true;
        }
    }

    internal void Revoke(long leaseId)
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            RemoveLeaseLocked(leaseId);
        }
    }

    /// <summary>Puts the registration under the lease if no node holds the id; false when one does.</summary>
    internal bool TryRegister(NodeRegistration registration, long leaseId)
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            if (_nodes.ContainsKey(registration.NodeId) || !_leases.TryGetValue(leaseId, out var lease))
            {
                return false;
            }

            _revision++;
            _nodes[registration.NodeId] = (registration, leaseId);
            lease.Keys.Add(registration.NodeId);
            PublishMembersLocked();
            return true;
        }
    }

    internal ClusterMap ReadMap()
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            return _map;
        }
    }

    internal ImmutableArray<NodeRegistration> ReadMembers()
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            return MembersLocked();
        }
    }

    internal MapUpdateResult CompareAndSet(ClusterMap proposed)
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            if (_map.Epoch != proposed.Epoch)
            {
                return new MapUpdateResult(MapUpdateStatus.Conflict, _map,
                    $"the map changed: it is at epoch {_map.Epoch}, the change was made on epoch {proposed.Epoch}");
            }

            _map = proposed with { Epoch = ++_revision };
            foreach (var view in _watchers)
            {
                view.PublishMap(_map);
            }

            return new MapUpdateResult(MapUpdateStatus.Applied, _map, null);
        }
    }

    /// <summary>Feeds <paramref name="view"/> the current state and every change until <see cref="Unwatch"/>.</summary>
    internal void Watch(ClusterView view)
    {
        lock (_lock)
        {
            ThrowIfUnreachableLocked();
            _watchers.Add(view);
            view.PublishMap(_map);
            view.PublishMembers(MembersLocked());
            view.MarkConnected();
        }
    }

    internal void Unwatch(ClusterView view)
    {
        lock (_lock)
        {
            _watchers.Remove(view);
        }
    }

    private void ExpireLeases()
    {
        lock (_lock)
        {
            if (!_reachable)
            {
                return;
            }

            var now = _time.GetUtcNow();
            List<long>? expired = null;
            foreach (var (id, lease) in _leases)
            {
                if (lease.ExpiresAt <= now)
                {
                    (expired ??= []).Add(id);
                }
            }

            foreach (var id in expired ?? [])
            {
                RemoveLeaseLocked(id);
            }
        }
    }

    private void RemoveLeaseLocked(long leaseId)
    {
        if (!_leases.Remove(leaseId, out var lease))
        {
            return;
        }

        foreach (var key in lease.Keys)
        {
            if (_nodes.TryGetValue(key, out var held) && held.LeaseId == leaseId)
            {
                _nodes.Remove(key);
            }
        }

        if (lease.Keys.Count > 0)
        {
            _revision++;
            PublishMembersLocked();
        }
    }

    private void PublishMembersLocked()
    {
        var members = MembersLocked();
        foreach (var view in _watchers)
        {
            view.PublishMembers(members);
        }
    }

    private ImmutableArray<NodeRegistration> MembersLocked()
    {
        var list = new List<NodeRegistration>(_nodes.Count);
        foreach (var held in _nodes.Values)
        {
            list.Add(held.Registration);
        }

        return ClusterView.Sorted(list);
    }

    private void ThrowIfUnreachableLocked()
    {
        if (!_reachable)
        {
            throw new ClusterCoordinationException("the in-memory coordination store is unreachable");
        }
    }

    public void Dispose() => _expiry.Dispose();

    private sealed class Lease(TimeSpan ttl)
    {
        public TimeSpan Ttl { get; } = ttl;
        public DateTimeOffset ExpiresAt { get; set; }
        public List<string> Keys { get; } = [];
    }
}
