using System.Collections.Concurrent;
using System.Collections.Frozen;
using System.Collections.Immutable;
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
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// A broker node's cluster layer (docs/cluster.md, "Routing"). From the coordinator's <see cref="ClusterView"/> it
/// keeps the current <see cref="RoutingState"/> (epoch, ring of the active members, one <see cref="PeerLink"/> per
/// other member); as the core's <see cref="IMessageRouter"/> it sends SENDs to their conversation's owner and inbox
/// entries to their user's home; as the mesh's <see cref="IMeshSink"/> it does what other nodes ask of it, and
/// refuses, with <see cref="MeshInboundBatch.RefuseStaleEpoch"/> naming the owner it knows, anything for a
/// conversation or user its own map does not give it, whatever the sender's epoch: a node that lost a range can
/// never get it sequenced or stored here.
/// </summary>
/// <remarks>
/// Created only in cluster mode: a single node has no router, and the core's paths are what they were.
/// </remarks>
public sealed partial class ClusterNode : IMeshSink, IMessageRouter, IAsyncDisposable
{
    /// <summary>Reserved cursor device of a forward queue: how far the home has acked it.</summary>
    public const string ForwardedCursor = "#forwarded";

    private const string ForwardQueuePrefix = "#home/";

    private readonly ChatService _chat;
    private readonly SessionRegistry _registry;
    private readonly ConversationDirectory _directory;
    private readonly ClusterRoutingOptions _options;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _stateLock = new();
    private readonly ConcurrentDictionary<string, HomeForwarder> _forwarders = new(StringComparer.Ordinal);
    // user (home here) -> devices of the user connected at other nodes: (device, gateway node). Copy-on-write.
    private readonly ConcurrentDictionary<string, ImmutableArray<(string Device, string Gateway)>> _remoteDevices = new(StringComparer.Ordinal);
    private RoutingState? _state;
    private TaskCompletionSource _stateChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task _mapLoop = Task.CompletedTask;
    private int _disposed;

    public ClusterNode(string nodeId, ChatService chat, ConversationDirectory directory, ClusterRoutingOptions? options = null, ILogger? logger = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(nodeId);
        ArgumentNullException.ThrowIfNull(chat);
        ArgumentNullException.ThrowIfNull(directory);
        _options = options ?? new ClusterRoutingOptions();
        _options.Validate();
        NodeId = nodeId;
        _chat = chat;
        _registry = chat.Registry;
        _directory = directory;
        _logger = logger ?? NullLogger.Instance;
        chat.UseRouter(this);
    }

    public string NodeId { get; }

    public MeshOptions MeshOptions => _options.Mesh;

    /// <summary>Counters of this node's routing.</summary>
    public RoutingMetrics Metrics { get; } = new();

    /// <summary>Counters of this node's sending ends (the receiving end has its own, on its MeshReceiver).</summary>
    public MeshMetrics MeshMetrics { get; } = new();

    /// <summary>The epoch of the map this node routes by; 0 before it has one.</summary>
    public ulong CurrentEpoch => Volatile.Read(ref _state)?.Epoch ?? 0;

    internal RoutingState? State => Volatile.Read(ref _state);

    /// <summary>The forward queue (reserved inbox id) of a home node.</summary>
    public static string ForwardQueueId(string nodeId) => ForwardQueuePrefix + nodeId;

    /// <summary>The link to another member, for tests and status (null when it is not a member).</summary>
    public PeerLink? LinkTo(string nodeId) => State?.LinkOf(nodeId);

    /// <summary>Entries not yet acked by <paramref name="homeNodeId"/>'s home (its forward queue's backlog).</summary>
    /// <summary>Completes when the next map is applied.</summary>
    internal Task StateChangedTask => Volatile.Read(ref _stateChanged).Task;

    public ulong ForwardBacklog(string homeNodeId) => _forwarders.TryGetValue(homeNodeId, out var f) ? f.Backlog : 0;

    /// <summary>Entries not yet acked by their homes, over every home's forward queue (the metric).</summary>
    public ulong TotalForwardBacklog()
    {
        ulong total = 0;
        foreach (var f in _forwarders.Values)
        {
            total += f.Backlog;
        }

        return total;
    }

    /// <summary>Completes once <paramref name="homeNodeId"/> has acked every inbox entry queued for it so far.</summary>
    public Task WhenForwardedAsync(string homeNodeId, CancellationToken cancellationToken) =>
        _forwarders.TryGetValue(homeNodeId, out var f) ? f.WhenDrainedAsync(cancellationToken) : Task.CompletedTask;

    /// <summary>Follows <paramref name="view"/>'s maps from now on (the coordinator is started by the caller).</summary>
    public void Start(ClusterView view)
    {
        ArgumentNullException.ThrowIfNull(view);
        Volatile.Write(ref _view, view);
        _mapLoop = Task.Run(() => FollowMapsAsync(view, _stop.Token));
        _livenessLoop = Task.Run(() => FollowLivenessAsync(view, _stop.Token));
    }

