using System.Collections.Immutable;
using System.Runtime.CompilerServices;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// A node's cached copy of the cluster map and of the live members, fed by its coordinator's watch.
/// Reads are one volatile load (the hot path asks it per message); writers publish whole immutable values
/// under a lock and then wake every waiter, so a reader sees either the old or the new map, never a mix.
/// </summary>
public sealed class ClusterView
{
    private readonly Lock _lock = new();
    private readonly TimeProvider _time;
    private ClusterMap? _map;
    private ImmutableArray<NodeRegistration> _members = [];
    private long _disconnectedSinceTicks; // 0 = connected (or never connected: see _map)
    private string? _lastError;
    private long _leaseValidUntilStamp; // TimeProvider timestamp; 0 until the first confirmed grant or renewal

    // Completed and replaced on every change; a waiter takes it before reading the state, so a change made
    // between its read and its wait still wakes it.
    private TaskCompletionSource _changed = NewSignal();

    public ClusterView(TimeProvider? time = null)
    {
        _time = time ?? TimeProvider.System;
    }

    /// <summary>The current map; <see cref="ClusterMap.Empty"/> before the first read.</summary>
    public ClusterMap Map => Volatile.Read(ref _map) ?? ClusterMap.Empty;

    /// <summary>The map's epoch, or 0 before the first read.</summary>
    public long Epoch => Map.Epoch;

    /// <summary>True once the node has read a map (possibly the empty one) from the store.</summary>
    public bool HasMap => Volatile.Read(ref _map) is not null;

    /// <summary>
    /// True when the node has a map and its watch is connected: it has every change the store has made.
    /// False before the first read and while the store is unreachable (the node keeps serving with
    /// <see cref="Map"/>, which may then be stale).
    /// </summary>
    public bool HasCurrentMap => HasMap && Interlocked.Read(ref _disconnectedSinceTicks) == 0;

    /// <summary>When the node lost its watch on the store, or null while it has it.</summary>
    public DateTimeOffset? DisconnectedSince
    {
        get
        {
            var ticks = Interlocked.Read(ref _disconnectedSinceTicks);
            return ticks == 0 ? null : new DateTimeOffset(ticks, TimeSpan.Zero);
        }
    }

    /// <summary>How long the map may have been stale: zero while connected.</summary>
    public TimeSpan Staleness => DisconnectedSince is { } since ? _time.GetUtcNow() - since : TimeSpan.Zero;

    /// <summary>Times calls moved to another etcd member after one failed (a coordinator with several endpoints).</summary>
    public long MemberSwitches => Interlocked.Read(ref _memberSwitches);

    private long _memberSwitches;

    internal void RecordMemberSwitch() => Interlocked.Increment(ref _memberSwitches);

    /// <summary>The last error talking to the store, for status output; null when none yet.</summary>
    public string? LastError => Volatile.Read(ref _lastError);

    /// <summary>
    /// Records a grant or renewal of this node's lease that the store confirmed: sent at <paramref name="sentTimestamp"/>
    /// (<see cref="TimeProvider.GetTimestamp"/> of this view's clock, monotonic) with <paramref name="ttl"/>. The store
    /// starts the TTL when it receives the request, after it was sent, so the lease cannot expire before
    /// sent + TTL on a clock running at the store's rate: the fence (docs/cluster.md, "Fencing") counts from here.
    /// </summary>
    public void RecordLeaseRenewal(long sentTimestamp, TimeSpan ttl)
    {
        var until = sentTimestamp + (long)(ttl.TotalSeconds * _time.TimestampFrequency);
        long seen;
        do
        {
            seen = Interlocked.Read(ref _leaseValidUntilStamp);
            if (until <= seen)
            {
                return; // an older renewal's answer came last
            }
        }
        while (Interlocked.CompareExchange(ref _leaseValidUntilStamp, until, seen) != seen);
    }

