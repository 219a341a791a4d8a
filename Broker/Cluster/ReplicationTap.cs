using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh.Wire;
using ChatBroker.Cluster.Ring;
using ChatBroker.Storage;
using Google.Protobuf;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// The primary's half of replication (docs/cluster.md, "Replication"): the store hands it every committed batch, in
/// commit order; it sends each replica the batch's records on the replica stream (stream 1 of the node pair) and
/// completes the batch (its callers hear SENT, a moved cursor, a stored receipt) once every replica it waits for has
/// acked, in commit order. It waits for the in-sync replicas of the map (and for a replica at the end of its catch-up);
/// a replica that does not ack within <see cref="ClusterRoutingOptions.ReplicationTimeout"/>, or whose unacked batches
/// pass <see cref="ClusterRoutingOptions.ReplicationMaxQueueBatches"/>, is proposed for removal from the in-sync list by
/// a compare-and-set, and the batches go on waiting for it until this node has the map without it: the map decides,
/// never the primary alone. A replica of this node's set that is not in sync is caught up (every new batch, then a copy
/// of this node's ranges on the same stream) and added by compare-and-set.
/// </summary>
/// <remarks>
/// <c>_lock</c> orders the batches' sends against each other and against the catch-up's copy pages: a page read under
/// the lock holds every batch sent before it (they were committed before), and a batch sent after it writes its records
/// again, which changes nothing. Batches complete in commit order (a queue under the lock).
/// </remarks>
internal sealed class ReplicationTap : IReplicationTap
{
    private readonly ClusterNode _node;
    private readonly IChatStore _store;
    private readonly ClusterRoutingOptions _options;
    private readonly ReplicationMetrics _metrics;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly LinkedList<Pending> _pending = new();
    private readonly LinkedList<Pending> _later = new();
    private readonly Dictionary<string, Replica> _replicas = new(StringComparer.Ordinal);
    private Plan _plan = Plan.None;
    private bool _closed;

    public ReplicationTap(ClusterNode node, IChatStore store, ClusterRoutingOptions options, ReplicationMetrics metrics, ILogger logger)
    {
        _node = node;
        _store = store;
        _options = options;
        _metrics = metrics;
        _logger = logger;
    }

    /// <summary>Committed batches waiting for replicas now.</summary>
    public int PendingBatches
    {
        get
        {
            lock (_lock)
            {
                return _pending.Count;
            }
        }
    }

    /// <summary>Seconds the oldest waiting batch has waited (0 when none): replication's lag.</summary>
    public double LagSeconds
    {
        get
        {
            lock (_lock)
            {
                return _pending.First is { } first ? TimeSpanSince(first.Value.Started).TotalSeconds : 0;
            }
        }
    }

    /// <summary>True while <paramref name="replica"/> is being caught up (or waits to be added after it).</summary>
    public bool IsCatchingUp(string replica)
    {
        lock (_lock)
        {
            return _replicas.TryGetValue(replica, out var r) && r.Phase != Phase.None;
        }
    }

    // ---- the store's committed batches ----

    public void OnCommitted(CommittedBatch batch)
    {
        var s = _node.State;
        lock (_lock)
        {
            var plan = _plan;
            var pending = new Pending(batch, TimeSpanStamp()) { Failed = _closed };
            _pending.AddLast(pending);
            if (plan.SelfFailed && batch.Records.Count > 0)
            {
                // This node was failed over: it serves nothing, and a write that reaches the tap now (a commit that
                // began before this node had the map: a process paused mid-commit, the checker's SIGSTOP) is on no
                // replica. It is never acknowledged; the device's retry goes to the node serving the range now.
                // (Completing it here let a resumed old primary say SENT for seqs the new primary gave to other
                // messages.)
                pending.Failed = true;
                Drain();
                return;
            }

            if (s is null || plan.Owners is null || plan.IsEmpty || plan.SelfFailed)
            {
                Drain(); // nothing to wait for (no replicas; or only node-local state of a Failed node)
                return;
            }

            Dictionary<string, List<ReplicaRecord>>? byReplica = null;
            List<ReplicaRecord>? unplaced = null;
            foreach (var record in batch.Records)
            {
                var targets = plan.TargetsOf(record);
                if (targets is null)
                {
                    (unplaced ??= []).Add(record);
                    continue;
                }

                foreach (var target in targets)
                {
                    byReplica ??= new Dictionary<string, List<ReplicaRecord>>(StringComparer.Ordinal);
                    if (!byReplica.TryGetValue(target, out var list))
                    {
                        byReplica[target] = list = [];
                    }

                    list.Add(record);
                }
            }

            if (unplaced is not null && byReplica is not null)
            {
                // Records of no range this node serves (a home's copy of another owner's message, whose inbox entries
                // are this node's) or of none at all go with the batch's other records.
                foreach (var list in byReplica.Values)
                {
                    list.AddRange(unplaced);
                }
            }

            if (byReplica is not null)
            {
                AddMessagesOfEntries(batch.Records, byReplica);
                if (HoldLocalEntries(plan, batch.Records, byReplica) is { } later)
                {
                    pending.Later = later;
                    _later.AddLast(pending);
                }

                ShipParts(s, byReplica, pending);
            }

            ShipReady(s);
            Drain();
        }
    }