    /// <summary>Completes once this node routes by a map of at least <paramref name="epoch"/>.</summary>
    public async Task WaitForEpochAsync(ulong epoch, CancellationToken cancellationToken)
    {
        while (true)
        {
            var changed = Volatile.Read(ref _stateChanged).Task;
            if (CurrentEpoch >= epoch)
            {
                return;
            }

            await changed.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task FollowMapsAsync(ClusterView view, CancellationToken stop)
    {
        try
        {
            await foreach (var map in view.WatchMapAsync(stop).ConfigureAwait(false))
            {
                try
                {
                    Apply(map);
                }
                catch (Exception e) when (e is ArgumentException or UriFormatException or InvalidOperationException)
                {
                    ClusterLog.MapFailed(_logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>Builds the routing of <paramref name="map"/> and swaps it in: links to new members (or members at a
    /// new address) are created and started, links to members that left are closed, and every forward queue is
    /// woken (a map change may let refused entries through, or add a link they were waiting for).</summary>
    internal void Apply(ClusterMap map)
    {
        List<PeerLink> closed = [];
        lock (_stateLock)
        {
            var previous = _state;
            if (previous is not null && map.Epoch <= previous.Map.Epoch)
            {
                return;
            }

            var active = new List<string>();
            var links = new Dictionary<string, PeerLink>(StringComparer.Ordinal);
            foreach (var member in map.Members)
            {
                if (member.State != MemberState.Joining)
                {
                    active.Add(member.NodeId); // a Leaving member owns its ranges until they are handed over
                }

                if (string.Equals(member.NodeId, NodeId, StringComparison.Ordinal))
                {
                    continue;
                }

                var existing = previous?.LinkOf(member.NodeId);
                if (existing is not null && string.Equals(existing.MeshAddress, member.MeshAddress, StringComparison.Ordinal))
                {
                    links[member.NodeId] = existing;
                    continue;
                }

                var link = new PeerLink(NodeId, member.NodeId, member.MeshAddress, _options.Mesh, MeshMetrics, _logger);
                link.Start();
                links[member.NodeId] = link;
            }

            if (previous is not null)
            {
                foreach (var link in previous.Links)
                {
                    if (!links.TryGetValue(link.NodeId, out var kept) || !ReferenceEquals(kept, link))
                    {
                        closed.Add(link);
                    }
                }
            }

            var ring = active.Count == 0 ? null : HashRing.Create(active, map.VirtualNodes);
            var state = new RoutingState(map, NodeId, ring, links.ToFrozenDictionary(StringComparer.Ordinal));
            state.Reforward = ReforwardOf(previous, state);
            Volatile.Write(ref _state, state);
            Retire(previous);
            foreach (var nodeId in links.Keys)
            {
                if (!_forwarders.ContainsKey(nodeId))
                {
                    var forwarder = new HomeForwarder(this, nodeId, _chat.Store, _directory, _options.ForwardBatch, _options.ForwardTimeout, _options.ReforwardWindow, Metrics, _logger);
                    _forwarders[nodeId] = forwarder;
                    forwarder.Start(_stop.Token);
                }
            }

            // The replication tap takes the map's sets before anyone waiting for this map goes on (lock order:
            // _stateLock, then the replication locks).
            OnReplicationMap(state);
            var signal = _stateChanged;
            _stateChanged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            signal.TrySetResult();
            ClusterLog.MapApplied(_logger, map.Epoch, active.Count, links.Count);
        }

        foreach (var forwarder in _forwarders.Values)
        {
            forwarder.Wake();
        }

        foreach (var link in closed)
        {
            _ = link.DisposeAsync().AsTask();
        }

        OnMapApplied();
    }

    // ---- IMessageRouter: what the core asks ----

    public ulong DirectConversationId(string userA, string userB, int attempt) =>
        attempt < ClusterOps.DirectIdProbes ? ClusterOps.DirectConversationId(userA, userB, attempt) : 0;

    public int DirectIdAttempt(string userA, string userB, ulong conversationId) => ClusterOps.DirectIdAttempt(userA, userB, conversationId);

    public bool OwnsConversation(ulong conversationId) => State is { } s && s.IsSelf(s.OwnerIndexOf(conversationId));

    public bool IsHomeOf(string userId) => State is { } s && s.IsSelf(s.HomeIndexOf(userId));

    public InboxRouting RouteInbox(string[] members) => RouteInbox(State, members);

    private static InboxRouting RouteInbox(RoutingState? s, string[] members)
    {
        if (s?.Ring is null)
        {
            return new InboxRouting(members, members);
        }

        // A member's entry is written here when this node is the ring home of the member's range and serves it; else
        // into the forward queue of the ring home (HomeForwarder), even when that node is Failed and this one serves
        // its range: a failed home's queue is still being sent, and the member's entries must not overtake it.
        Span<int> homes = members.Length <= 128 ? stackalloc int[members.Length] : new int[members.Length];
        var local = 0;
        for (var i = 0; i < members.Length; i++)
        {
            var ringHome = s.RingHomeIndexOf(members[i]);
            homes[i] = s.IsSelf(ringHome) && s.IsSelf(s.HomeIndexOf(members[i])) ? s.SelfIndex : ringHome;
            if (s.IsSelf(homes[i]))
            {
                local++;
            }
        }

        if (local == members.Length)
        {
            return new InboxRouting(members, members);
        }

        var localMembers = new string[local];
        var recipients = new List<string>(local + 2);
        for (var i = 0; i < members.Length; i++)
        {
            if (s.IsSelf(homes[i]))
            {
                localMembers[recipients.Count] = members[i];
                recipients.Add(members[i]);
            }
        }

        for (var i = 0; i < members.Length; i++)
        {
            // One queue entry per home, however many of the members live there.
            if (!s.IsSelf(homes[i]) && recipients.IndexOf(s.QueueIdOf(homes[i]), local) < 0)
            {
                recipients.Add(s.QueueIdOf(homes[i]));
            }
        }

        return new InboxRouting(localMembers, [.. recipients]);
    }

    public void OnCommitted(string[] members, string[] local)
    {
        if (members.Length == local.Length || State is not { } s)
        {
            return; // every recipient's home is here
        }

        foreach (var member in members)
        {
            var home = s.RingHomeIndexOf(member);
            if (home >= 0 && !s.IsSelf(home) && _forwarders.TryGetValue(s.NodeAt(home), out var forwarder))
            {
                forwarder.Wake();
            }
        }
    }

    public async Task<SendOutcome> ForwardSendAsync(IDeviceLink origin, Send send, ulong conversationId, CancellationToken cancellationToken)
    {
        var payload = new ForwardSend
        {
            SenderUser = origin.UserId,
            SenderDevice = origin.DeviceId,
            Send = send.ToByteString(),
            ConversationId = conversationId,
        }.ToByteArray();
        Interlocked.Increment(ref Metrics.SendsForwarded);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.ForwardTimeout);
        try
        {
            // Each round either ends the SEND or follows a refusal: a newer map (bounded by MaxStaleRetries) or a
            // direct conversation id that holds another pair (bounded by the pair's candidates).
            for (var round = 0; round <= _options.MaxStaleRetries + ClusterOps.DirectIdProbes; round++)
            {
                var s = State;
                var owner = s?.OwnerIndexOf(conversationId) ?? -1;
                if (s is null || owner < 0)
                {
                    break;
                }

                if (s.IsSelf(owner))
                {
                    // The map moved the conversation here, or the pair's next candidate id is this node's.
                    var prepared = await _chat.PrepareForwardedAsync(origin, send, conversationId, cancellationToken).ConfigureAwait(false);
                    if (IsDirectIdTaken(prepared.Error, prepared.Message))
                    {
                        if (!NextDirectCandidate(origin, send, ref conversationId, ref payload))
                        {
                            break;
                        }

                        continue;
                    }

                    if (prepared.Error != ReasonCode.Success)
                    {
                        return SendOutcome.Refused(prepared.Error, prepared.Message!);
                    }

                    if (!prepared.Remote)
                    {
                        return await _chat.CommitAsync(origin, send, prepared, null, cancellationToken).ConfigureAwait(false);
                    }

                    continue;
                }

                var ownerId = s.NodeAt(owner);
                if (!IsLive(ownerId))
                {
                    // Nothing is queued: the device retries after retry_after, with the same client_msg_id.
                    Interlocked.Increment(ref Metrics.SendsAnsweredUnavailable);
                    return new SendOutcome(ReasonCode.ServerUnavailable, $"node {ownerId}, which owns this conversation, is down; retry", null, _options.RetryAfter);
                }

                var changed = StateChangedTask; // before the request: a map applied after it ends the wait below
                var link = s.LinkOf(ownerId);
                var outcome = link?.TryRequest(ClusterOpKind.ForwardSend, s.Epoch, payload);
                if (outcome is null)
                {
                    Interlocked.Increment(ref Metrics.LinkQueueFull);
                    break;
                }

                if (await OwnerAnswerOrMoveAsync(outcome, changed, conversationId, owner, deadline.Token).ConfigureAwait(false) is not { } reply)
                {
                    // A new map gave the conversation to another node (the owner failed over): route the SEND there now
                    // rather than wait out forward_timeout for a node that is gone. If the old owner had stored it, it
                    // never acknowledged it; the retry resolves to one message at the new owner.
                    Interlocked.Increment(ref Metrics.SendsRerouted);
                    continue;
                }

                switch (reply.Status)
                {
                    case MeshStatus.Ok when reply.Reply is { } bytes:
                        var result = SendResult.Parser.ParseFrom(bytes);
                        if (result.IdTaken)
                        {
                            if (!NextDirectCandidate(origin, send, ref conversationId, ref payload))
                            {
                                return SendOutcome.Refused(ReasonCode.ServerUnavailable, ConversationDirectory.DirectIdTaken);
                            }

                            continue;
                        }

                        if (result.Reason != 0)
                        {
                            return new SendOutcome((ReasonCode)result.Reason, result.Message, null, result.Reason == (uint)ReasonCode.ServerUnavailable ? _options.RetryAfter : default);
                        }

                        if (send.ToUserId.Length > 0)
                        {
                            _directory.RememberDirect(origin.UserId, send.ToUserId, result.ConversationId);
                        }

                        return new SendOutcome(ReasonCode.Success, null, new AppendResult(result.ConversationId, result.Seq, result.TimestampMs, result.Duplicate, []));
                    case MeshStatus.StaleEpoch:
                        // The owner's map is newer: route again once this node has it (bounded by the deadline).
                        Interlocked.Increment(ref Metrics.StaleEpochRetries);
                        await WaitForEpochAsync(reply.Epoch, deadline.Token).ConfigureAwait(false);
                        continue;
                    case MeshStatus.Rejected:
                        return new SendOutcome((ReasonCode)reply.Reason, "the conversation's owner refused the message", null, _options.RetryAfter);
                    default:
                        break;
                }

                break;
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // The deadline: the owner did not answer in time. It may still store the message; a retry with the
            // same client_msg_id then gets the same SENT.
            if (State is { } now && now.OwnerIndexOf(conversationId) is var owner and >= 0 && now.LinkOf(now.NodeAt(owner)) is { } late
                && late.TryTakeDiagnosticTurn(TimeSpan.FromSeconds(1)))
            {
                // At most once a second per link: the description walks the stream's whole queue under its lock, and a
                // stalled stream times out many SENDs at once.
                ClusterLog.ForwardTimedOut(_logger, now.NodeAt(owner), (long)_options.ForwardTimeout.TotalMilliseconds, late.Peer.DescribeState(static k => ((ClusterOpKind)k).ToString()));
            }
        }
        catch (RouteUnavailableException)
        {
        }

        Interlocked.Increment(ref Metrics.SendsAnsweredUnavailable);
        return new SendOutcome(ReasonCode.ServerUnavailable, "the node that owns this conversation is unreachable; retry", null, _options.RetryAfter);
    }

    /// <summary>The owner's reply to a forwarded SEND; null as soon as a newer map serves the conversation from another
    /// node than <paramref name="owner"/> (a failover: the gateway must not wait for a dead node's answer).</summary>
    private async Task<MeshReply?> OwnerAnswerOrMoveAsync(Task<MeshReply> outcome, Task changed, ulong conversationId, int owner, CancellationToken deadline)
    {
        while (!outcome.IsCompleted)
        {
            await Task.WhenAny(outcome, changed).WaitAsync(deadline).ConfigureAwait(false);
            if (outcome.IsCompleted)
            {
                break;
            }

            changed = StateChangedTask;
            if (State is { } now && now.OwnerIndexOf(conversationId) != owner)
            {
                return null;
            }
        }

        return await outcome.ConfigureAwait(false);
    }

    private static bool IsDirectIdTaken(ReasonCode error, string? message) =>
        error == ReasonCode.ServerUnavailable && string.Equals(message, ConversationDirectory.DirectIdTaken, StringComparison.Ordinal);

    /// <summary>Moves a direct SEND to its pair's next candidate id (and re-encodes the forward); false when none is left.</summary>
    private bool NextDirectCandidate(IDeviceLink origin, Send send, ref ulong conversationId, ref byte[] payload)
    {
        var next = send.ToUserId.Length == 0 ? 0 : DirectConversationId(origin.UserId, send.ToUserId, DirectIdAttempt(origin.UserId, send.ToUserId, conversationId) + 1);
        if (next == 0)
        {
            return false;
        }

        Interlocked.Increment(ref Metrics.DirectIdProbes);
        conversationId = next;
        payload = new ForwardSend { SenderUser = origin.UserId, SenderDevice = origin.DeviceId, Send = send.ToByteString(), ConversationId = next }.ToByteArray();
        return true;
    }

    public void DeliverToRemoteDevices(string userId, ulong inboxSeq, DeliveryMessage message)
    {
        if (!_remoteDevices.TryGetValue(userId, out var devices) || devices.IsEmpty || State is not { } s)
        {
            return;
        }

        var deliver = new DeviceDeliver { User = userId, InboxSeq = inboxSeq, Message = ClusterOps.ToWire(message) };
        foreach (var (device, gateway) in devices)
        {
            deliver.Device = device;
            // Dropped when the gateway's queue is full: the device's stream then sees a gap at the next message and
            // catches up from this home.
            if (s.LinkOf(gateway)?.Signals?.TryPost(ClusterOpKind.DeviceDeliver, s.Epoch, deliver.ToByteArray()) == true)
            {
                Interlocked.Increment(ref Metrics.DeliversPosted);
            }
            else
            {
                Interlocked.Increment(ref Metrics.DeliversDropped);
            }
        }
    }

    public async ValueTask ReadRemoteInboxAsync(string userId, ulong afterInboxSeq, int limit, List<DeliveryItem> into, CancellationToken cancellationToken)
    {
        var s = State;
        var request = new ReadInbox { User = userId, AfterInboxSeq = afterInboxSeq, Limit = (uint)limit };
        var reply = await ReadFromAsync(s, s?.HomeOf(userId), ClusterOpKind.ReadInbox, request.ToByteArray(), cancellationToken).ConfigureAwait(false);
        foreach (var item in InboxPage.Parser.ParseFrom(reply).Items)
        {
            into.Add(new DeliveryItem(item.InboxSeq, item.Message is null ? null : ClusterOps.ToDelivery(item.Message)));
        }
    }

    public async Task<(ReasonCode Error, string? Message, HistoryPage? Page)> RemoteHistoryAsync(string userId, History request, int maxFrameBytes, CancellationToken cancellationToken)
    {
        var s = State;
        var payload = new HistoryRequest { User = userId, History = request.ToByteString(), MaxFrameBytes = (uint)Math.Max(0, maxFrameBytes) }.ToByteArray();
        var reply = await ReadFromAsync(s, s?.OwnerOf(request.ConversationId), ClusterOpKind.History, payload, cancellationToken).ConfigureAwait(false);
        var result = HistoryResult.Parser.ParseFrom(reply);
        return result.Reason != 0
            ? ((ReasonCode)result.Reason, result.Message, null)
            : (ReasonCode.Success, null, HistoryPage.Parser.ParseFrom(result.Page));
    }

    /// <summary>A read from another node (an inbox page, a history page): its reply, or
    /// <see cref="RouteUnavailableException"/> when the node is unknown, its link full, it answers late or not
    /// with a reply (every reply of a read has bytes, so none means refused or lost).</summary>
    private async Task<byte[]> ReadFromAsync(RoutingState? s, string? node, ClusterOpKind kind, byte[] payload, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref Metrics.RemoteReads);
        if (node is not null && !IsLive(node))
        {
            Interlocked.Increment(ref Metrics.RemoteReadFailures);
            throw new RouteUnavailableException($"node {node} is down (no live lease); the {kind} is not sent");
        }

        var outcome = node is null ? null : s!.LinkOf(node)?.TryRequest(kind, s.Epoch, payload);
        MeshReply reply = default;
        try
        {
            reply = outcome is null ? default : await outcome.WaitAsync(_options.ReadTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            outcome = null;
        }

        if (outcome is null || reply.Status != MeshStatus.Ok || reply.Reply is null)
        {
            Interlocked.Increment(ref Metrics.RemoteReadFailures);
            throw new RouteUnavailableException($"node {node ?? "(none: no map)"} did not answer the {kind} in time ({reply.Status})");
        }

        return reply.Reply;
    }

    public void AckRemoteInbox(IDeviceLink device, ulong inboxSeq)
    {
        if (State is { } s && s.HomeOf(device.UserId) is { } home)
        {
            s.LinkOf(home)?.TryPost(ClusterOpKind.AckInbox, s.Epoch, new AckInbox { User = device.UserId, Device = device.DeviceId, InboxSeq = inboxSeq }.ToByteArray());
        }
    }

    public void OnDeviceSession(IDeviceLink device, bool online)
    {
        if (State is not { } s || s.HomeOf(device.UserId) is not { } home)
        {
            return;
        }

        var login = LoginOf(device, online);
        if (string.Equals(home, NodeId, StringComparison.Ordinal))
        {
            // Local sessions are in the local registry; one that logs in here takes over a session of the same
            // device at another gateway.
            if (online)
            {
                var registration = new DeviceRegistration { User = device.UserId, Device = device.DeviceId, Online = true, Login = login };
                Register(registration, NodeId, s);
                OnRegistered(registration, NodeId);
            }
            else
            {
                ForgetLogin(device.UserId, device.DeviceId, login);
            }

            return;
        }

        s.LinkOf(home)?.TryPost(ClusterOpKind.DeviceRegistration, s.Epoch, new DeviceRegistration { User = device.UserId, Device = device.DeviceId, Online = online, Login = login }.ToByteArray());
    }

    // ---- IMeshSink: what other nodes ask ----

    public async ValueTask HandleAsync(MeshInboundBatch batch, CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        var s = State;
        if (s is null)
        {
            // The mesh listens before this node has its map (a restarting node must be reachable once listed). What
            // other nodes resend meanwhile waits, unacked, instead of being rejected: a rejected inbox entry is
            // skipped by its owner's forward queue. The stream holds it (backpressure) until the map is here.
            await WaitForEpochAsync(1, cancellationToken).ConfigureAwait(false);
            s = State;
        }

        s = await WaitForSendersMapAsync(batch, s, cancellationToken).ConfigureAwait(false);
        var mapped = Stopwatch.GetTimestamp();

        List<Task>? work = null;
        for (var i = 0; i < batch.Count; i++)
        {
            var message = batch[i];
            try
            {
                var task = await HandleOneAsync(batch, i, message, s, cancellationToken).ConfigureAwait(false);
                if (task is not null)
                {
                    (work ??= []).Add(task);
                }
            }
            catch (InvalidProtocolBufferException)
            {
                batch.Reject(i, (uint)ReasonCode.MalformedBody);
            }
            catch (ArgumentException)
            {
                // A field the core refuses (an empty or oversized id, a missing message). Refused, not thrown: an
                // exception would fail the stream and the same message would come back forever.
                batch.Reject(i, (uint)ReasonCode.InvalidField);
            }
        }

        var prepared = Stopwatch.GetTimestamp();
        if (work is not null)
        {
            // Every operation was enqueued in order above; "acked" means each is done (durable).
            await Task.WhenAll(work).ConfigureAwait(false);
        }

        var total = Stopwatch.GetElapsedTime(started);
        if (total > _options.ForwardTimeout / 4)
        {
            Interlocked.Increment(ref Metrics.SlowInboundBatches);
            ClusterLog.SlowInboundBatch(_logger, batch.Origin, (long)total.TotalMilliseconds, OperationsOf(batch),
                (long)Stopwatch.GetElapsedTime(started, mapped).TotalMilliseconds, (long)Stopwatch.GetElapsedTime(mapped, prepared).TotalMilliseconds,
                (long)Stopwatch.GetElapsedTime(prepared).TotalMilliseconds);
        }
    }

    /// <summary>For the slow-batch log: each kind of operation in the batch with its count.</summary>
    private static string OperationsOf(MeshInboundBatch batch)
    {
        var counts = new SortedDictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < batch.Count; i++)
        {
            var kind = ((ClusterOpKind)batch[i].Kind).ToString();
            counts[kind] = counts.GetValueOrDefault(kind) + 1;
        }

        return string.Join(", ", counts.Select(c => $"{c.Value} {c.Key}"));
    }

    /// <summary>Checks and starts one operation; returns the task of what it still has to finish (a commit), or null.</summary>
    private async ValueTask<Task?> HandleOneAsync(MeshInboundBatch batch, int index, MeshInboundMessage message, RoutingState? s, CancellationToken cancellationToken)
    {
        if (s?.Ring is null)
        {
            batch.Reject(index, (uint)ReasonCode.ServerUnavailable); // no map yet: nothing is ours
            return null;
        }

        switch ((ClusterOpKind)message.Kind)
        {
            case ClusterOpKind.ForwardSend:
            {
                var forward = ForwardSend.Parser.ParseFrom(message.Payload.Span);
                if (forward.SenderUser.Length == 0 || forward.SenderDevice.Length == 0)
                {
                    throw new ArgumentException("a ForwardSend names its sender's user and device");
                }

                var owner = s.OwnerIndexOf(forward.ConversationId);
                if (!s.IsSelf(owner))
                {
                    batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(owner));
                    return null;
                }

                var send = Send.Parser.ParseFrom(forward.Send);
                var origin = new RemoteDevice(forward.SenderUser, forward.SenderDevice);
                var prepared = await _chat.PrepareForwardedAsync(origin, send, forward.ConversationId, cancellationToken).ConfigureAwait(false);
                if (prepared.Error != ReasonCode.Success || prepared.Remote)
                {
                    batch.Reply(index, new SendResult
                    {
                        Reason = (uint)(prepared.Remote ? ReasonCode.ServerUnavailable : prepared.Error),
                        Message = prepared.Message ?? "",
                        IdTaken = IsDirectIdTaken(prepared.Error, prepared.Message),
                    }.ToByteArray());
                    return null;
                }

                return CommitForwardedAsync(batch, index, origin, send, prepared, cancellationToken);
            }

            case ClusterOpKind.InboxAppend:
            {
                var append = InboxAppend.Parser.ParseFrom(message.Payload.Span);
                if (s.Map.FindMember(batch.Origin) is { State: MemberState.Failed })
                {
                    // A failed-over owner's forward queues may hold entries of writes it never acknowledged, whose seqs
                    // the new owner has given to other messages: they must not reach an inbox (or a log). What it did
                    // acknowledge, the new owner re-forwards from its own log.
                    batch.RefuseStaleEpoch(index, s.Epoch, "");
                    return null;
                }

                foreach (var recipient in append.Recipients)
                {
                    var home = s.HomeIndexOf(recipient);
                    if (!s.IsSelf(home) || s.Owners!.IsFailed(home)) // a Failed node serves nobody's inbox: its store is stale
                    {
                        batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(home));
                        return null;
                    }
                }

                if (append.Message is null || append.Recipients.Count == 0)
                {
                    throw new ArgumentException("an InboxAppend needs a message and recipients");
                }

                // From the node that serves the conversation now: its record is the conversation's (CopyRequest.FromOwner).
                var owner = s.OwnerIndexOf(append.Message.ConversationId);
                return StoreForwardedAsync(batch, index, append, owner >= 0 && string.Equals(s.NodeAt(owner), batch.Origin, StringComparison.Ordinal), cancellationToken);
            }

            case ClusterOpKind.DeviceRegistration:
            {
                var registration = DeviceRegistration.Parser.ParseFrom(message.Payload.Span);
                var home = s.HomeIndexOf(registration.User);
                if (!s.IsSelf(home))
                {
                    batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(home));
                    return null;
                }

                Register(registration, batch.Origin, s);
                OnRegistered(registration, batch.Origin);
                return null;
            }

            case ClusterOpKind.Reattach:
                ReattachSessionsOf(batch.Origin, s);
                return null;

            case ClusterOpKind.DeviceDeliver:
            {
                var deliver = DeviceDeliver.Parser.ParseFrom(message.Payload.Span);
                if (deliver.Message is null)
                {
                    throw new ArgumentException("a DeviceDeliver needs a message");
                }

                DeliveryMessage? delivery = null;
                foreach (var device in _registry.DevicesOf(deliver.User))
                {
                    if (string.Equals(device.DeviceId, deliver.Device, StringComparison.Ordinal))
                    {
                        device.OnInboxAppended(deliver.InboxSeq, delivery ??= ClusterOps.ToDelivery(deliver.Message));
                    }
                }

                return null;
            }

            case ClusterOpKind.DeviceTakenOver:
            {
                var takenOver = DeviceRegistration.Parser.ParseFrom(message.Payload.Span);
                CloseSessionsBefore(takenOver.User, takenOver.Device, takenOver.Login);
                return null;
            }

            case ClusterOpKind.History:
            {
                var request = HistoryRequest.Parser.ParseFrom(message.Payload.Span);
                var history = History.Parser.ParseFrom(request.History);
                var owner = s.OwnerIndexOf(history.ConversationId);
                if (!s.IsSelf(owner))
                {
                    batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(owner));
                    return null;
                }

                // The page must fit the device's frame and this reply.
                var maxFrame = (int)Math.Min(request.MaxFrameBytes == 0 ? int.MaxValue : request.MaxFrameBytes, _options.Mesh.MaxReplyBytes - 64);
                var (error, text, page) = _chat.History(request.User, history, maxFrame);
                batch.Reply(index, (error == ReasonCode.Success
                    ? new HistoryResult { Page = page!.ToByteString() }
                    : new HistoryResult { Reason = (uint)error, Message = text ?? "" }).ToByteArray());
                return null;
            }

            case ClusterOpKind.ReadInbox:
            {
                var read = ReadInbox.Parser.ParseFrom(message.Payload.Span);
                var home = s.HomeIndexOf(read.User);
                if (!s.IsSelf(home))
                {
                    batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(home));
                    return null;
                }

                batch.Reply(index, ReadPage(read).ToByteArray());
                return null;
            }

            case ClusterOpKind.AckInbox:
            {
                var ack = AckInbox.Parser.ParseFrom(message.Payload.Span);
                var home = s.HomeIndexOf(ack.User);
                if (!s.IsSelf(home))
                {
                    batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(home));
                    return null;
                }

                return AckForGatewayAsync(batch, index, ack, cancellationToken);
            }

            case ClusterOpKind.GroupOp or ClusterOpKind.GroupList or ClusterOpKind.GroupLogToHome or ClusterOpKind.GroupLogToGateway
                or ClusterOpKind.GroupLogRead or ClusterOpKind.GroupStreams or ClusterOpKind.GroupAck:
                return HandleGroupOperation(batch, index, message, s, cancellationToken);
            case >= ClusterOpKind.ReadReceipt and <= ClusterOpKind.FetchKeys:
                return HandleSignal(batch, index, message, s, cancellationToken);
            case ClusterOpKind.HandoverStep:
                return HandleHandoverStep(batch, index, message);

            case ClusterOpKind.HandoverStepDone:
                return HandleHandoverStepDone(batch, index, message);

            case ClusterOpKind.RangeChunk:
                return HandleRangeChunk(batch, index, message, s, cancellationToken);

            case ClusterOpKind.ReplicaRecords or ClusterOpKind.ReplicaCopy:
                return HandleReplicaBatch(batch, index, message, s, cancellationToken);

            case ClusterOpKind.DeviceRevocation or ClusterOpKind.SettingsRequest:
                return HandleAccountOperation(batch, index, message, cancellationToken);
            case ClusterOpKind.ReplicaReset:
                return HandleReplicaReset(batch, index, message, s, cancellationToken);

            default:
                batch.Reject(index, (uint)ReasonCode.BadRequest);
                return null;
        }
    }

    private async Task CommitForwardedAsync(MeshInboundBatch batch, int index, IDeviceLink origin, Send send, PreparedSend prepared, CancellationToken cancellationToken)
    {
        SendResult answer;
        try
        {
            var outcome = await _chat.CommitAsync(origin, send, prepared, null, cancellationToken).ConfigureAwait(false);
            answer = outcome.Result is { } r
                ? new SendResult { ConversationId = r.ConversationId, Seq = r.Seq, TimestampMs = r.TimestampMs, Duplicate = r.IsDuplicate }
                : new SendResult { Reason = (uint)outcome.Error, Message = outcome.Message ?? "" };
        }
        catch (StorageException)
        {
            answer = new SendResult { Reason = (uint)ReasonCode.ServerUnavailable, Message = "the message could not be stored; retry" };
        }
        catch (ArgumentException e)
        {
            answer = new SendResult { Reason = (uint)ReasonCode.InvalidField, Message = e.Message };
        }

        batch.Reply(index, answer.ToByteArray());
    }

    private async Task AckForGatewayAsync(MeshInboundBatch batch, int index, AckInbox ack, CancellationToken cancellationToken)
    {
        try
        {
            await _chat.AckAsync(new RemoteDevice(ack.User, ack.Device), ack.InboxSeq, null, cancellationToken).ConfigureAwait(false);
        }
        catch (ArgumentException)
        {
            batch.Reject(index, (uint)ReasonCode.InvalidField);
        }
    }

    /// <summary>Home: stores a forwarded message with its inbox entries (once per (conversation, seq)), then tells
    /// the recipients' devices, here and at other gateways.</summary>
    private async Task StoreForwardedAsync(MeshInboundBatch batch, int index, InboxAppend append, bool fromOwner, CancellationToken cancellationToken)
    {
        var recipients = new string[append.Recipients.Count];
        append.Recipients.CopyTo(recipients, 0);
        try
        {
            await StoreCopiesHereAsync([(ClusterOps.ToStored(append.Message), recipients)], cancellationToken, fromOwner).ConfigureAwait(false);
        }
        catch (ArgumentException)
        {
            batch.Reject(index, (uint)ReasonCode.InvalidField);
        }
    }

    /// <summary>Home: stores messages of other owners with the inbox entries of their recipients (each once: the copy
    /// marks), in writes of at most <see cref="IChatStore.MaxCopiesPerWrite"/>, in order, then tells their devices, here
    /// and at other gateways (one forwarded copy, or a forward queue's round for recipients this node serves).
    /// <paramref name="fromOwner"/>: see <see cref="CopyRequest.FromOwner"/>. Throws <see cref="ArgumentException"/> on a
    /// field the store refuses.</summary>
    internal async Task StoreCopiesHereAsync(IReadOnlyList<(StoredMessage Message, string[] Recipients)> copies, CancellationToken cancellationToken, bool fromOwner = false)
    {
        for (var from = 0; from < copies.Count; from += IChatStore.MaxCopiesPerWrite)
        {
            var requests = new CopyRequest[Math.Min(IChatStore.MaxCopiesPerWrite, copies.Count - from)];
            for (var i = 0; i < requests.Length; i++)
            {
                var (message, recipients) = copies[from + i];
                requests[i] = new CopyRequest(message, recipients, PushRecipientsOf(message, recipients), fromOwner);
            }

            var results = await _chat.Store.StoreCopiesAsync(requests, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < requests.Length; i++)
            {
                OnCopyStored(requests[i].Message, (string[])requests[i].InboxRecipients, (string[])requests[i].PushRecipients, results[i]);
            }
        }
    }

    private void OnCopyStored(StoredMessage stored, string[] recipients, string[] push, AppendResult result)
    {
        Interlocked.Increment(ref result.IsDuplicate ? ref Metrics.CopiesDuplicate : ref Metrics.CopiesStored);

        if (result.IsDuplicate)
        {
            return;
        }

        if (push.Length > 0)
        {
            _chat.RaisePushJobsAdded();
        }

        var message = DeliveryMessage.FromStored(stored);
        for (var i = 0; i < recipients.Length; i++)
        {
            if (result.InboxSeqs[i] == 0)
            {
                continue; // this recipient had it already
            }

            foreach (var device in _registry.DevicesOf(recipients[i]))
            {
                device.OnInboxAppended(result.InboxSeqs[i], message);
            }

            DeliverToRemoteDevices(recipients[i], result.InboxSeqs[i], message);
        }
    }

    /// <summary>
    /// Home: where the user's devices are connected. A device is connected at one node at a time: a login at a new
    /// gateway (or here, <paramref name="gateway"/> = this node) closes its session at the previous one with
    /// SESSION_TAKEN_OVER; a close reported by a gateway the device has since left is ignored.
    /// </summary>
    private void Register(DeviceRegistration registration, string gateway, RoutingState s)
    {
        if (!AdmitLogin(registration, gateway, s))
        {
            return; // an older login than one already registered: it does not take the device over
        }

        var user = registration.User;
        var device = registration.Device;
        string? previous = null;
        while (true)
        {
            var exists = _remoteDevices.TryGetValue(user, out var devices);
            devices = exists ? devices : [];
            var builder = ImmutableArray.CreateBuilder<(string Device, string Gateway)>(devices.Length + 1);
            previous = null;
            foreach (var d in devices)
            {
                if (!string.Equals(d.Device, device, StringComparison.Ordinal))
                {
                    builder.Add(d);
                }
                else if (registration.Online)
                {
                    previous = d.Gateway;
                }
                else if (!string.Equals(d.Gateway, gateway, StringComparison.Ordinal))
                {
                    builder.Add(d);
                }
            }

            if (registration.Online && !string.Equals(gateway, NodeId, StringComparison.Ordinal))
            {
                builder.Add((device, gateway));
            }

            var next = builder.ToImmutable();
            var swapped = !exists ? next.IsEmpty || _remoteDevices.TryAdd(user, next)
                : next.IsEmpty ? _remoteDevices.TryRemove(new KeyValuePair<string, ImmutableArray<(string Device, string Gateway)>>(user, devices))
                : _remoteDevices.TryUpdate(user, next, devices);
            if (swapped)
            {
                break;
            }
        }

        if (!registration.Online)
        {
            return;
        }

        if (previous is not null && !string.Equals(previous, gateway, StringComparison.Ordinal))
        {
            s.LinkOf(previous)?.TryPost(ClusterOpKind.DeviceTakenOver, s.Epoch, new DeviceRegistration { User = user, Device = device, Login = registration.Login }.ToByteArray());
        }

        if (!string.Equals(gateway, NodeId, StringComparison.Ordinal))
        {
            CloseSessionsBefore(user, device, registration.Login);
        }
    }

    /// <summary>Home: a page of a user's inbox for a remote gateway's catch-up, as much as fits one reply.</summary>
    private InboxPage ReadPage(ReadInbox read)
    {
        var items = new List<DeliveryItem>();
        var limit = (int)Math.Clamp(read.Limit, 1, 1024);
        _chat.ReadInboxAfter(read.User, read.AfterInboxSeq, limit, items);
        var page = new InboxPage { LastInboxSeq = _chat.Store.GetLastInboxSeq(read.User), Read = true };
        var budget = _options.Mesh.MaxReplyBytes - 64;
        foreach (var item in items)
        {
            var wire = new InboxItem { InboxSeq = item.Position, Message = item.Message is null ? null : ClusterOps.ToWire(item.Message) };
            var size = wire.CalculateSize() + 8;
            if (size > budget && page.Items.Count > 0)
            {
                break; // the rest comes with the next read
            }

            budget -= size;
            page.Items.Add(wire);
        }

        return page;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        Volatile.Read(ref _tap)?.Close();
        await _mapLoop.ConfigureAwait(false);
        await _livenessLoop.ConfigureAwait(false);
        await _failoverLoop.ConfigureAwait(false);
        await _replicationLoop.ConfigureAwait(false);
        foreach (var forwarder in _forwarders.Values)
        {
            await forwarder.Stopped.ConfigureAwait(false);
        }

        if (State is { } s)
        {
            foreach (var link in s.Links)
            {
                await link.DisposeAsync().ConfigureAwait(false);
            }
        }

        _stop.Dispose();
    }
}
