using System.Collections.Immutable;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Coordination;
using ChatBroker.Cluster.Mesh.Wire;
using ChatBroker.Cluster.Ring;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>Counters of failover and fencing on this node.</summary>
public sealed class FailoverMetrics
{
    /// <summary>Members this node marked Failed (its compare-and-set applied).</summary>
    public long MarkedFailed;

    /// <summary>Failed members this node removed from the ring after the failed-node timeout.</summary>
    public long Removed;

    /// <summary>Proposals that did not apply (another node's change won, etcd unreachable, not allowed yet).</summary>
    public long ProposalsNotApplied;

    /// <summary>Commits and acknowledgements refused because this node's lease could not be confirmed (fencing).</summary>
    public long Fenced;

    /// <summary>Conversations whose tail this node sent to the homes again after it took them over from a Failed member.</summary>
    public long ConversationsReforwarded;

    /// <summary>Inbox entries (one per message and home) written again into this node's forward queues (or its own
    /// users' inboxes) after a take-over; the queues send them on.</summary>
    public long EntriesReforwarded;

    /// <summary>Commits refused while their conversation's range was being re-forwarded after a take-over.</summary>
    public long CommitsRefusedReforwarding;

    /// <summary>Commits refused because this node is Failed in the map (it sequences nothing).</summary>
    public long CommitsRefusedFailedSelf;
}

/// <summary>
/// Ranges (points of one ring) a node took over from a Failed member and is re-forwarding: commits on their
/// conversations wait, each only until its own tail is re-forwarded. Until the store scan has named the conversations
/// the node holds in those ranges, all of them wait; after it, only those not re-forwarded yet (a conversation the node
/// holds nothing of has no tail to restore). A take-over while another is running freezes only what it newly took;
/// the earlier one goes on and keeps holding its own (<see cref="Carried"/>).
/// </summary>
internal sealed class ReforwardFreeze(ChatBroker.Cluster.Ring.HashRing ring, bool[] taken, long sinceMs, ReforwardFreeze? carried = null)
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<ulong, byte> _pending = new();
    private volatile bool _scanned;

    public ChatBroker.Cluster.Ring.HashRing Ring { get; } = ring;

    public bool[] Taken { get; } = taken;

    /// <summary>Messages from this time on (unix ms) are sent again.</summary>
    public long SinceMs { get; } = sinceMs;

    /// <summary>A take-over still running when this one began: it holds its own conversations until it is done.</summary>
    public ReforwardFreeze? Carried { get; } = carried is { Done.Task.IsCompleted: false } ? carried : null;

    /// <summary>This take-over's re-forward is done (or gave up: the ranges must not stay frozen).</summary>
    public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>This one and every carried one are done.</summary>
    public Task AllDone => Carried is { } c ? Task.WhenAll(Done.Task, c.AllDone) : Done.Task;

    public bool Holds(ulong conversationId)
    {
        if (Carried?.Holds(conversationId) == true)
        {
            return true;
        }

        if (Done.Task.IsCompleted || !Taken[Ring.PointIndexOf(ChatBroker.Cluster.Ring.HashRing.HashConversation(conversationId))])
        {
            return false;
        }

        return !_scanned || _pending.ContainsKey(conversationId);
    }

    /// <summary>The scan named the conversations to re-forward: from now on only those wait.</summary>
    public void Scanned(IEnumerable<ulong> conversations)
    {
        foreach (var c in conversations)
        {
            _pending.TryAdd(c, 0);
        }

        _scanned = true; // after the adds: a reader that sees it sees them
    }

    /// <summary>The conversation's tail is re-forwarded: it takes commits again.</summary>
    public void Release(ulong conversationId) => _pending.TryRemove(conversationId, out _);
}

// Failover (docs/cluster.md, "Failover"). A member whose lease is gone is marked Failed in the map by compare-and-set,
// so that each of its ranges is served by its first in-sync replica (RangeOwners); every live Active member watches for
// it, the first by id proposes at once, each next one after FailoverBackupDelay more (the first may be cut off from
// etcd), and the compare-and-set makes exactly one change apply. After FailedNodeTimeout the Failed member is removed
// from the ring. Fencing: while the map lets this node's ranges fail over, it acknowledges only while its own lease is
// certainly alive for LeaseSafetyMargin more.
public sealed partial class ClusterNode
{
    private static readonly TimeSpan FailoverRecheck = TimeSpan.FromSeconds(1);

    /// <summary>Messages of one conversation read back from its end when it is re-forwarded (one page).</summary>
    private const int ReforwardTailMessages = 256;

    /// <summary>Attempts to re-forward one entry to a home that refuses or does not answer.</summary>