    /// <summary>Under the lock: sends each target its part of a batch; the batch waits for the targets the map lists in
    /// sync (and for one at the end of its catch-up). A replica of this node's set that is out of sync gets batches only
    /// while it catches up.</summary>
    private void ShipParts(RoutingState s, Dictionary<string, List<ReplicaRecord>> parts, Pending pending)
    {
        List<(string Target, List<ReplicaRecord> Records, bool Waited)>? sends = null;
        foreach (var (target, records) in parts)
        {
            var phase = ReplicaOf(target).Phase;
            if (records.Count == 0 || (!_plan.IsWaited(target) && phase == Phase.None))
            {
                continue;
            }

            var waited = _plan.IsWaited(target) || phase == Phase.Final;
            if (waited)
            {
                pending.Waiting.Add(target); // all of them before the first send, which may complete at once
            }

            (sends ??= []).Add((target, records, waited));
        }

        foreach (var (target, records, waited) in sends ?? [])
        {
            Ship(s, target, ClusterOpKind.ReplicaRecords, records, pending, waited);
        }
    }

    /// <summary>
    /// A local append (this node serves the conversation and is the home of a member: the message and the member's
    /// inbox entry commit in one batch) must not reach the member's replicas before the conversation's: if this node
    /// failed with the user's replica holding the entry and a conversation replica lacking the message, the user's new
    /// home would serve that message at its seq while the conversation's new primary gives the seq to another one (the
    /// checker's order violations, seeds 322 and 324). So those entries, and the log records that go with them to a
    /// node that is not a replica of the conversation, are taken out of the batch's parts here and sent once every
    /// replica the batch waits for has acked the rest (<see cref="ShipReady"/>), as a forward queue sends a remote home
    /// only what its replicas have. Returns the held parts by target, or null when there are none.
    /// </summary>
    private static Dictionary<string, List<ReplicaRecord>>? HoldLocalEntries(Plan plan, IReadOnlyList<ReplicaRecord> all, Dictionary<string, List<ReplicaRecord>> parts)
    {
        Dictionary<(ulong, ulong), string[]>? own = null;
        HashSet<ulong>? conversations = null;
        foreach (var record in all)
        {
            if (ChatStore.TryGetMessagePosition(record, out var isLog, out var conversation, out var seq) && isLog && plan.TargetsOf(record) is { } targets)
            {
                (own ??= [])[(conversation, seq)] = targets;
                (conversations ??= []).Add(conversation);
            }
        }

        if (own is null)
        {
            return null;
        }

        Dictionary<string, List<ReplicaRecord>>? later = null;
        foreach (var (target, list) in parts)
        {
            // One pass: the records that stay move to the front of the list, the held ones to their own.
            List<ReplicaRecord>? held = null;
            var kept = 0;
            for (var i = 0; i < list.Count; i++)
            {
                if (IsHeld(list[i], target, own, conversations!))
                {
                    (held ??= []).Add(list[i]);
                }
                else
                {
                    list[kept++] = list[i];
                }
            }

            if (held is not null)
            {
                list.RemoveRange(kept, list.Count - kept);
                (later ??= new Dictionary<string, List<ReplicaRecord>>(StringComparer.Ordinal))[target] = held;
            }
        }

        return later;

        // The entries of the batch's own messages, their log records for a node that does not replicate the conversation,
        // and the members' copy marks of those conversations: a user's replica that had the mark without the entry would,
        // as the user's next home, drop the entry when the conversation's next primary re-forwards it (seed 324 on
        // f325191: two messages missing from a member's inbox).
        static bool IsHeld(in ReplicaRecord record, string target, Dictionary<(ulong, ulong), string[]> own, HashSet<ulong> conversations)
        {
            if (ChatStore.TryGetMessagePosition(record, out var isLog, out var conversation, out var seq))
            {
                return own.TryGetValue((conversation, seq), out var targets) && (!isLog || Array.IndexOf(targets, target) < 0);
            }

            return ChatStore.TryGetCopyMarkConversation(record, out conversation) && conversations.Contains(conversation);
        }
    }

