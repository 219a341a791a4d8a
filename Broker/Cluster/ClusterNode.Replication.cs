using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Cluster;

// Replication (docs/cluster.md, "Replication"). As a primary: once the map has replica sets, the store's committed
// batches go through a ReplicationTap, which ships them to the replicas on stream 1 of each node pair and completes them
// when every in-sync replica has them. A watchdog proposes the removal of replicas that lag, catches up the replicas of
// this node's set that are not in sync, and (on the first live Active member) writes the sets the ring gives. As a
// replica: the sink writes what a primary sent (ReplicaRecords, ReplicaCopy) before its ack.
public sealed partial class ClusterNode
{
    private readonly Lock _replicationLock = new();
    private ReplicationTap? _tap;
    private Task _replicationLoop = Task.CompletedTask;
    private TaskCompletionSource _replicationWake = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly HashSet<string> _removing = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _removalRefusedAt = new(StringComparer.Ordinal); // key → map epoch
    private readonly HashSet<string> _catchingUp = new(StringComparer.Ordinal);
    private long _setsCheckedEpoch = -1;

    /// <summary>Counters of replication on this node (as primary and as replica).</summary>
    public ReplicationMetrics Replication { get; } = new();

    /// <summary>Committed batches waiting for replicas now (0 without replication).</summary>
    public int ReplicationPendingBatches => Volatile.Read(ref _tap)?.PendingBatches ?? 0;

    /// <summary>Seconds the oldest batch waiting for replicas has waited (0 when none).</summary>
    public double ReplicationLagSeconds => Volatile.Read(ref _tap)?.LagSeconds ?? 0;

    private void StartReplication(ClusterView view) =>
        _replicationLoop = Task.Run(() => WatchReplicationAsync(view, _stop.Token));

    /// <summary>After a map is applied: the tap learns the map's sets (installed in the store the first time a map has
    /// any: a cluster without replicas keeps the single-node commit path).</summary>
    private void OnReplicationMap(RoutingState s)
    {
        var tap = Volatile.Read(ref _tap);
        if (tap is null)
        {
            if (s.Map.ReplicaSets.IsDefaultOrEmpty || _chat.Store is not IReplicaStore replicaStore)
            {
                return;
            }

            lock (_replicationLock)
            {
                tap = _tap;
                if (tap is null)
                {
                    // Installed while the node serves: a batch being built now may reach the tap with part of its
                    // records. No replica is in sync yet (a set starts out of sync), and the catch-ups read the store
                    // after this, so nothing is missed.
                    tap = new ReplicationTap(this, _chat.Store, _options, Replication, _logger);
                    tap.OnMap(s);
                    replicaStore.SetReplicationTap(tap);
                    Volatile.Write(ref _tap, tap);
                }
            }
        }
        else
        {
            tap.OnMap(s);
        }

        WakeReplication();
    }