    /// <summary>Conversations re-forwarded at once after a take-over.</summary>
    private const int ReforwardParallelism = 16;

    private Task _failoverLoop = Task.CompletedTask;

    /// <summary>Counters of this node's failover proposals and fencing refusals.</summary>
    public FailoverMetrics Failover { get; } = new();

    public SendOutcome? RefuseAcknowledgement()
    {
        var s = State;
        var view = Volatile.Read(ref _view);
        if (s is not null && s.Owners is { } owners && owners.IsFailed(s.SelfIndex))
        {
            // Failed in the map this node has: whatever it wrote, another node serves the range now (a renewed or
            // new lease does not give it back).
            Interlocked.Increment(ref Failover.CommitsRefusedFailedSelf);
            return new SendOutcome(ReasonCode.ServerUnavailable,
                "this node is Failed in the cluster map and sequences nothing until it is removed and joins again; retry", null, _options.RetryAfter);
        }

        if (s is null || view is null || !s.CanFailOver || view.IsLeaseValid(_options.LeaseSafetyMargin))
        {
            return null;
        }

        Interlocked.Increment(ref Failover.Fenced);
        return new SendOutcome(ReasonCode.ServerUnavailable,
            "this node cannot confirm its cluster lease, so it may no longer own this conversation; retry", null, _options.RetryAfter);
    }

    public IReadOnlyList<string> ClientAddresses => State?.ClientAddresses ?? [];

    private void StartFailover(ClusterView view, IClusterCoordinator coordinator) =>
        _failoverLoop = Task.Run(() => WatchFailuresAsync(view, new ClusterMembership(coordinator), _stop.Token));