    /// <summary>Under the lock: sends the held parts of the batches whose other parts every waited replica has acked, in
    /// commit order (a batch's held entries never overtake an earlier batch's). A batch that failed sends nothing more.</summary>
    private void ShipReady(RoutingState? s)
    {
        while (_later.First is { } head)
        {
            var p = head.Value;
            if (!p.Failed && p.Waiting.Count > 0)
            {
                return;
            }

            _later.RemoveFirst();
            var parts = p.Later!;
            p.Later = null;
            if (p.Failed)
            {
                continue;
            }

            if (s is null)
            {
                p.Failed = true; // no routing state to send with (not seen: the batch's first parts were sent with one)
                continue;
            }

            Interlocked.Increment(ref _metrics.BatchesHeld);
            p.WaitingSince = TimeSpanStamp();
            ShipParts(s, parts, p);
        }
    }

    /// <summary>
    /// A user's replicas get the inbox entries of the user's range, a conversation's replicas its log: an entry written
    /// with its message in one batch (a local append whose recipient's home is here, a home's copy) would reach a replica
    /// of the user without the message, which that node, once it serves the user after a failover, could not deliver.
    /// So each target that gets an entry also gets the batch's log record it points at.
    /// </summary>
    private static void AddMessagesOfEntries(IReadOnlyList<ReplicaRecord> all, Dictionary<string, List<ReplicaRecord>> byReplica)
    {
        Dictionary<(ulong, ulong), ReplicaRecord>? logs = null;
        foreach (var record in all)
        {
            if (ChatStore.TryGetMessagePosition(record, out var isLog, out var conversation, out var seq) && isLog)
            {
                (logs ??= [])[(conversation, seq)] = record;
            }
        }

        if (logs is null)
        {
            return;
        }

        foreach (var list in byReplica.Values)
        {
            HashSet<(ulong, ulong)>? has = null;
            List<ReplicaRecord>? wanted = null;
            foreach (var record in list)
            {
                if (ChatStore.TryGetMessagePosition(record, out var isLog, out var conversation, out var seq))
                {
                    if (isLog)
                    {
                        (has ??= []).Add((conversation, seq));
                    }
                    else if (logs.TryGetValue((conversation, seq), out var log))
                    {
                        (wanted ??= []).Add(log);
                    }
                }
            }

            if (wanted is null)
            {
                continue;
            }

            foreach (var log in wanted)
            {
                if (ChatStore.TryGetMessagePosition(log, out _, out var conversation, out var seq) && (has ??= []).Add((conversation, seq)))
                {
                    list.Add(log);
                }
            }
        }
    }