    private void WakeReplication()
    {
        var wake = Interlocked.Exchange(ref _replicationWake, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        wake.TrySetResult();
    }

    private async Task WatchReplicationAsync(ClusterView view, CancellationToken stop)
    {
        var period = TimeSpan.FromMilliseconds(Math.Clamp(_options.ReplicationTimeout.TotalMilliseconds / 4, 20, 1000));
        try
        {
            while (true)
            {
                var wake = Volatile.Read(ref _replicationWake).Task;
                try
                {
                    await ReplicationRoundAsync(view, stop).ConfigureAwait(false);
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException or ClusterCoordinationException or StorageException
                    || (e is OperationCanceledException && !stop.IsCancellationRequested))
                {
                    ReplicationLog.WatchdogFailed(_logger, e);
                }

                await Task.WhenAny(wake, Task.Delay(period, stop)).ConfigureAwait(false);
                stop.ThrowIfCancellationRequested();
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async Task ReplicationRoundAsync(ClusterView view, CancellationToken stop)
    {
        if (_membership is not { } membership || State is not { } s)
        {
            return;
        }

        // The sets the ring gives, written by the first live Active member when the map's are not those.
        var map = s.Map;
        if (map.ReplicationFactor > 1 && _setsCheckedEpoch != map.Epoch && view.HasCurrentMap
            && !view.LiveMembers.IsDefaultOrEmpty && RankAmongLiveActive(map, view.LiveMembers) == 0)
        {
            var current = ReplicaPlacement.IsCurrent(map);
            if (!current)
            {
                var result = await membership.WriteReplicaSetsAsync(stop).ConfigureAwait(false);
                ReplicationLog.SetsWritten(_logger, result.Status.ToString(), result.Message);
                current = result.Succeeded;
            }

            if (current)
            {
                _setsCheckedEpoch = map.Epoch;
            }
        }

        if (Volatile.Read(ref _tap) is not { } tap)
        {
            return;
        }

        foreach (var (primary, replica) in tap.FindLagging())
        {
            var key = primary + "/" + replica;
            lock (_replicationLock)
            {
                if ((_removalRefusedAt.TryGetValue(key, out var refusedAt) && refusedAt == map.Epoch) || !_removing.Add(key))
                {
                    continue; // a proposal for it is under way, or the map it was refused on is still the map
                }
            }

            _ = Task.Run(async () =>
            {
                try
                {
                    var result = await membership.SetInSyncAsync(primary, replica, inSync: false, NodeId, null, stop).ConfigureAwait(false);
                    if (result.Status == MapChangeStatus.Applied)
                    {
                        Interlocked.Increment(ref Replication.InSyncRemovals);
                    }
                    else if (result.Status == MapChangeStatus.Refused)
                    {
                        Interlocked.Increment(ref Replication.InSyncRemovalsRefused);
                        lock (_replicationLock)
                        {
                            _removalRefusedAt[key] = result.Map.Epoch; // not again on this map (a log line per watchdog round)
                        }
                    }

                    ReplicationLog.Removal(_logger, replica, primary, result.Status.ToString(), result.Message);
                }
                catch (Exception e) when (e is ClusterCoordinationException or OperationCanceledException)
                {
                }
                finally
                {
                    lock (_replicationLock)
                    {
                        _removing.Remove(key);
                    }
                }
            }, CancellationToken.None);
        }

        foreach (var replica in tap.ToCatchUp())
        {
            lock (_replicationLock)
            {
                if (!_catchingUp.Add(replica))
                {
                    continue;
                }
            }

            _ = Task.Run(async () =>
            {
                try
                {
                    await tap.CatchUpAsync(replica, membership, stop).ConfigureAwait(false);
                }
                finally
                {
                    lock (_replicationLock)
                    {
                        _catchingUp.Remove(replica);
                    }
                }
            }, CancellationToken.None);
        }
    }

    /// <summary>Replica: writes a primary's records (a committed batch, or a page of its catch-up) before the ack, so the
    /// ack means durable here. Refused with STALE_EPOCH when the sender is Failed or not a member in this node's map: a
    /// primary that was failed over can never complete a write through a replica that knows it.</summary>
    private Task? HandleReplicaBatch(MeshInboundBatch batch, int index, MeshInboundMessage message, RoutingState s, CancellationToken cancellationToken)
    {
        if (s.Map.FindMember(batch.Origin) is not { State: not MemberState.Failed })
        {
            Interlocked.Increment(ref Replication.BatchesRefused);
            batch.RefuseStaleEpoch(index, s.Epoch, "");
            return null;
        }

        var wire = ReplicaBatch.Parser.ParseFrom(message.Payload.Span);
        var records = new ReplicaRecord[wire.Records.Count];
        for (var i = 0; i < records.Length; i++)
        {
            var r = wire.Records[i];
            if (r.Family > byte.MaxValue)
            {
                throw new ArgumentException($"a replicated record names family {r.Family}");
            }

            records[i] = new ReplicaRecord((byte)r.Family, r.Key.Memory, r.Delete ? default : r.Value.Memory, r.Delete);
        }

        if (_chat.Store is not IReplicaStore store)
        {
            batch.Reject(index, (uint)ReasonCode.ServerUnavailable);
            return null;
        }

        return ApplyReplicaAsync(store, batch, index, records, cancellationToken);
    }

    /// <summary>Replica: a primary starts catching this node up. Deletes what this node holds of the primary's ranges it
    /// replicates, in every family but the logs (where this node's own copies for its users' inboxes live too, and
    /// which only retention deletes from), so the copy that follows leaves nothing behind that the primary deleted while
    /// this node was out of sync. Only under the primary's own map (the same epoch, so the same ring): under another
    /// ring the ranges could be another primary's, for which this node is in sync.</summary>
    private Task? HandleReplicaReset(MeshInboundBatch batch, int index, MeshInboundMessage message, RoutingState s, CancellationToken cancellationToken)
    {
        if (s.Map.FindMember(batch.Origin) is not { State: not MemberState.Failed } || message.Epoch != s.Epoch
            || s.Owners is not { } owners || _chat.Store is not IReplicaStore store)
        {
            Interlocked.Increment(ref Replication.BatchesRefused);
            batch.RefuseStaleEpoch(index, s.Epoch, "");
            return null;
        }

        var selector = new ReplicatedRanges(owners.Ring, owners.Ring.IndexOf(batch.Origin), s.SelfIndex, Math.Max(1, ReplicaPlacement.EffectiveFactor(s.Map)));
        var writes = new List<Task>();
        var position = RangePosition.Start;
        while (true)
        {
            // Read and enqueued here, before the stream's next message is handled: the store applies the deletes first.
            var page = _chat.Store.ExportRange(selector, position, _options.HandoverChunkRecords, 1 << 20);
            var deletes = new List<ReplicaRecord>(page.Records.Count);
            foreach (var r in page.Records)
            {
                if (!ChatStore.IsLogRecord(r.Family))
                {
                    deletes.Add(new ReplicaRecord(r.Family, r.Key, default, true));
                }
            }

            if (deletes.Count > 0)
            {
                writes.Add(store.ApplyReplicatedAsync(deletes, cancellationToken));
            }

            if (page.Done)
            {
                break;
            }

            position = page.Next;
        }

        Interlocked.Increment(ref Replication.Resets);
        return writes.Count == 0 ? null : Task.WhenAll(writes);
    }

    private async Task ApplyReplicaAsync(IReplicaStore store, MeshInboundBatch batch, int index, ReplicaRecord[] records, CancellationToken cancellationToken)
    {
        try
        {
            await store.ApplyReplicatedAsync(records, cancellationToken).ConfigureAwait(false);
        }
        catch (ArgumentException)
        {
            batch.Reject(index, (uint)ReasonCode.InvalidField);
            return;
        }

        Interlocked.Increment(ref Replication.BatchesApplied);
        Interlocked.Add(ref Replication.RecordsApplied, records.Length);

        // The directory caches members in front of the store: a replicated change of a conversation's members must not
        // leave this node (a future primary) with the old list.
        foreach (var record in records)
        {
            try
            {
                if (ChatStore.TryGetOwner(record, out var owner) && !owner.IsUser)
                {
                    _directory.Invalidate(owner.ConversationId);
                }
            }
            catch (ArgumentException)
            {
            }
        }
    }
}
