using System.Collections.Concurrent;
using System.Diagnostics;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Cluster.Mesh.Wire;
using ChatBroker.Cluster.Ring;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>Counters of range hand-overs on this node.</summary>
public sealed class HandoverMetrics
{
    public long Started;
    public long Completed;
    public long Failed;
    public long Aborted;
    public long CommitsRefused;
    public long RecordsExported;
    public long RecordsImported;
    public long ChunksSent;
}

// Range hand-over (docs/cluster.md, "Ring changes"). A map with a Joining or Leaving member names two rings: the
// ring (Active and Leaving members, who own everything until the move is done) and the target ring (Active and
// Joining). Every node refuses commits on what moves (RoutingState.IsMoving) with a retryable SERVER_UNAVAILABLE.
// The moving member drives: every member prepares (has the map, lets older commits reach the store, forwards its
// queued inbox entries), then exports what moves from it to its new owners, and the driver takes the map's second
// step by compare-and-set (Active, or removed): the new ring owns the data from that epoch on.
public sealed partial class ClusterNode
{
    private const uint StepPrepare = 1;
    private const uint StepExport = 2;
    private const string HandoverCursorUser = "#handover";

    private readonly List<RoutingState> _retiring = []; // under _stateLock
    private readonly ConcurrentDictionary<(long Epoch, uint Step, string Source), TaskCompletionSource<HandoverStepDone>> _stepWaiters = new();
    private ClusterMembership? _membership;
    private RoutingState? _replaced; // under _stateLock: the state the newest Apply replaced, for OnMapApplied
    private long _drivingEpoch;
    private Task _watchdog = Task.CompletedTask;

    /// <summary>Counters of this node's range hand-overs.</summary>
    public HandoverMetrics Handover { get; } = new();

    /// <summary>
    /// Follows <paramref name="view"/>'s maps and takes part in range hand-overs: drives its own join or leave (the
    /// second step through <paramref name="coordinator"/>), and takes a member that is Joining or Leaving but no
    /// longer live back out of the move. Without a coordinator (<see cref="Start(ClusterView)"/>) the node serves
    /// and exports for others but never changes the map.
    /// </summary>
    public void Start(ClusterView view, IClusterCoordinator coordinator)
    {
        ArgumentNullException.ThrowIfNull(coordinator);
        _membership = new ClusterMembership(coordinator) { HandOverRanges = true };
        Start(view);
        _watchdog = Task.Run(() => WatchMovingMembersAsync(view, _stop.Token));
        StartFailover(view, coordinator);
        StartReplication(view);
    }

    // ---- the freeze: commits on moving ranges are refused, and the barrier lets earlier ones reach the store ----

    public InboxRouting BeginCommit(ulong conversationId, string[] members, bool fanOutOnRead)
    {
        if (RefuseAcknowledgement() is { } fenced)
        {
            return new InboxRouting([], [], fenced); // fencing: no new write while the lease is not certain
        }

        while (true)
        {
            var s = State;
            if (s is null)
            {
                return fanOutOnRead ? new InboxRouting(members, members) : RouteInbox(null, members);
            }

            if (!s.TryEnter())
            {
                continue; // replaced meanwhile: route under the newer map
            }

            if (s.Reforward is not null && RefuseWhileReforwarding(s, conversationId) is { } reforwarding)
            {
                s.Exit();
                return new InboxRouting([], [], reforwarding);
            }

            if (s.Owners is { HasFailed: true } owners && owners.IsFailed(s.SelfIndex))
            {
                // A Failed member sequences nothing (docs/cluster.md "Failover"): its store may lack what a replica
                // acknowledged while serving its ranges, so a range that falls back to it (every in-sync replica
                // failed too) must wait for an operator, not reuse seqs (docs/findings/2026-12-06-rf3-failover.md, B).
                s.Exit();
                Interlocked.Increment(ref Failover.CommitsRefusedFailedSelf);
                return new InboxRouting([], [], new SendOutcome(ReasonCode.ServerUnavailable,
                    "this node is Failed in the cluster map and sequences nothing until it is removed and joins again; retry", null, _options.RetryAfter));
            }

            if (s.TargetRing is not null && IsMovingCommit(s, conversationId, members, fanOutOnRead))
            {
                s.Exit();
                Interlocked.Increment(ref Handover.CommitsRefused);
                return new InboxRouting([], [], new SendOutcome(ReasonCode.ServerUnavailable,
                    "this conversation is being handed to another node; retry", null, _options.RetryAfter));
            }

            return (fanOutOnRead ? new InboxRouting(members, members) : RouteInbox(s, members)) with { Ticket = s };
        }
    }