    /// <summary>Under the lock: sends <paramref name="records"/> to <paramref name="target"/> (split to fit the mesh's
    /// message size) and, when <paramref name="pending"/> waits for it, removes the target from its wait once the last
    /// part is acked. Returns the last part's outcome, or null when the link's queue is full or there is no link.</summary>
    private Task<MeshReply>? Ship(RoutingState s, string target, ClusterOpKind kind, IReadOnlyList<ReplicaRecord> records, Pending? pending, bool waited)
    {
        var replica = ReplicaOf(target);
        var link = s.LinkOf(target)?.Replication;
        Task<MeshReply>? last = null;
        var budget = _options.Mesh.MaxMessageBytes - 256;
        var batch = new ReplicaBatch();
        var size = 0;
        for (var i = 0; i <= records.Count; i++)
        {
            ReplicaRecordWire? wire = null;
            var bytes = 0;
            if (i < records.Count)
            {
                var r = records[i];
                wire = new ReplicaRecordWire { Family = r.Family, Key = ByteString.CopyFrom(r.Key.Span), Delete = r.Delete };
                if (!r.Delete)
                {
                    wire.Value = ByteString.CopyFrom(r.Value.Span);
                }

                bytes = wire.CalculateSize() + 8;
            }

            if (batch.Records.Count > 0 && (wire is null || size + bytes > budget))
            {
                last = link?.TryRequest(kind, s.Epoch, batch.ToByteArray());
                if (last is null)
                {
                    replica.Full = true; // behind: the watchdog proposes its removal (or restarts its catch-up)
                    return null;
                }

                Interlocked.Increment(ref _metrics.BatchesShipped);
                Interlocked.Add(ref _metrics.RecordsShipped, batch.Records.Count);
                batch = new ReplicaBatch();
                size = 0;
            }

            if (wire is not null)
            {
                batch.Records.Add(wire);
                size += bytes;
            }
        }

        if (last is null)
        {
            return null;
        }

        replica.Outstanding++;
        replica.LastSend = last;
        var catchUpEpoch = replica.Phase != Phase.None ? replica.Epoch : -1;
        if (catchUpEpoch >= 0)
        {
            replica.CatchUpSends++;
        }

        last.ContinueWith(t => OnShipped(replica, t, waited ? pending : null, catchUpEpoch), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return last;
    }

    private void OnShipped(Replica replica, Task<MeshReply> outcome, Pending? pending, int catchUpEpoch)
    {
        lock (_lock)
        {
            replica.Outstanding--;
            var ok = outcome.IsCompletedSuccessfully && outcome.Result.Status == MeshStatus.Ok;
            if (catchUpEpoch >= 0 && catchUpEpoch == replica.Epoch)
            {
                // A batch the replica did not take while it was being caught up would be missing there for good (the copy
                // read the store before it): the catch-up must not end in "in sync" (see CatchUpAsync).
                replica.CatchUpSettled++;
                replica.RefusedDuringCatchUp |= !ok;
            }

            if (outcome.IsCompletedSuccessfully && outcome.Result.Status == MeshStatus.Ok)
            {
                if (pending is not null)
                {
                    pending.Waiting.Remove(replica.NodeId);
                    ShipReady(_node.State);
                    Drain();
                }

                return;
            }

        }

        // Refused (the replica has a newer map in which this node is not serving) or the link closed: the batch keeps
        // waiting; a newer map here decides (removal from the in-sync list, or this node failed over).
        ReplicationLog.ShipRefused(_logger, replica.NodeId, outcome.IsCompletedSuccessfully ? outcome.Result.Status.ToString() : outcome.Exception?.GetBaseException().Message ?? "canceled");
    }

    /// <summary>Under the lock: completes the batches at the head of the queue that wait for nobody, in commit order.</summary>
    private void Drain()
    {
        while (_pending.First is { } head && ((head.Value.Waiting.Count == 0 && head.Value.Later is null) || head.Value.Failed))
        {
            _pending.RemoveFirst();
            var p = head.Value;
            if (p.Failed)
            {
                Interlocked.Increment(ref _metrics.BatchesFailed);
                p.Batch.Complete(new StorageException(StorageFailure.Internal, _closed
                    ? "this node is stopping before its replicas had the write; it is not acknowledged (retry)"
                    : "this node was failed over before its replicas had the write; it is not acknowledged (retry: the new primary has it or sequences it)"));
            }
            else
            {
                Interlocked.Increment(ref _metrics.BatchesCompleted);
                p.Batch.Complete();
            }
        }
    }

    /// <summary>The node stops: what still waits for replicas is not acknowledged (the device retries elsewhere or
    /// after the restart, where the idempotency mark answers it), and so is whatever commits after this.</summary>
    public void Close()
    {
        lock (_lock)
        {
            _closed = true;
            foreach (var p in _pending)
            {
                p.Failed = true;
            }

            _later.Clear();

            Drain();
        }
    }

    // ---- maps ----

    /// <summary>A new map is applied: batches stop waiting for replicas it no longer lists in sync; if this node was
    /// failed over, every batch still waiting fails (it was never acknowledged, the new primary decides).</summary>
    public void OnMap(RoutingState s)
    {
        lock (_lock)
        {
            _plan = Plan.Of(s, _node.NodeId);
            foreach (var p in _pending)
            {
                if (_plan.SelfFailed)
                {
                    // Still waiting for a replica when this node was failed over: the new primary may not have it, so
                    // it is never acknowledged here (the device's retry goes to the new primary, which has it or not).
                    p.Failed = p.Waiting.Count > 0 || p.Later is not null;
                    continue;
                }

                p.Waiting.RemoveWhere(r => !_plan.IsWaited(r) && ReplicaOf(r).Phase != Phase.Final);
            }

            ShipReady(s);

            foreach (var replica in _replicas.Values)
            {
                if (replica.Phase != Phase.None && !_plan.OwnReplicas.Contains(replica.NodeId))
                {
                    replica.Phase = Phase.None; // no longer a replica of this node's set: its catch-up ends
                    replica.Epoch++;
                }
            }

            Drain();
        }
    }

    // ---- the watchdog: lagging replicas, catch-ups, the sets ----

    /// <summary>One look: replicas that lag are proposed for removal (in-sync) or put back to catching up (at the end of a
    /// catch-up); returns the in-sync replicas to remove, as (set primary, replica).</summary>
    public List<(string Primary, string Replica)> FindLagging()
    {
        var remove = new List<(string, string)>();
        lock (_lock)
        {
            var lagging = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in _pending)
            {
                if (TimeSpanSince(p.Started) < _options.ReplicationTimeout)
                {
                    break; // the queue is in commit order: later ones are younger
                }

                if (TimeSpanSince(p.WaitingSince) < _options.ReplicationTimeout)
                {
                    continue; // its held parts went out since: their replicas get the whole timeout too
                }

                lagging.UnionWith(p.Waiting);
            }

            foreach (var replica in _replicas.Values)
            {
                if (replica.Full || replica.Outstanding > _options.ReplicationMaxQueueBatches)
                {
                    lagging.Add(replica.NodeId);
                }
            }

            if (_pending.First is { } oldest)
            {
                // A replica whose lease is gone will not ack: no need to wait for the timeout to propose its removal.
                foreach (var id in oldest.Value.Waiting)
                {
                    if (!_node.IsLive(id))
                    {
                        lagging.Add(id);
                    }
                }
            }

            foreach (var id in lagging)
            {
                var replica = ReplicaOf(id);
                replica.Full = false;
                if (replica.Phase != Phase.None)
                {
                    // Not in the map's in-sync list: no compare-and-set, it just starts its catch-up again later.
                    replica.Phase = Phase.None;
                    replica.Epoch++;
                    foreach (var p in _pending)
                    {
                        if (!_plan.IsWaited(id))
                        {
                            p.Waiting.Remove(id);
                        }
                    }

                    Interlocked.Increment(ref _metrics.CatchUpsFailed);
                    continue;
                }

                foreach (var primary in _plan.SetsListingInSync(id))
                {
                    remove.Add((primary, id));
                }
            }

            Drain();
        }

        return remove;
    }