    private async Task WatchFailuresAsync(ClusterView view, ClusterMembership membership, CancellationToken stop)
    {
        try
        {
            while (true)
            {
                var changed = view.WaitForChangeAsync(stop);
                TimeSpan? wait;
                try
                {
                    wait = await ProposeOnceAsync(view, membership, changed, stop).ConfigureAwait(false);
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException or ClusterCoordinationException
                    || (e is OperationCanceledException && !stop.IsCancellationRequested))
                {
                    FailoverLog.ProposalFailed(_logger, e);
                    wait = FailoverRecheck;
                }

                if (wait is { } delay)
                {
                    await Task.WhenAny(changed, Task.Delay(delay, stop)).ConfigureAwait(false);
                    stop.ThrowIfCancellationRequested();
                }
                else
                {
                    await changed.ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>Looks at the view once and makes at most one proposal; returns when to look again without a change of
    /// the view (a timeout falls due, a proposal to retry), or null to wait for the next change.</summary>
    private async Task<TimeSpan?> ProposeOnceAsync(ClusterView view, ClusterMembership membership, Task changed, CancellationToken stop)
    {
        var map = view.Map;
        var live = view.LiveMembers;
        if (!view.HasCurrentMap || live.IsDefaultOrEmpty || RankAmongLiveActive(map, live) is not { } rank)
        {
            return null; // a node that may be stale, or that is not a live Active member, proposes nothing
        }

        bool IsLiveMember(string id) => IsLive(live, id);
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        TimeSpan? next = null;
        foreach (var member in map.Members)
        {
            if (member.State == MemberState.Active && !IsLiveMember(member.NodeId) && RangeOwners.CanFailOver(map, member.NodeId, IsLiveMember))
            {
                if (rank > 0 && !await BackOffAsync(rank, changed, stop).ConfigureAwait(false))
                {
                    return null; // the view changed meanwhile (the first proposer's map, most likely): look again
                }

                var result = await membership.FailAsync(member.NodeId, IsLiveMember, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), stop).ConfigureAwait(false);
                Count(result, ref Failover.MarkedFailed);
                FailoverLog.Proposed(_logger, member.NodeId, result.Status.ToString(), result.Message);
                return result.Status == MapChangeStatus.Applied ? null : FailoverRecheck;
            }

            if (member.State == MemberState.Failed)
            {
                var due = member.FailedAtMs + (long)_options.FailedNodeTimeout.TotalMilliseconds - now;
                if (due > 0)
                {
                    next = Min(next, TimeSpan.FromMilliseconds(due));
                    continue;
                }

                if (rank > 0 && !await BackOffAsync(rank, changed, stop).ConfigureAwait(false))
                {
                    return null;
                }

                var result = await membership.RemoveFailedAsync(member.NodeId, now - (long)_options.FailedNodeTimeout.TotalMilliseconds, stop).ConfigureAwait(false);
                Count(result, ref Failover.Removed);
                FailoverLog.Removed(_logger, member.NodeId, result.Status.ToString(), result.Message);
                return result.Status == MapChangeStatus.Applied ? null : FailoverRecheck;
            }
        }

        return next;
    }

    private void Count(MapChangeResult result, ref long applied)
    {
        if (result.Status == MapChangeStatus.Applied)
        {
            Interlocked.Increment(ref applied);
        }
        else
        {
            Interlocked.Increment(ref Failover.ProposalsNotApplied);
        }
    }

    /// <summary>Waits rank × FailoverBackupDelay; false when the view changed first.</summary>
    private async Task<bool> BackOffAsync(int rank, Task changed, CancellationToken stop)
    {
        var delay = Task.Delay(_options.FailoverBackupDelay * rank, stop);
        var first = await Task.WhenAny(changed, delay).ConfigureAwait(false);
        stop.ThrowIfCancellationRequested();
        return first == delay;
    }

    /// <summary>This node's place among the live Active members by id (0: it proposes first), or null when it is not one.</summary>
    private int? RankAmongLiveActive(ClusterMap map, ImmutableArray<NodeRegistration> live)
    {
        var rank = 0;
        foreach (var member in map.Members)
        {
            if (member.State != MemberState.Active || !IsLive(live, member.NodeId))
            {
                continue;
            }

            if (string.Equals(member.NodeId, NodeId, StringComparison.Ordinal))
            {
                return rank;
            }

            rank++;
        }

        return null;
    }

    private static TimeSpan Min(TimeSpan? a, TimeSpan b) => a is { } x && x < b ? x : b;

    // ---- the new primary re-forwards the tail of what it took over ----

    /// <summary>
    /// Under <see cref="_stateLock"/>, for a new state: what it takes over from a member that just became Failed.
    /// The inbox entries of those ranges' messages for other homes were in the failed node's forward queues (node-local,
    /// not replicated), so the ones it had not forwarded would never reach their homes: this node sends the tail of each
    /// such conversation (its messages since <see cref="ClusterRoutingOptions.ReforwardWindow"/> before the failure, at
    /// most <see cref="ReforwardTailMessages"/>) to the members' homes again. A home stores a copy only above the last seq
    /// it has of the conversation, so until that is done commits on those ranges are refused (retryable), or a new
    /// message could reach a home before an older one and the older one would be dropped there. A take-over still
    /// running carries over to the next map of the same ring.
    /// </summary>
    private ReforwardFreeze? ReforwardOf(RoutingState? previous, RoutingState current)
    {
        var carried = previous?.Reforward is { Done.Task.IsCompleted: false } running && current.Owners is { } owners
            && SameNodes(running.Ring, owners.Ring) && running.Ring.PointCount == owners.Ring.PointCount
            ? running : null;
        if (previous?.Owners is not { } before || current.Owners is not { HasFailed: true } after || current.SelfIndex < 0
            || before.Ring.PointCount != after.Ring.PointCount || before.Ring.NodeCount != after.Ring.NodeCount)
        {
            return carried;
        }

        var taken = new bool[after.Ring.PointCount];
        var any = false;
        var failedAt = long.MaxValue;
        for (var p = 0; p < taken.Length; p++)
        {
            var owner = after.Ring.NodeIndexOfPoint(p);
            if (after.OwnerIndexOfPoint(p) == current.SelfIndex && before.OwnerIndexOfPoint(p) != current.SelfIndex && after.IsFailed(owner))
            {
                taken[p] = any = true;
                failedAt = Math.Min(failedAt, current.Map.FindMember(after.Ring.Nodes[owner])?.FailedAtMs ?? 0);
            }
        }

        if (!any)
        {
            return carried;
        }

        // Only what this map newly took; a take-over still running goes on with its own (and holds it meanwhile).
        return new ReforwardFreeze(after.Ring, taken, failedAt - (long)_options.ReforwardWindow.TotalMilliseconds, carried);
    }

    /// <summary>After a map is applied: starts the re-forward its state took over (once per take-over).</summary>
    private void StartReforward(RoutingState? previous, RoutingState current)
    {
        if (current.Reforward is { } freeze && !ReferenceEquals(freeze, previous?.Reforward) && current.Owners is { } owners)
        {
            _ = Task.Run(() => ReforwardAsync(owners, freeze, _stop.Token));
        }
    }

    /// <summary>A refusal while <paramref name="conversationId"/>'s range is being re-forwarded after a take-over.</summary>
    private SendOutcome? RefuseWhileReforwarding(RoutingState s, ulong conversationId)
    {
        if (s.Reforward is not { } freeze || !freeze.Holds(conversationId))
        {
            return null;
        }

        Interlocked.Increment(ref Failover.CommitsRefusedReforwarding);
        return new SendOutcome(ReasonCode.ServerUnavailable, "this conversation was just taken over from a failed node; retry", null, _options.RetryAfter);
    }

    /// <summary>Completes when this node has re-forwarded every range it took over from a failed member so far.</summary>
    public Task WhenReforwardedAsync(CancellationToken cancellationToken) =>
        State?.Reforward?.AllDone.WaitAsync(cancellationToken) ?? Task.CompletedTask;

    private async Task ReforwardAsync(RangeOwners owners, ReforwardFreeze freeze, CancellationToken stop)
    {
        var sinceMs = freeze.SinceMs;
        try
        {
            // One scan of the store: the selector sees every record's conversation and takes none (nothing is exported).
            var selector = new TakenConversations(owners, freeze.Taken);
            var position = RangePosition.Start;
            while (true)
            {
                var page = _chat.Store.ExportRange(selector, position, 1, 1 << 20);
                if (page.Done)
                {
                    break;
                }

                position = page.Next;
            }

            // Each conversation takes commits again as soon as its own tail is re-forwarded; several at once, so a
            // home that answers slowly (or is itself gone) holds up only the conversations with members there.
            freeze.Scanned(selector.Found);
            await Parallel.ForEachAsync(selector.Found, new ParallelOptions { MaxDegreeOfParallelism = ReforwardParallelism, CancellationToken = stop },
                async (conversationId, token) =>
                {
                    try
                    {
                        await ReforwardConversationAsync(conversationId, sinceMs, token).ConfigureAwait(false);
                    }
                    finally
                    {
                        freeze.Release(conversationId);
                    }
                }).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
        catch (Exception e) when (e is StorageException or InvalidOperationException or ArgumentException or RouteUnavailableException)
        {
            FailoverLog.ReforwardFailed(_logger, e);
        }
        finally
        {
            freeze.Done.TrySetResult(); // the ranges take commits again (also after a failure: they must not stay frozen)
        }
    }

    /// <summary>
    /// Writes the tail of a taken conversation into this node's forward queues again (and its own users' inboxes), as
    /// the commits had (<see cref="RouteInbox(RoutingState?, string[])"/>), in seq order and in writes of at most
    /// <see cref="IChatStore.MaxCopiesPerWrite"/>: the queues then send them to whoever serves each member, in order and
    /// with their retries, and every commit after the freeze queues behind them. What a home had is not stored twice
    /// there (the members' copy marks).
    /// </summary>
    private async Task ReforwardConversationAsync(ulong conversationId, long sinceMs, CancellationToken stop)
    {
        var members = _directory.MembersOf(conversationId);
        var last = _chat.Store.GetLastSeq(conversationId);
        if (members is null || last == 0 || (_directory.IsGroup(conversationId) && _chat.IsLarge(members.Length)))
        {
            return; // a group fanned out on read has no inbox entries to restore
        }

        Interlocked.Increment(ref Failover.ConversationsReforwarded);
        var from = last > ReforwardTailMessages ? last - ReforwardTailMessages + 1 : 1;
        var copies = new List<CopyRequest>(IChatStore.MaxCopiesPerWrite);
        var entries = 0;
        foreach (var message in _chat.Store.ReadRange(conversationId, from, ReforwardTailMessages))
        {
            if (message.TimestampMs < sinceMs)
            {
                continue;
            }

            var routing = RouteInbox(State, [.. ForwardAudience(members, message)]);
            if (routing.Recipients.Length == 0)
            {
                continue;
            }

            copies.Add(new CopyRequest(message, routing.Recipients, []));
            entries += routing.Recipients.Length - routing.Local.Length + (routing.Local.Length > 0 ? 1 : 0);
            if (copies.Count == IChatStore.MaxCopiesPerWrite)
            {
                await _chat.Store.StoreCopiesAsync(copies, stop).ConfigureAwait(false);
                copies.Clear();
            }
        }

        if (copies.Count > 0)
        {
            await _chat.Store.StoreCopiesAsync(copies, stop).ConfigureAwait(false);
        }

        Interlocked.Add(ref Failover.EntriesReforwarded, entries);
        foreach (var forwarder in _forwarders.Values)
        {
            forwarder.Wake();
        }
    }

    /// <summary>Collects the conversations of a store scan whose range this node took over; takes none.</summary>
    private sealed class TakenConversations(RangeOwners owners, bool[] taken) : IRangeSelector
    {
        public HashSet<ulong> Found { get; } = [];

        public bool TakesConversation(ulong conversationId)
        {
            if (taken[owners.Ring.PointIndexOf(HashRing.HashConversation(conversationId))])
            {
                Found.Add(conversationId);
            }

            return false;
        }

        public bool TakesUser(string userId) => false;
    }
}