    public void EndCommit(in InboxRouting routing) => (routing.Ticket as RoutingState)?.Exit();

    private static bool IsMovingCommit(RoutingState s, ulong conversationId, string[] members, bool fanOutOnRead)
    {
        if (s.IsMoving(conversationId))
        {
            return true;
        }

        if (!fanOutOnRead)
        {
            foreach (var member in members)
            {
                if (s.IsMoving(member))
                {
                    return true; // its inbox entry would be written at a home that is handing it over
                }
            }
        }

        return false;
    }

    /// <summary>Under <see cref="_stateLock"/>: the replaced state takes no new commits.</summary>
    private void Retire(RoutingState? previous)
    {
        _replaced = previous;
        if (previous is null)
        {
            return;
        }

        previous.Retire();
        _retiring.RemoveAll(static r => r.Quiet.IsCompleted);
        _retiring.Add(previous);
    }

    /// <summary>Completes once every commit that routed under a replaced map has enqueued its write, and the store
    /// has committed it.</summary>
    private async Task BarrierAsync(long epoch, CancellationToken cancellationToken)
    {
        Task[] quiet;
        lock (_stateLock)
        {
            quiet = [.. _retiring.Select(static r => r.Quiet)];
        }

        await Task.WhenAll(quiet).WaitAsync(cancellationToken).ConfigureAwait(false);
        // The store commits in order: once this write is durable, so is every write enqueued before it.
        await _chat.Store.AdvanceCursorAsync(HandoverCursorUser, NodeId, CursorStream.Inbox, (ulong)epoch, null, cancellationToken).ConfigureAwait(false);
    }

    // ---- after each map: re-register devices whose home moved, drive this node's own move ----

    private void OnMapApplied()
    {
        RoutingState? previous;
        RoutingState? current;
        lock (_stateLock)
        {
            previous = _replaced;
            current = _state;
        }

        if (current is null)
        {
            return;
        }

        AnnounceRestart(current);
        if (previous?.Ring is { } before && current.Ring is { } after
            && (!SameNodes(before, after) || !previous.Owners!.SameServing(current.Owners!)))
        {
            // The new home of a user has no device table for it: every gateway tells it where its sessions are and
            // catches them up from it (ClusterNode.Resync.cs).
            foreach (var device in _registry.Sessions())
            {
                if (!string.Equals(previous.HomeOf(device.UserId), current.HomeOf(device.UserId), StringComparison.Ordinal))
                {
                    Reattach(device, current);
                }
            }
        }

        StartReforward(previous, current);
        if (_membership is not null && current.Map.FindMember(NodeId) is { State: MemberState.Joining or MemberState.Leaving }
            && InterlockedMax(ref _drivingEpoch, current.Map.Epoch))
        {
            _ = Task.Run(() => DriveAsync(current.Map, _stop.Token));
        }
    }

    private static bool SameNodes(HashRing a, HashRing b)
    {
        if (a.NodeCount != b.NodeCount)
        {
            return false;
        }

        for (var i = 0; i < a.NodeCount; i++)
        {
            if (!string.Equals(a.Nodes[i], b.Nodes[i], StringComparison.Ordinal))
            {
                return false;
            }
        }

        return true;
    }