    /// <summary>Replicas of this node's own set that are not in sync, Active, live and not being caught up yet.</summary>
    public List<string> ToCatchUp()
    {
        var list = new List<string>();
        lock (_lock)
        {
            if (_plan.Map is not { } map || _plan.SelfFailed || _plan.OwnSet is not { } set)
            {
                return list;
            }

            foreach (var m in map.Members)
            {
                if (m.State is MemberState.Joining or MemberState.Leaving)
                {
                    return list; // a hand-over moves ranges: catch up on the ring it ends with
                }
            }

            foreach (var r in set.Replicas)
            {
                if (!set.InSync.Contains(r) && map.FindMember(r) is { State: MemberState.Active } && _node.IsLive(r) && ReplicaOf(r).Phase == Phase.None)
                {
                    list.Add(r);
                }
            }
        }

        return list;
    }

    /// <summary>
    /// Catches <paramref name="replicaId"/> up with this node's ranges and proposes it for the in-sync list: from now on
    /// it gets every new batch (not waited for); then a copy of every record of this node's ranges, page by page, on the
    /// same stream; once all of it is acked, new batches wait for it too, and when everything sent before that is acked,
    /// it is added by compare-and-set. Returns true when the replica is in sync in the stored map.
    /// </summary>
    public async Task<bool> CatchUpAsync(string replicaId, ClusterMembership membership, CancellationToken stop)
    {
        RoutingState? s = _node.State;
        if (s?.Owners is not { } owners || s.SelfIndex < 0)
        {
            return false;
        }

        var startMap = s.Map;
        Replica replica;
        int epoch;
        Task<MeshReply>? reset;
        lock (_lock)
        {
            replica = ReplicaOf(replicaId);
            if (replica.Phase != Phase.None)
            {
                return false;
            }

            // First on the stream: the replica drops what it holds of these ranges (a delete it missed while out of
            // sync would otherwise survive the copy), then it gets every new batch, then the copy.
            reset = s.LinkOf(replicaId)?.Replication?.TryRequest(ClusterOpKind.ReplicaReset, s.Epoch, []);
            if (reset is null)
            {
                return false;
            }

            replica.Phase = Phase.Shadow;
            replica.RefusedDuringCatchUp = false;
            replica.CatchUpSends = replica.CatchUpSettled = 0;
            epoch = ++replica.Epoch;
        }

        var selector = new ReplicatedRanges(owners.Ring, s.SelfIndex, owners.Ring.IndexOf(replicaId), Math.Max(1, ReplicaPlacement.EffectiveFactor(s.Map)));
        var position = RangePosition.Start;
        var chunkBytes = Math.Max(1024, (_options.Mesh.MaxMessageBytes / 3) - 1024);
        var window = new Queue<Task<MeshReply>>();
        window.Enqueue(reset);
        try
        {
            while (true)
            {
                stop.ThrowIfCancellationRequested();
                Task<MeshReply>? sent;
                bool done;
                lock (_lock)
                {
                    if (replica.Epoch != epoch)
                    {
                        return false; // stopped meanwhile (it lagged, or left the set)
                    }

                    var page = _store.ExportRange(selector, position, _options.HandoverChunkRecords, chunkBytes);
                    done = page.Done;
                    position = page.Next;
                    if (page.Records.Count == 0)
                    {
                        sent = null;
                    }
                    else
                    {
                        var records = new ReplicaRecord[page.Records.Count];
                        for (var i = 0; i < records.Length; i++)
                        {
                            var r = page.Records[i];
                            records[i] = new ReplicaRecord(r.Family, r.Key, r.Value, false);
                        }

                        sent = Ship(_node.State ?? s, replicaId, ClusterOpKind.ReplicaCopy, records, null, waited: false);
                        if (sent is null)
                        {
                            throw new InvalidOperationException($"the replica stream to {replicaId} is full");
                        }

                        Interlocked.Add(ref _metrics.CatchUpBytes, page.Bytes);
                    }
                }

                if (sent is not null)
                {
                    window.Enqueue(sent);
                }

                // A few pages in flight, no more: the copy must not fill the stream the batches share.
                while (window.Count > 4 || (done && window.Count > 0))
                {
                    await ExpectOkAsync(window.Dequeue(), replicaId, stop).ConfigureAwait(false);
                }

                if (done)
                {
                    break;
                }
            }

            Task<MeshReply>? tail;
            long sentBeforeFinal;
            lock (_lock)
            {
                if (replica.Epoch != epoch)
                {
                    return false;
                }

                replica.Phase = Phase.Final; // every batch from now on waits for it
                tail = replica.LastSend;
                sentBeforeFinal = replica.CatchUpSends;
            }

            if (tail is not null)
            {
                await ExpectOkAsync(tail, replicaId, stop).ConfigureAwait(false); // acks are cumulative: all before it too
            }

            // Acked is not taken: a batch sent meanwhile may have been refused (STALE_EPOCH while the two maps differed
            // at the start of a run) though the ones after it were taken. Found by the checker: a replica listed in sync
            // lacked a primary's writes of the run's first 18 s. Every send of the catch-up has an outcome by now (acks
            // are cumulative); their callbacks run on the pool, so wait for them to have counted.
            var settledBy = Environment.TickCount64 + (long)_options.ReplicationTimeout.TotalMilliseconds;
            while (true)
            {
                lock (_lock)
                {
                    if (replica.Epoch != epoch)
                    {
                        return false;
                    }

                    if (replica.RefusedDuringCatchUp)
                    {
                        throw new InvalidOperationException($"{replicaId} refused a batch during its catch-up");
                    }

                    if (replica.CatchUpSettled >= sentBeforeFinal)
                    {
                        break;
                    }
                }

                if (Environment.TickCount64 > settledBy)
                {
                    throw new TimeoutException($"the catch-up's batches to {replicaId} did not all settle");
                }

                await Task.Delay(1, stop).ConfigureAwait(false);
            }

            var result = await membership.SetInSyncAsync(_node.NodeId, replicaId, inSync: true, _node.NodeId,
                map => SameOwners(map, startMap), stop).ConfigureAwait(false);
            ReplicationLog.CatchUp(_logger, replicaId, result.Status.ToString(), result.Message);
            if (result.Succeeded)
            {
                Interlocked.Increment(ref _metrics.CatchUpsCompleted);
                if (result.Status == MapChangeStatus.Applied)
                {
                    Interlocked.Increment(ref _metrics.InSyncAdds);
                }

                lock (_lock)
                {
                    if (replica.Epoch == epoch)
                    {
                        replica.Phase = Phase.None; // the map lists it in sync now (or will, as soon as it is applied here)
                        if (!_plan.IsWaited(replicaId))
                        {
                            // Until this node applies that map, keep waiting for it: treat it as in sync already.
                            _plan = _plan.WithWaited(replicaId);
                        }
                    }
                }

                return true;
            }
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or StorageException or RouteUnavailableException
            || (e is OperationCanceledException && !stop.IsCancellationRequested))
        {
            ReplicationLog.CatchUpFailed(_logger, replicaId, e);
        }

        lock (_lock)
        {
            if (replica.Epoch == epoch)
            {
                replica.Phase = Phase.None;
                replica.Epoch++;
                foreach (var p in _pending)
                {
                    if (!_plan.IsWaited(replicaId))
                    {
                        p.Waiting.Remove(replicaId);
                    }
                }

                Drain();
            }
        }

        Interlocked.Increment(ref _metrics.CatchUpsFailed);
        return false;
    }