    /// <summary>How long this node's lease is certainly still alive, on its own clock (negative once it may have
    /// expired); <see cref="TimeSpan.MinValue"/> before any confirmed renewal.</summary>
    public TimeSpan LeaseRemaining
    {
        get
        {
            var until = Interlocked.Read(ref _leaseValidUntilStamp);
            return until == 0 ? TimeSpan.MinValue : _time.GetElapsedTime(_time.GetTimestamp(), until);
        }
    }

    /// <summary>True while this node's lease is certainly alive for at least <paramref name="margin"/> more: a primary
    /// acknowledges only then (fencing).</summary>
    public bool IsLeaseValid(TimeSpan margin)
    {
        var until = Interlocked.Read(ref _leaseValidUntilStamp);
        return until != 0 && _time.GetTimestamp() + (long)(margin.TotalSeconds * _time.TimestampFrequency) < until;
    }

    /// <summary>Nodes that hold a live lease, sorted by id.</summary>
    public ImmutableArray<NodeRegistration> LiveMembers
    {
        get
        {
            lock (_lock)
            {
                return _members;
            }
        }
    }

    /// <summary>Completes at the next change of the map, the members or the connection state.</summary>
    public Task WaitForChangeAsync(CancellationToken cancellationToken) =>
        Volatile.Read(ref _changed).Task.WaitAsync(cancellationToken);

    /// <summary>
    /// The current map (once there is one), then every newer map as it arrives. A slow reader skips
    /// intermediate maps and gets the newest: each map is the whole state, so acting on the newest is enough.
    /// </summary>
    public async IAsyncEnumerable<ClusterMap> WatchMapAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var yielded = -1L;
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task;
            var map = Volatile.Read(ref _map);
            if (map is not null && map.Epoch > yielded)
            {
                yielded = map.Epoch;
                yield return map;
                continue;
            }

            await changed.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The live members now, then each time the set changes.</summary>
    public async IAsyncEnumerable<ImmutableArray<NodeRegistration>> WatchMembersAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        ImmutableArray<NodeRegistration>? yielded = null;
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task;
            var members = LiveMembers;
            if (HasMap && (yielded is null || !yielded.Value.SequenceEqual(members)))
            {
                yielded = members;
                yield return members;
                continue;
            }

            await changed.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Takes <paramref name="map"/> if it is newer than the one held (or the first); true if taken.</summary>
    internal bool PublishMap(ClusterMap map)
    {
        lock (_lock)
        {
            if (_map is not null && map.Epoch <= _map.Epoch)
            {
                return false;
            }

            Volatile.Write(ref _map, map);
            SignalLocked();
            return true;
        }
    }

    internal void PublishMembers(ImmutableArray<NodeRegistration> members)
    {
        lock (_lock)
        {
            if (_members.SequenceEqual(members))
            {
                return;
            }

            _members = members;
            SignalLocked();
        }
    }

    internal void MarkConnected()
    {
        lock (_lock)
        {
            if (Interlocked.Exchange(ref _disconnectedSinceTicks, 0) != 0)
            {
                SignalLocked();
            }
        }
    }

    internal void MarkDisconnected(string error)
    {
        lock (_lock)
        {
            Volatile.Write(ref _lastError, error);
            if (Interlocked.Read(ref _disconnectedSinceTicks) == 0)
            {
                Interlocked.Exchange(ref _disconnectedSinceTicks, _time.GetUtcNow().UtcTicks);
                SignalLocked();
            }
        }
    }

    internal void RecordError(string error) => Volatile.Write(ref _lastError, error);

    private void SignalLocked()
    {
        var previous = _changed;
        Volatile.Write(ref _changed, NewSignal());
        previous.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Members sorted by id, as the view holds them.</summary>
    internal static ImmutableArray<NodeRegistration> Sorted(IEnumerable<NodeRegistration> members)
    {
        var builder = ImmutableArray.CreateBuilder<NodeRegistration>();
        builder.AddRange(members);
        builder.Sort(static (a, b) => string.CompareOrdinal(a.NodeId, b.NodeId));
        return builder.ToImmutable();
    }
}
