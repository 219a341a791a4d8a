using System.Threading.Channels;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh.Wire;
using ChatBroker.Storage;
using Google.Protobuf;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Sends the inbox entries a conversation owner (this node) committed for the users of one other home node, and
/// does not lose one if this node crashes after SENT.
/// <para>
/// The owner's commit writes, in the same batch as the message, an entry into the home's forward queue: the
/// inbox of the reserved user <c>#home/&lt;node&gt;</c> (<see cref="ClusterNode.ForwardQueueId"/>). This loop
/// reads the queue after its cursor (device <see cref="ClusterNode.ForwardedCursor"/> of that user), sends one
/// <see cref="InboxAppend"/> per entry over the mesh (message from the log, recipients = the members whose home
/// the node is), and moves the cursor only over entries the home has acked, i.e. stored. After a crash it
/// starts again from the cursor; a resend is harmless because the home stores a (conversation, seq) once.
/// </para>
/// One loop per home node; woken by commits and by map changes, it runs until the queue is drained.
/// </summary>
internal sealed class HomeForwarder
{
    private readonly ClusterNode _node;
    private readonly IChatStore _store;
    private readonly ConversationDirectory _directory;
    private readonly ILogger _logger;
    private readonly int _batch;
    private readonly TimeSpan _timeout;
    private readonly TimeSpan _holdForLog;
    /// <summary>How soon a round held at an entry whose message the reads do not show yet looks again.</summary>
    private static readonly TimeSpan HeldForLogRetry = TimeSpan.FromMilliseconds(20);
    private static readonly Task<MeshReply> StoredHere = Task.FromResult(new MeshReply(MeshStatus.Ok, null, 0, "", 0));
    private readonly Channel<bool> _wake = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    private Task _run = Task.CompletedTask;
    private TaskCompletionSource _progress = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _forwarded;
    private long _rejected;

    private readonly RoutingMetrics _metrics;

    public HomeForwarder(ClusterNode node, string homeNodeId, IChatStore store, ConversationDirectory directory, int batch, TimeSpan timeout, TimeSpan holdForLog, RoutingMetrics metrics, ILogger logger)
    {
        _timeout = timeout;
        _holdForLog = holdForLog;
        _metrics = metrics;
        _node = node;
        _store = store;
        _directory = directory;
        _batch = batch;
        _logger = logger;
        HomeNodeId = homeNodeId;
        QueueId = ClusterNode.ForwardQueueId(homeNodeId);
    }

    public string HomeNodeId { get; }

    /// <summary>The reserved inbox id of this home's forward queue.</summary>
    public string QueueId { get; }

    /// <summary>Inbox entries the home has acked so far (this process).</summary>
    public long Forwarded => Interlocked.Read(ref _forwarded);

    /// <summary>Entries the home rejected (skipped; see the log).</summary>
    public long Rejected => Interlocked.Read(ref _rejected);

    /// <summary>Entries still to send: the queue's end minus the forwarded-through cursor.</summary>
    public ulong Backlog => _store.GetLastInboxSeq(QueueId) - _store.GetCursor(QueueId, ClusterNode.ForwardedCursor, CursorStream.Inbox);

    public void Start(CancellationToken stop)
    {
        _run = Task.Run(() => RunAsync(stop), CancellationToken.None);
        Wake(); // whatever a previous run left in the queue
    }

    public void Wake() => _wake.Writer.TryWrite(true);

    /// <summary>Completes once the home has acked every entry queued so far (status, shutdown and tests).</summary>
    public async Task WhenDrainedAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            var progress = Volatile.Read(ref _progress).Task;
            if (Backlog == 0)
            {
                return;
            }