    private async Task ExpectOkAsync(Task<MeshReply> outcome, string replicaId, CancellationToken stop)
    {
        // A copy page is as large as a few batches; give it a few replication timeouts before the catch-up starts over.
        var reply = await outcome.WaitAsync(_options.ReplicationTimeout * 4, stop).ConfigureAwait(false);
        if (reply.Status != MeshStatus.Ok)
        {
            throw new InvalidOperationException($"{replicaId} refused the catch-up ({reply.Status})");
        }
    }

    /// <summary>True when <paramref name="map"/> has the same members owning ranges as <paramref name="start"/> (so this
    /// node's ranges, which the catch-up copied, are the same).</summary>
    private static bool SameOwners(ClusterMap map, ClusterMap start)
    {
        static List<string> Owning(ClusterMap m)
        {
            var list = new List<string>();
            foreach (var member in m.Members)
            {
                if (member.State != MemberState.Joining)
                {
                    list.Add(member.NodeId);
                }
            }

            return list;
        }

        return Owning(map).SequenceEqual(Owning(start), StringComparer.Ordinal) && map.VirtualNodes == start.VirtualNodes;
    }

    private Replica ReplicaOf(string id)
    {
        if (!_replicas.TryGetValue(id, out var replica))
        {
            _replicas[id] = replica = new Replica(id);
        }

        return replica;
    }