    private static bool InterlockedMax(ref long target, long value)
    {
        while (true)
        {
            var current = Volatile.Read(ref target);
            if (current >= value)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref target, value, current) == current)
            {
                return true;
            }
        }
    }

    // ---- the driver: the Joining or Leaving member ----

    private async Task DriveAsync(ClusterMap map, CancellationToken stop)
    {
        var epoch = map.Epoch;
        var clock = Stopwatch.StartNew();
        string failure = "";
        try
        {
            for (var attempt = 1; attempt <= _options.HandoverAttempts; attempt++)
            {
                if ((long)CurrentEpoch != epoch)
                {
                    return; // a newer map: the run for it (if any) takes over
                }

                Interlocked.Increment(ref Handover.Started);
                HandoverLog.Started(_logger, epoch, NodeId, map.FindMember(NodeId)?.State.ToString() ?? "?", attempt);
                var failed = await RunStepEverywhereAsync(map, StepPrepare, stop).ConfigureAwait(false)
                    ?? await RunStepEverywhereAsync(map, StepExport, stop).ConfigureAwait(false);
                if (failed is null)
                {
                    var done = await _membership!.CompleteAsync(NodeId, epoch, stop).ConfigureAwait(false);
                    if (done.Succeeded)
                    {
                        Interlocked.Increment(ref Handover.Completed);
                        HandoverLog.Completed(_logger, epoch, clock.ElapsedMilliseconds, done.Message);
                        return;
                    }

                    if (done.Status == MapChangeStatus.Refused)
                    {
                        return; // the map moved on under the hand-over: the next map's run starts over
                    }

                    failed = done.Message;
                }

                failure = failed;
                Interlocked.Increment(ref Handover.Failed);
                HandoverLog.Failed(_logger, epoch, failed);
                if (attempt < _options.HandoverAttempts)
                {
                    await Task.Delay(_options.RetryAfter, stop).ConfigureAwait(false); // back off before the next attempt
                }
            }

            var aborted = await _membership!.AbortAsync(NodeId, epoch, failure, stop).ConfigureAwait(false);
            Interlocked.Increment(ref Handover.Aborted);
            HandoverLog.Aborted(_logger, NodeId, aborted.Message);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>Runs a step on every member (here directly, elsewhere by a posted <see cref="HandoverStep"/>) and
    /// waits for all; the first failure's reason, or null.</summary>
    private async Task<string?> RunStepEverywhereAsync(ClusterMap map, uint step, CancellationToken stop)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(stop);
        deadline.CancelAfter(_options.HandoverStepTimeout);
        var s = State;
        var waits = new List<(string Member, Task<HandoverStepDone> Done)>();
        var request = new HandoverStep { Epoch = map.Epoch, Step = step }.ToByteArray();
        try
        {
            foreach (var member in map.Members)
            {
                if (string.Equals(member.NodeId, NodeId, StringComparison.Ordinal))
                {
                    waits.Add((member.NodeId, RunStepAsync(map.Epoch, step, deadline.Token)));
                    continue;
                }

                var waiter = new TaskCompletionSource<HandoverStepDone>(TaskCreationOptions.RunContinuationsAsynchronously);
                _stepWaiters[(map.Epoch, step, member.NodeId)] = waiter;
                if (s?.LinkOf(member.NodeId)?.TryPost(ClusterOpKind.HandoverStep, (ulong)map.Epoch, request) != true)
                {
                    return $"step {step}: no room on the link to {member.NodeId}";
                }

                waits.Add((member.NodeId, waiter.Task));
            }

            foreach (var (member, done) in waits)
            {
                var result = await done.WaitAsync(deadline.Token).ConfigureAwait(false);
                if (!result.Ok)
                {
                    return $"step {step} on {member}: {result.Message}";
                }
            }

            return null;
        }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested)
        {
            return $"step {step} did not finish on every member within {_options.HandoverStepTimeout.TotalSeconds:0.#} s";
        }
        finally
        {
            foreach (var member in map.Members)
            {
                _stepWaiters.TryRemove((map.Epoch, step, member.NodeId), out _);
            }
        }
    }

    // ---- a member's part ----

    private Task? HandleHandoverStep(MeshInboundBatch batch, int index, MeshInboundMessage message)
    {
        var request = HandoverStep.Parser.ParseFrom(message.Payload.Span);
        if (request.Step is not (StepPrepare or StepExport))
        {
            throw new ArgumentException($"unknown hand-over step {request.Step}");
        }

        var driver = batch.Origin;
        _ = Task.Run(async () =>
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            deadline.CancelAfter(_options.HandoverStepTimeout);
            var done = await RunStepAsync(request.Epoch, request.Step, deadline.Token).ConfigureAwait(false);
            var s = State;
            s?.LinkOf(driver)?.TryPost(ClusterOpKind.HandoverStepDone, s.Epoch, done.ToByteArray());
        });
        return null;
    }

    private Task? HandleHandoverStepDone(MeshInboundBatch batch, int index, MeshInboundMessage message)
    {
        var done = HandoverStepDone.Parser.ParseFrom(message.Payload.Span);
        if (_stepWaiters.TryGetValue((done.Epoch, done.Step, batch.Origin), out var waiter))
        {
            waiter.TrySetResult(done);
        }

        return null;
    }

    /// <summary>One step here, for the map of <paramref name="epoch"/>; never throws.</summary>
    private async Task<HandoverStepDone> RunStepAsync(long epoch, uint step, CancellationToken cancellationToken)
    {
        var done = new HandoverStepDone { Epoch = epoch, Step = step };
        try
        {
            await WaitForEpochAsync((ulong)epoch, cancellationToken).ConfigureAwait(false);
            var s = State!;
            if (s.Map.Epoch != epoch)
            {
                done.Message = $"{NodeId} is at map epoch {s.Map.Epoch}";
                return done;
            }

            if (step == StepPrepare)
            {
                await BarrierAsync(epoch, cancellationToken).ConfigureAwait(false);
                foreach (var forwarder in _forwarders.Values)
                {
                    var end = _chat.Store.GetLastInboxSeq(forwarder.QueueId);
                    await forwarder.WhenForwardedThroughAsync(end, cancellationToken).ConfigureAwait(false);
                }
            }
            else
            {
                done.Records = await ExportAsync(s, cancellationToken).ConfigureAwait(false);
            }

            done.Ok = true;
            HandoverLog.StepDone(_logger, step, epoch, done.Records);
        }
        catch (OperationCanceledException)
        {
            done.Message = $"{NodeId} did not finish in time";
        }
        catch (Exception e) when (e is RouteUnavailableException or StorageException or InvalidOperationException or ArgumentException)
        {
            done.Message = $"{NodeId}: {e.Message}";
        }

        return done;
    }

    /// <summary>Streams everything that moves from this node to each new owner, chunk by chunk, each stored there
    /// before the next is read.</summary>
    private async Task<ulong> ExportAsync(RoutingState s, CancellationToken cancellationToken)
    {
        if (s.TargetRing is not { } target || s.Ring is null)
        {
            return 0;
        }

        ulong records = 0;
        var maxBytes = _options.Mesh.MaxMessageBytes / 3;
        foreach (var node in target.Nodes)
        {
            if (string.Equals(node, NodeId, StringComparison.Ordinal))
            {
                continue;
            }

            var selector = new MovingRangeSelector(s, NodeId, node);
            var position = RangePosition.Start;
            while (true)
            {
                var page = _chat.Store.ExportRange(selector, position, _options.HandoverChunkRecords, maxBytes);
                if (page.Records.Count > 0)
                {
                    await SendChunkAsync(s, node, page.Records, cancellationToken).ConfigureAwait(false);
                    records += (ulong)page.Records.Count;
                    Interlocked.Add(ref Handover.RecordsExported, page.Records.Count);
                }

                if (page.Done)
                {
                    break;
                }

                position = page.Next;
            }
        }

        return records;
    }

    private async Task SendChunkAsync(RoutingState s, string node, IReadOnlyList<RangeRecord> records, CancellationToken cancellationToken)
    {
        var chunk = new RangeChunk { Epoch = s.Map.Epoch };
        foreach (var r in records)
        {
            chunk.Records.Add(new RangeChunkRecord { Family = r.Family, Key = ByteString.CopyFrom(r.Key.Span), Value = ByteString.CopyFrom(r.Value.Span) });
        }

        var outcome = s.LinkOf(node)?.TryRequest(ClusterOpKind.RangeChunk, s.Epoch, chunk.ToByteArray())
            ?? throw new RouteUnavailableException($"no room on the link to {node} for a range chunk");
        var reply = await outcome.WaitAsync(cancellationToken).ConfigureAwait(false);
        var result = reply.Status == MeshStatus.Ok && reply.Reply is { } bytes ? RangeChunkResult.Parser.ParseFrom(bytes) : null;
        if (result is null || result.Reason != 0)
        {
            throw new RouteUnavailableException($"{node} did not store a range chunk ({reply.Status}{(result is null ? "" : ": " + result.Message)})");
        }

        Interlocked.Increment(ref Handover.ChunksSent);
    }

    /// <summary>New owner: stores a chunk of a moving range (only while its map is the hand-over's and names it in
    /// the target ring), then answers.</summary>
    private Task? HandleRangeChunk(MeshInboundBatch batch, int index, MeshInboundMessage message, RoutingState s, CancellationToken cancellationToken)
    {
        var chunk = RangeChunk.Parser.ParseFrom(message.Payload.Span);
        if (s.Map.Epoch != chunk.Epoch || s.TargetRing?.IndexOf(NodeId) is null or < 0)
        {
            batch.Reply(index, new RangeChunkResult
            {
                Reason = (uint)ReasonCode.ServerUnavailable,
                Message = $"{NodeId} is at map epoch {s.Map.Epoch}, not {chunk.Epoch}, or takes no ranges in it",
            }.ToByteArray());
            return null;
        }

        var records = new RangeRecord[chunk.Records.Count];
        for (var i = 0; i < records.Length; i++)
        {
            var r = chunk.Records[i];
            if (r.Family > byte.MaxValue)
            {
                throw new ArgumentException($"range record family {r.Family}");
            }

            records[i] = new RangeRecord((byte)r.Family, r.Key.Memory, r.Value.Memory);
        }

        return ImportChunkAsync(batch, index, records, cancellationToken);
    }

    private async Task ImportChunkAsync(MeshInboundBatch batch, int index, RangeRecord[] records, CancellationToken cancellationToken)
    {
        RangeChunkResult result;
        try
        {
            var imported = await _chat.Store.ImportRangeAsync(records, cancellationToken).ConfigureAwait(false);
            Interlocked.Add(ref Handover.RecordsImported, imported);
            result = new RangeChunkResult { Imported = (uint)imported };
        }
        catch (ArgumentException e)
        {
            result = new RangeChunkResult { Reason = (uint)ReasonCode.InvalidField, Message = e.Message };
        }
        catch (StorageException e)
        {
            result = new RangeChunkResult { Reason = (uint)ReasonCode.ServerUnavailable, Message = e.Message };
        }

        batch.Reply(index, result.ToByteArray());
    }

    // ---- a moving member that is gone: any live member puts the map back ----

    private async Task WatchMovingMembersAsync(ClusterView view, CancellationToken stop)
    {
        try
        {
            while (true)
            {
                var changed = view.WaitForChangeAsync(stop);
                var map = view.Map;
                var live = view.LiveMembers;
                if (_membership is not null && IsFirstLiveActive(map, live))
                {
                    foreach (var member in map.Members)
                    {
                        if (member.State is MemberState.Joining or MemberState.Leaving && !IsLive(live, member.NodeId))
                        {
                            var aborted = await _membership.AbortAsync(member.NodeId, map.Epoch, $"{member.NodeId} is not live", stop).ConfigureAwait(false);
                            if (aborted.Status == MapChangeStatus.Applied)
                            {
                                Interlocked.Increment(ref Handover.Aborted);
                                HandoverLog.Aborted(_logger, member.NodeId, aborted.Message);
                            }

                            break; // one change per map: the next map is looked at anew
                        }
                    }
                }

                await changed.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private bool IsFirstLiveActive(ClusterMap map, System.Collections.Immutable.ImmutableArray<NodeRegistration> live)
    {
        foreach (var member in map.Members)
        {
            if (member.State == MemberState.Active && IsLive(live, member.NodeId))
            {
                return string.Equals(member.NodeId, NodeId, StringComparison.Ordinal);
            }
        }

        return false;
    }

    private static bool IsLive(System.Collections.Immutable.ImmutableArray<NodeRegistration> live, string nodeId)
    {
        foreach (var r in live)
        {
            if (string.Equals(r.NodeId, nodeId, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Takes what moves from one node to another between the ring and the target ring of a map.</summary>
    private sealed class MovingRangeSelector(RoutingState s, string from, string to) : IRangeSelector
    {
        public bool TakesConversation(ulong conversationId) =>
            Moves(s.Ring!, s.TargetRing!, HashRing.HashConversation(conversationId));

        public bool TakesUser(string userId) => Moves(s.Ring!, s.TargetRing!, HashRing.HashUser(userId));

        private bool Moves(HashRing ring, HashRing target, ulong hash) =>
            string.Equals(ring.Nodes[ring.OwnerIndex(hash)], from, StringComparison.Ordinal)
            && string.Equals(target.Nodes[target.OwnerIndex(hash)], to, StringComparison.Ordinal);
    }
}