            await progress.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Completes once the home has acked every entry up to <paramref name="inboxSeq"/> of the queue (a
    /// hand-over's drain: what was queued before it).</summary>
    public async Task WhenForwardedThroughAsync(ulong inboxSeq, CancellationToken cancellationToken)
    {
        while (true)
        {
            var progress = Volatile.Read(ref _progress).Task;
            if (_store.GetCursor(QueueId, ClusterNode.ForwardedCursor, CursorStream.Inbox) >= inboxSeq)
            {
                return;
            }

            Wake();
            await progress.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public Task Stopped => _run;

    private async Task RunAsync(CancellationToken stop)
    {
        try
        {
            while (await _wake.Reader.WaitToReadAsync(stop).ConfigureAwait(false))
            {
                _wake.Reader.TryRead(out _);
                try
                {
                    while (await ForwardRoundAsync(stop).ConfigureAwait(false))
                    {
                    }
                }
                catch (Exception e) when (e is RouteUnavailableException or StorageException or InvalidOperationException)
                {
                    // The link closed (map change, shutdown) or the store failed: the queue keeps the entries and
                    // the next wake (a commit, a map change) sends them again.
                    ClusterLog.ForwardFailed(_logger, HomeNodeId, e);
                }
#pragma warning disable CA1031 // The loop outlives any failure of one round: a dead forwarder would hold the home's entries for good.
                catch (Exception e) when (!stop.IsCancellationRequested)
#pragma warning restore CA1031
                {
                    ClusterLog.ForwardFailed(_logger, HomeNodeId, e);
                    Wake(); // not waiting for a commit: the queue may hold entries nobody else wakes it for
                    await Task.Delay(100, stop).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>
    /// Sends one batch of the queue and waits for its outcome; true when there may be more to send now. The queue is
    /// the ring node's (<see cref="HomeNodeId"/>): its entries are for the members whose ring home that node is, and
    /// each goes to whoever serves that member's range now — the node itself, or, once it is Failed, the in-sync
    /// replica that took the range (possibly this node, which then stores the copy itself). So a failed home's backlog
    /// is not lost, and a user's entries keep their commit order through the failover: every entry for the user from
    /// this owner goes through this one queue, before and after. A range served by nobody (a Failed node without a
    /// live in-sync replica) holds the queue until a map gives it a server.
    /// </summary>
    private async Task<bool> ForwardRoundAsync(CancellationToken stop)
    {
        var cursor = _store.GetCursor(QueueId, ClusterNode.ForwardedCursor, CursorStream.Inbox);
        var entries = _store.ReadInbox(QueueId, cursor, _batch);
        if (entries.Count == 0)
        {
            return false;
        }

        var changed = _node.StateChangedTask; // before the state: a map applied after this read ends the wait below
        var state = _node.State;
        var ringIndex = state?.Ring?.IndexOf(HomeNodeId) ?? -1;
        if (state is null || ringIndex < 0 || state.LinkOf(HomeNodeId) is null)
        {
            return false; // not a member (any more): the entries wait for a map that has the node
        }

        if (state.Owners!.IsFailed(state.SelfIndex))
        {
            // This node was failed over: its queues may hold entries of writes it never acknowledged (their seqs now
            // belong to other messages at the new owner), so nothing is sent; what it acknowledged, the new owner
            // re-forwards from its own log. The entries stay until the node is removed (homes refuse them anyway).
            return false;
        }

        var sent = new List<(ulong InboxSeq, Task<MeshReply>[]? Outcomes)>(entries.Count);
        List<(StoredMessage, string[])>? here = null;
        var held = false;
        foreach (var entry in entries)
        {
            var appends = BuildAppends(state, ringIndex, entry, out var unserved, out var unreadable);
            if (unserved)
            {
                held = true;
                break; // a recipient's range has no server now: this entry and the rest wait for a map
            }

            if (unreadable)
            {
                // The entry is readable but its message is not yet (a batch of this node's that holds the seq waits for
                // its replicas): it waits, with the rest, until the reads show it; skipping it would lose it at the home.
                Interlocked.Increment(ref _metrics.InboxForwardHeldForLog);
                held = true;
                _ = WakeSoonAsync(stop); // the batch that holds the seq wakes nobody here when it completes
                break;
            }

            if (appends is null)
            {
                sent.Add((entry.InboxSeq, null)); // nothing to send (retention removed it, or no member lives there)
                continue;
            }

            var outcomes = new Task<MeshReply>[appends.Count];
            var full = false;
            for (var i = 0; i < appends.Count; i++)
            {
                var (target, append) = appends[i];
                if (state.IsSelf(target))
                {
                    // This node serves the range of the ring node's failed home: it stores the copies itself, in queue
                    // order, the round's in one write (below) before the cursor passes them.
                    var recipients = new string[append.Recipients.Count];
                    append.Recipients.CopyTo(recipients, 0);
                    (here ??= []).Add((ClusterOps.ToStored(append.Message), recipients));
                    outcomes[i] = StoredHere;
                    continue;
                }

                var outcome = state.LinkOf(state.NodeAt(target))?.Forwarding?.TryRequest(ClusterOpKind.InboxAppend, state.Epoch, append.ToByteArray());
                if (outcome is null)
                {
                    Interlocked.Increment(ref _metrics.LinkQueueFull);
                    full = true;
                    break;
                }

                outcomes[i] = outcome;
            }

            if (full)
            {
                break; // a link's queue is full: what was sent is settled first, the rest comes next round
            }

            sent.Add((entry.InboxSeq, outcomes));
        }

        if (here is not null)
        {
            await _node.StoreCopiesHereAsync(here, stop).ConfigureAwait(false);
        }

        var through = cursor;
        using var round = CancellationTokenSource.CreateLinkedTokenSource(stop); // cancelled at the end: frees the timer
        Task? deadline = null;
        try
        {
            return await SettleAsync().ConfigureAwait(false);
        }
        finally
        {
            await round.CancelAsync().ConfigureAwait(false);
        }

        async Task<bool> SettleAsync()
        {
            foreach (var (inboxSeq, outcomes) in sent)
            {
                foreach (var outcome in outcomes ?? [])
                {
                    // Bounded: a home that died holds its requests until the link reconnects, which for a failed-over node
                    // is never; a new map (the failover) or the timeout ends the wait and the next round sends them again,
                    // to whoever serves the range then (a copy stored twice is stored once: the copy marks).
                    var done = outcome.IsCompleted
                        ? outcome
                        : await Task.WhenAny(outcome, changed, deadline ??= Task.Delay(_timeout, round.Token)).ConfigureAwait(false);
                    stop.ThrowIfCancellationRequested();
                    if (done != outcome)
                    {
                        Interlocked.Increment(ref _metrics.InboxForwardWaitsAbandoned);
                        await AdvanceAsync(cursor, through, stop).ConfigureAwait(false);
                        Wake();
                        return false;
                    }

                    var reply = await outcome.ConfigureAwait(false);
                    if (reply.Status == MeshStatus.Rejected)
                    {
                        // The home cannot take this entry at all (a field it refuses): sending it again cannot help, and
                        // holding the queue behind it would stop every later message to that home.
                        Interlocked.Increment(ref _rejected);
                        Interlocked.Increment(ref _metrics.InboxEntriesRejected);
                        ClusterLog.ForwardRejected(_logger, HomeNodeId, reply.Reason);
                    }
                    else if (reply.Status != MeshStatus.Ok)
                    {
                        // The home's map says these users are not its own. Everything before stays forwarded; this and
                        // what follows wait for this node's map to catch up (a map change wakes the loop).
                        ClusterLog.ForwardRefused(_logger, HomeNodeId, reply.Epoch, reply.Owner);
                        await AdvanceAsync(cursor, through, stop).ConfigureAwait(false);
                        return false;
                    }
                }

                through = inboxSeq;
            }

            await AdvanceAsync(cursor, through, stop).ConfigureAwait(false);
            return !held;
        }
    }

    private async Task WakeSoonAsync(CancellationToken stop)
    {
        try
        {
            await Task.Delay(HeldForLogRetry, stop).ConfigureAwait(false);
            Wake();
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task AdvanceAsync(ulong from, ulong through, CancellationToken stop)
    {
        if (through > from)
        {
            await _store.AdvanceCursorAsync(QueueId, ClusterNode.ForwardedCursor, CursorStream.Inbox, through, null, stop).ConfigureAwait(false);
            Interlocked.Add(ref _forwarded, (long)(through - from));
            Interlocked.Add(ref _metrics.InboxEntriesForwarded, (long)(through - from));
            Interlocked.Exchange(ref _progress, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
        }
    }

    /// <summary>The InboxAppends of one queued entry, by the ring index of the node serving each recipient's range: the
    /// message from the log and the members whose ring home is this queue's node; null when there is nothing to send;
    /// <paramref name="unserved"/> when some recipient's range has no server under <paramref name="state"/>;
    /// <paramref name="unreadable"/> when the message is above the seqs this node's reads show now.</summary>
    private List<(int Target, InboxAppend Append)>? BuildAppends(RoutingState state, int ringIndex, InboxEntry entry, out bool unserved, out bool unreadable)
    {
        unserved = false;
        unreadable = false;
        var messages = _store.ReadRange(entry.ConversationId, entry.Seq, 1);
        if (messages.Count == 0 || messages[0].Seq != entry.Seq)
        {
            if (entry.Seq > _store.GetLastSeq(entry.ConversationId)
                && DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() - entry.TimestampMs < (long)_holdForLog.TotalMilliseconds)
            {
                unreadable = true; // hidden, not gone (a young entry above the readable seqs): see the caller
                return null;
            }

            Interlocked.Increment(ref _metrics.InboxEntriesWithoutMessage);
            return null;
        }

        var members = _directory.MembersOf(entry.ConversationId);
        if (members is null)
        {
            return null;
        }

        List<(int Target, InboxAppend Append)>? appends = null;
        foreach (var member in ClusterNode.ForwardAudience(members, messages[0]))
        {
            if (state.RingHomeIndexOf(member) != ringIndex)
            {
                continue;
            }

            var target = state.HomeIndexOf(member);
            if (target < 0 || state.Owners!.IsFailed(target))
            {
                unserved = true; // a Failed node serves a range only when nobody could take it: nobody serves it
                return null;
            }

            appends ??= [];
            var at = appends.FindIndex(a => a.Target == target);
            if (at < 0)
            {
                appends.Add((target, new InboxAppend { Message = ClusterOps.ToWire(messages[0]) }));
                at = appends.Count - 1;
            }

            appends[at].Append.Recipients.Add(member);
        }

        return appends;
    }
}