    private static long TimeSpanStamp() => Environment.TickCount64;

    private static TimeSpan TimeSpanSince(long stamp) => TimeSpan.FromMilliseconds(Environment.TickCount64 - stamp);

    private enum Phase
    {
        /// <summary>In sync per the map, or not a replica being caught up.</summary>
        None,

        /// <summary>Being caught up: gets every new batch, not waited for.</summary>
        Shadow,

        /// <summary>Caught up, its add to the in-sync list proposed: new batches wait for it.</summary>
        Final,
    }

    private sealed class Pending(CommittedBatch batch, long started)
    {
        public CommittedBatch Batch { get; } = batch;

        public long Started { get; } = started;

        /// <summary>When the replicas it waits for now were sent their part: <see cref="Started"/>, or when its held parts
        /// went out. A replica is lagging only when it has not acked within the timeout from here (seed 343 on f325191:
        /// a batch that waited for a dead replica, then sent its held parts, named their replica lagging at once and the
        /// map lost it as a live in-sync replica of a failed node's ranges).</summary>
        public long WaitingSince { get; set; } = started;

        public HashSet<string> Waiting { get; } = new(StringComparer.Ordinal);

        public bool Failed { get; set; }

        /// <summary>Parts held back until every replica the batch waits for has the rest (<see cref="HoldLocalEntries"/>).</summary>
        public Dictionary<string, List<ReplicaRecord>>? Later { get; set; }
    }

    private sealed class Replica(string nodeId)
    {
        public string NodeId { get; } = nodeId;

        public Phase Phase { get; set; }

        /// <summary>Bumped whenever a catch-up starts or is stopped, so a stopped one notices.</summary>
        public int Epoch { get; set; }

        public int Outstanding { get; set; }

        public bool Full { get; set; }

        /// <summary>A batch shipped while it was being caught up came back refused (the catch-up must start over).</summary>
        public bool RefusedDuringCatchUp { get; set; }

        /// <summary>Batches and pages shipped during the current catch-up, and how many have an outcome.</summary>
        public long CatchUpSends { get; set; }

        public long CatchUpSettled { get; set; }

        public Task<MeshReply>? LastSend { get; set; }
    }

    /// <summary>
    /// What one map means for shipping, per range (ring point) this node serves: the replicas of that range (the next
    /// distinct nodes clockwise, up to the effective factor: <see cref="HashRing.GetOwners"/>) that are in the in-sync
    /// list of the range's ring owner's set (this node's own, or a Failed member's whose ranges it took over), not
    /// Failed, not this node; for this node's own ranges also the replicas not in sync, which get records only while
    /// they catch up. A record goes to its range's replicas only, so a range has the map's factor of copies however
    /// many members there are (a set lists every node that replicates one of the primary's ranges).
    /// </summary>
    private sealed class Plan
    {
        public static readonly Plan None = new(null, null, -1, false, [], new HashSet<string>(StringComparer.Ordinal), null, 1);

        private readonly string[]?[] _targetsByPoint;
        private readonly HashSet<string> _waited;

        private Plan(ClusterMap? map, RangeOwners? owners, int self, bool selfFailed, string[]?[] targetsByPoint, HashSet<string> waited, ReplicaSet? ownSet, int factor)
        {
            Map = map;
            Owners = owners;
            Self = self;
            SelfFailed = selfFailed;
            _targetsByPoint = targetsByPoint;
            _waited = waited;
            OwnSet = ownSet;
            Factor = factor;
        }

        public ClusterMap? Map { get; }

        public RangeOwners? Owners { get; }

        public int Self { get; }

        public bool SelfFailed { get; }

        public ReplicaSet? OwnSet { get; }

        public int Factor { get; }

        public HashSet<string> OwnReplicas => OwnSet is null ? new HashSet<string>(StringComparer.Ordinal) : new HashSet<string>(OwnSet.Replicas, StringComparer.Ordinal);

        public bool IsEmpty => _waited.Count == 0 && (OwnSet is null || OwnSet.Replicas.IsDefaultOrEmpty);

        public static Plan Of(RoutingState s, string nodeId)
        {
            var map = s.Map;
            var selfFailed = map.FindMember(nodeId) is { State: MemberState.Failed };
            var factor = Math.Max(1, ReplicaPlacement.EffectiveFactor(map));
            if (s.Owners is not { } owners || s.SelfIndex < 0 || map.ReplicaSets.IsDefaultOrEmpty || factor <= 1)
            {
                return new Plan(map, s.Owners, s.SelfIndex, selfFailed, [], new HashSet<string>(StringComparer.Ordinal), null, factor);
            }

            var ring = owners.Ring;
            var waited = new HashSet<string>(StringComparer.Ordinal);
            var targets = new string[]?[ring.PointCount];
            var sets = new ReplicaSet?[ring.NodeCount];
            for (var n = 0; n < ring.NodeCount; n++)
            {
                sets[n] = ReplicaPlacement.Find(map, ring.Nodes[n]);
            }

            Span<int> chain = stackalloc int[ClusterMap.MaxReplicationFactor];
            var list = new List<string>(factor);
            for (var p = 0; p < ring.PointCount; p++)
            {
                var ringOwner = ring.NodeIndexOfPoint(p);
                if (owners.OwnerIndexOfPoint(p) != s.SelfIndex || sets[ringOwner] is not { } set)
                {
                    continue;
                }

                list.Clear();
                var found = ring.GetOwners(ring.PointAt(p), chain[..factor]);
                for (var k = 1; k < found; k++)
                {
                    var r = ring.Nodes[chain[k]];
                    if (chain[k] == s.SelfIndex || map.FindMember(r) is not { State: not MemberState.Failed })
                    {
                        continue;
                    }

                    if (set.InSync.Contains(r))
                    {
                        waited.Add(r);
                        list.Add(r);
                    }
                    else if (ringOwner == s.SelfIndex)
                    {
                        list.Add(r); // shipped only while it is being caught up (the tap checks its phase)
                    }
                }

                targets[p] = [.. list];
            }

            return new Plan(map, owners, s.SelfIndex, selfFailed, targets, waited, sets[s.SelfIndex], factor);
        }

        public Plan WithWaited(string replica)
        {
            var waited = new HashSet<string>(_waited, StringComparer.Ordinal) { replica };
            return new Plan(Map, Owners, Self, SelfFailed, _targetsByPoint, waited, OwnSet, Factor);
        }

        public bool IsWaited(string replica) => _waited.Contains(replica);

        /// <summary>The replicas that get a record, or null when it belongs to no range this node serves (a home's copy
        /// of another owner's message, a delete keyed by nothing it can place).</summary>
        public string[]? TargetsOf(in ReplicaRecord record)
        {
            ReplicaRecordOwner owner;
            try
            {
                if (!ChatStore.TryGetOwner(record, out owner))
                {
                    return null;
                }
            }
            catch (ArgumentException)
            {
                return null;
            }

            var ring = Owners!.Ring;
            var hash = owner.IsUser ? HashRing.HashUser(owner.UserId) : HashRing.HashConversation(owner.ConversationId);
            return _targetsByPoint.Length == 0 ? null : _targetsByPoint[ring.PointIndexOf(hash)];
        }

        /// <summary>The sets (by primary) whose in-sync list holds <paramref name="replica"/> and one of whose ranges
        /// this node serves and ships to it: where it proposes the replica's removal.</summary>
        public List<string> SetsListingInSync(string replica)
        {
            var list = new List<string>();
            if (Map is null || Owners is null)
            {
                return list;
            }

            for (var p = 0; p < _targetsByPoint.Length; p++)
            {
                if (_targetsByPoint[p] is { } targets && Array.IndexOf(targets, replica) >= 0
                    && ReplicaPlacement.Find(Map, Owners.Ring.Nodes[Owners.Ring.NodeIndexOfPoint(p)]) is { } set
                    && set.InSync.Contains(replica) && !list.Contains(set.Primary))
                {
                    list.Add(set.Primary);
                }
            }

            return list;
        }
    }
}
