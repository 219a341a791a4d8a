using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Cluster.Mesh.Wire;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>Counters of a node's group routing (docs/cluster.md, "Groups").</summary>
public sealed class GroupRoutingMetrics
{
    internal long OpsForwarded;
    internal long OpsAnsweredUnavailable;
    internal long IdsRedrawn;
    internal long ListsScattered;
    internal long LogPosts;
    internal long LogPostsDropped;
    internal long LogReads;
    internal long AcksForwarded;
    internal long StreamStartsMissed;

    public GroupRoutingSnapshot Snapshot() => new(
        Interlocked.Read(ref OpsForwarded), Interlocked.Read(ref OpsAnsweredUnavailable), Interlocked.Read(ref IdsRedrawn),
        Interlocked.Read(ref ListsScattered), Interlocked.Read(ref LogPosts), Interlocked.Read(ref LogPostsDropped),
        Interlocked.Read(ref LogReads), Interlocked.Read(ref AcksForwarded), Interlocked.Read(ref StreamStartsMissed));
}

/// <summary>A point-in-time copy of <see cref="GroupRoutingMetrics"/>.</summary>
public readonly record struct GroupRoutingSnapshot(
    long OpsForwarded, long OpsAnsweredUnavailable, long IdsRedrawn, long ListsScattered,
    long LogPosts, long LogPostsDropped, long LogReads, long AcksForwarded, long StreamStartsMissed);

/// <summary>
/// Groups across nodes (docs/cluster.md, "Groups"). A group lives on the ring owner of its id, like any
/// conversation: the owner keeps its record, members and log, runs every change through the node's
/// <see cref="GroupService"/> and sequences its messages. Ids are drawn at random by the gateway in
/// [<see cref="ChatStore.FirstDrawnGroupId"/>, <see cref="ChatStore.FirstDerivedConversationId"/>) and the owner
/// creates the group only if the id is free, so no node allocates ids and no id→node table exists.
/// <para>
/// Small groups ride the paths of direct chats: SENDs go to the owner (ForwardSend), the owner's commit writes the
/// members' inbox entries into their homes' forward queues, SYSTEM messages of membership changes too. Large groups
/// (fan-out on read) keep their log on the owner only: a commit there is posted live, through each member's home,
/// to the gateways of the member's devices (<see cref="ClusterOpKind.GroupLogToHome"/>,
/// <see cref="ClusterOpKind.GroupLogToGateway"/>), and a device's group stream catches up by reading the owner's log
/// (<see cref="ClusterOpKind.GroupLogRead"/>), as <c>DeliveryStream</c> reads the local log on one node.
/// </para>
/// </summary>
public sealed partial class ClusterNode : IGroupRouter
{
    /// <summary>Draws of a group id before a create is refused: a taken id is a 2^-62 chance per existing group.</summary>
    public const int MaxGroupIdDraws = 8;

    /// <summary>Counters of this node's group routing.</summary>
    public GroupRoutingMetrics GroupMetrics { get; } = new();

    /// <summary>A group id drawn at random from the range the store's counter and the derived direct ids never use.</summary>
    public static ulong DrawGroupId() =>
        ChatStore.FirstDrawnGroupId + (ulong)Random.Shared.NextInt64(1, (long)(ChatStore.FirstDerivedConversationId - ChatStore.FirstDrawnGroupId));

    /// <summary>Where this node's group ids come from (<see cref="DrawGroupId"/>; tests place a group on a chosen owner,
    /// or make a draw collide).</summary>
    internal Func<ulong> GroupIdSource { get; set; } = DrawGroupId;

    private GroupService Groups => _chat.Groups ?? throw new InvalidOperationException("the node has no GroupService");

    // ---- IGroupRouter: what the core asks (gateway side) ----

    public async Task<GroupOutcome> HandleGroupRequestAsync(string userId, GroupRequest request, int maxFrameBytes, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        switch (request.OpCase)
        {
            case GroupRequest.OpOneofCase.List:
                return await ListAsync(userId, request.RequestId, maxFrameBytes, cancellationToken).ConfigureAwait(false);
            case GroupRequest.OpOneofCase.Create:
                for (var draw = 0; draw < MaxGroupIdDraws; draw++)
                {
                    var outcome = await RunOnOwnerAsync(userId, request, GroupIdSource(), maxFrameBytes, cancellationToken).ConfigureAwait(false);
                    if (!IsGroupIdTaken(outcome))
                    {
                        return outcome;
                    }

                    Interlocked.Increment(ref GroupMetrics.IdsRedrawn);
                }

                return GroupOutcome.Refused(ReasonCode.ServerUnavailable, "no free group id was found; retry");
            default:
                var conversationId = GroupOf(request);
                return conversationId == 0
                    ? await Groups.HandleOwnedAsync(userId, request, maxFrameBytes, 0, cancellationToken).ConfigureAwait(false) // refused there
                    : await RunOnOwnerAsync(userId, request, conversationId, maxFrameBytes, cancellationToken).ConfigureAwait(false);
        }
    }

    private static bool IsGroupIdTaken(GroupOutcome outcome) =>
        outcome.Error == ReasonCode.ServerUnavailable && string.Equals(outcome.Message, GroupService.GroupIdTaken, StringComparison.Ordinal);

    private static ulong GroupOf(GroupRequest request) => request.OpCase switch
    {
        GroupRequest.OpOneofCase.AddMembers => request.AddMembers.ConversationId,
        GroupRequest.OpOneofCase.RemoveMembers => request.RemoveMembers.ConversationId,
        GroupRequest.OpOneofCase.Leave => request.Leave.ConversationId,
        GroupRequest.OpOneofCase.SetAdmin => request.SetAdmin.ConversationId,
        GroupRequest.OpOneofCase.Get => request.Get.ConversationId,
        _ => 0,
    };

    /// <summary>Runs a group request on the owner of <paramref name="conversationId"/> (here, or over the mesh),
    /// following STALE_EPOCH refusals to a newer map within the forward deadline.</summary>
    private async Task<GroupOutcome> RunOnOwnerAsync(string userId, GroupRequest request, ulong conversationId, int maxFrameBytes, CancellationToken cancellationToken)
    {
        var drawnId = request.OpCase == GroupRequest.OpOneofCase.Create ? conversationId : 0;
        byte[]? payload = null;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.ForwardTimeout);
        try
        {
            for (var round = 0; round <= _options.MaxStaleRetries; round++)
            {
                var s = State;
                var owner = s?.OwnerIndexOf(conversationId) ?? -1;
                if (s is null || owner < 0)
                {
                    break;
                }

                if (s.IsSelf(owner))
                {
                    return await Groups.HandleOwnedAsync(userId, request, maxFrameBytes, drawnId, cancellationToken).ConfigureAwait(false);
                }

                payload ??= new GroupOp
                {
                    User = userId,
                    Request = request.ToByteString(),
                    ConversationId = conversationId,
                    MaxFrameBytes = (uint)Math.Max(0, maxFrameBytes),
                }.ToByteArray();
                Interlocked.Increment(ref GroupMetrics.OpsForwarded);
                var outcome = s.LinkOf(s.NodeAt(owner))?.TryRequest(ClusterOpKind.GroupOp, s.Epoch, payload);
                if (outcome is null)
                {
                    Interlocked.Increment(ref Metrics.LinkQueueFull);
                    break;
                }

                var reply = await outcome.WaitAsync(deadline.Token).ConfigureAwait(false);
                switch (reply.Status)
                {
                    case MeshStatus.Ok when reply.Reply is { } bytes:
                        return ToOutcome(GroupOpResult.Parser.ParseFrom(bytes));
                    case MeshStatus.StaleEpoch:
                        Interlocked.Increment(ref Metrics.StaleEpochRetries);
                        await WaitForEpochAsync(reply.Epoch, deadline.Token).ConfigureAwait(false);
                        continue;
                    case MeshStatus.Rejected:
                        return GroupOutcome.Refused((ReasonCode)reply.Reason, "the group's node refused the request");
                    default:
                        break;
                }

                break;
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // The deadline. A change may still be applied by the owner; GET or LIST shows whether it was.
        }
        catch (RouteUnavailableException)
        {
        }

        Interlocked.Increment(ref GroupMetrics.OpsAnsweredUnavailable);
        return GroupOutcome.Refused(ReasonCode.ServerUnavailable, "the node that owns this group is unreachable; retry");
    }

    private static GroupOutcome ToOutcome(GroupOpResult result) =>
        result.Reason == 0
            ? new GroupOutcome(ReasonCode.Success, null, GroupResult.Parser.ParseFrom(result.Result))
            : GroupOutcome.Refused((ReasonCode)result.Reason, result.IdTaken ? GroupService.GroupIdTaken : result.Message);

    private static GroupOpResult ToResult(GroupOutcome outcome) =>
        outcome.Error == ReasonCode.Success
            ? new GroupOpResult { Result = outcome.Result!.ToByteString(), Read = true }
            : new GroupOpResult { Reason = (uint)outcome.Error, Message = outcome.Message ?? "", IdTaken = IsGroupIdTaken(outcome), Read = true };

    /// <summary>
    /// LIST: every active member lists the user's groups it owns, and the answers are merged in id order into one
    /// frame (members while they fit, as on one node). All or nothing: a node that does not answer makes the list
    /// SERVER_UNAVAILABLE rather than silently short.
    /// </summary>
    private async Task<GroupOutcome> ListAsync(string userId, ulong requestId, int maxFrameBytes, CancellationToken cancellationToken)
    {
        var s = State;
        if (s?.Ring is null)
        {
            return GroupOutcome.Refused(ReasonCode.ServerUnavailable, "no cluster map yet; retry");
        }

        Interlocked.Increment(ref GroupMetrics.ListsScattered);
        var request = new GroupRequest { RequestId = requestId, List = new GroupListRequest() };
        var payload = new GroupListOwned { User = userId, MaxFrameBytes = (uint)Math.Max(0, maxFrameBytes) }.ToByteArray();
        var answers = new Task<GroupOutcome>[s.Ring.NodeCount];
        for (var i = 0; i < answers.Length; i++)
        {
            answers[i] = !s.ServesAny(i) ? Task.FromResult(new GroupOutcome(ReasonCode.Success, null, new GroupResult()))
                : s.IsSelf(i)
                ? Groups.HandleOwnedAsync(userId, request, maxFrameBytes, 0, cancellationToken)
                : ListAtAsync(s, s.NodeAt(i), payload, cancellationToken);
        }

        var groups = new List<GroupInfo>();
        foreach (var answer in answers)
        {
            var outcome = await answer.ConfigureAwait(false);
            if (outcome.Error != ReasonCode.Success)
            {
                return outcome;
            }

            groups.AddRange(outcome.Result!.Groups);
        }

        groups.Sort(static (a, b) => a.ConversationId.CompareTo(b.ConversationId));
        var result = new GroupResult { RequestId = requestId };
        var size = GroupService.ListHeaderBytes;
        foreach (var info in groups)
        {
            if (!GroupService.TryAddFitting(result, info, ref size, maxFrameBytes))
            {
                break;
            }
        }

        return new GroupOutcome(ReasonCode.Success, null, result);
    }

    private async Task<GroupOutcome> ListAtAsync(RoutingState s, string node, byte[] payload, CancellationToken cancellationToken)
    {
        try
        {
            return ToOutcome(GroupOpResult.Parser.ParseFrom(await ReadFromAsync(s, node, ClusterOpKind.GroupList, payload, cancellationToken).ConfigureAwait(false)));
        }
        catch (RouteUnavailableException)
        {
            return GroupOutcome.Refused(ReasonCode.ServerUnavailable, $"node {node} did not list its groups in time; retry");
        }
    }

    public void DeliverGroupLog(string[] members, DeliveryMessage message, bool write)
    {
        ArgumentNullException.ThrowIfNull(members);
        ArgumentNullException.ThrowIfNull(message);
        var s = State;
        if (s?.Ring is null)
        {
            return;
        }

        ByteString? wire = null;
        Dictionary<string, GroupLogDeliver>? toHomes = null;
        Dictionary<string, GroupLogDeliver>? toGateways = null;
        foreach (var member in members)
        {
            var home = s.HomeIndexOf(member);
            if (s.IsSelf(home))
            {
                AddRemoteDevices(member, excludeGateway: NodeId, ref toGateways, ref wire, message, write);
                continue;
            }

            toHomes ??= new Dictionary<string, GroupLogDeliver>(StringComparer.Ordinal);
            if (!toHomes.TryGetValue(s.NodeAt(home), out var post))
            {
                toHomes[s.NodeAt(home)] = post = new GroupLogDeliver { Message = wire ??= ClusterOps.ToWire(message).ToByteString(), Write = write };
            }

            post.Users.Add(member);
        }

        Post(s, ClusterOpKind.GroupLogToHome, toHomes);
        Post(s, ClusterOpKind.GroupLogToGateway, toGateways);
    }

    /// <summary>Adds the devices of <paramref name="userId"/> (home here) connected at other gateways to their
    /// gateway's post, except those at <paramref name="excludeGateway"/> (the node that told its own devices).</summary>
    private void AddRemoteDevices(string userId, string excludeGateway, ref Dictionary<string, GroupLogDeliver>? toGateways, ref ByteString? wire, DeliveryMessage message, bool write)
    {
        if (!_remoteDevices.TryGetValue(userId, out var devices))
        {
            return;
        }

        foreach (var (device, gateway) in devices)
        {
            if (string.Equals(gateway, excludeGateway, StringComparison.Ordinal))
            {
                continue;
            }

            toGateways ??= new Dictionary<string, GroupLogDeliver>(StringComparer.Ordinal);
            if (!toGateways.TryGetValue(gateway, out var post))
            {
                toGateways[gateway] = post = new GroupLogDeliver { Message = wire ??= ClusterOps.ToWire(message).ToByteString(), Write = write };
            }

            post.Users.Add(userId);
            post.Devices.Add(device);
        }
    }

    private void Post(RoutingState s, ClusterOpKind kind, Dictionary<string, GroupLogDeliver>? posts)
    {
        if (posts is null)
        {
            return;
        }

        foreach (var (node, post) in posts)
        {
            // Dropped when the link's queue is full: the devices' group streams see a gap at the next message and
            // read the log from the owner.
            Interlocked.Increment(ref s.LinkOf(node)?.TryPost(kind, s.Epoch, post.ToByteArray()) == true
                ? ref GroupMetrics.LogPosts
                : ref GroupMetrics.LogPostsDropped);
        }
    }

    public async ValueTask<bool> ReadRemoteGroupLogAsync(string userId, ulong conversationId, ulong afterSeq, int limit, List<DeliveryItem> into, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(into);
        Interlocked.Increment(ref GroupMetrics.LogReads);
        var s = State;
        var request = new GroupLogRead { User = userId, ConversationId = conversationId, AfterSeq = afterSeq, Limit = (uint)Math.Max(1, limit) };
        var page = GroupLogPage.Parser.ParseFrom(await ReadFromAsync(s, s?.OwnerOf(conversationId), ClusterOpKind.GroupLogRead, request.ToByteArray(), cancellationToken).ConfigureAwait(false));
        if (!page.Member)
        {
            return false;
        }

        foreach (var item in page.Items)
        {
            into.Add(new DeliveryItem(item.Seq, item.Message.IsEmpty ? null : ClusterOps.ToDelivery(ForwardedMessage.Parser.ParseFrom(item.Message))));
        }

        return true;
    }

    public async Task<(List<ConversationCursor> Starts, List<ulong> NotMember)> GroupStreamStartsAsync(string userId, string deviceId,
        IReadOnlyList<ConversationCursor> named, IReadOnlyCollection<ulong> stored, bool allLarge, bool partial, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(named);
        ArgumentNullException.ThrowIfNull(stored);
        var s = State;
        if (s?.Ring is null)
        {
            throw new RouteUnavailableException("no cluster map yet");
        }

        // One request per owner that has something to answer (with allLarge: every node, each for the groups it owns).
        var requests = new GroupStreamsRequest?[s.Ring.NodeCount];
        for (var i = 0; allLarge && i < requests.Length; i++)
        {
            requests[i] = !s.ServesAny(i) ? null : new GroupStreamsRequest { User = userId, Device = deviceId, AllLarge = true };
        }

        foreach (var cursor in named)
        {
            var owner = s.OwnerIndexOf(cursor.ConversationId);
            (requests[owner] ??= new GroupStreamsRequest { User = userId, Device = deviceId }).Listed.Add(new GroupCursor { ConversationId = cursor.ConversationId, Seq = cursor.Seq });
        }

        foreach (var conversationId in stored)
        {
            var owner = s.OwnerIndexOf(conversationId);
            (requests[owner] ??= new GroupStreamsRequest { User = userId, Device = deviceId }).Stored.Add(conversationId);
        }

        var answers = new List<Task<GroupStreamStarts>>();
        for (var i = 0; i < requests.Length; i++)
        {
            if (requests[i] is { } request)
            {
                answers.Add(s.IsSelf(i)
                    ? Task.FromResult(GroupStreamStartsHere(request))
                    : ReadStartsAsync(s, s.NodeAt(i), request, partial, cancellationToken));
            }
        }

        var starts = new List<ConversationCursor>();
        var notMember = new List<ulong>();
        foreach (var answer in answers)
        {
            var result = await answer.ConfigureAwait(false);
            foreach (var start in result.Starts)
            {
                starts.Add(new ConversationCursor { ConversationId = start.ConversationId, Seq = start.Seq });
            }

            notMember.AddRange(result.NotMember);
        }

        return (starts, notMember);
    }

    private async Task<GroupStreamStarts> ReadStartsAsync(RoutingState s, string node, GroupStreamsRequest request, bool partial, CancellationToken cancellationToken)
    {
        try
        {
            return GroupStreamStarts.Parser.ParseFrom(await ReadFromAsync(s, node, ClusterOpKind.GroupStreams, request.ToByteArray(), cancellationToken).ConfigureAwait(false));
        }
        catch (RouteUnavailableException) when (partial)
        {
            Interlocked.Increment(ref GroupMetrics.StreamStartsMissed);
            return new GroupStreamStarts();
        }
    }

    /// <summary>Owner: where a device's streams of the groups this node owns start (the core's rule, here where
    /// the log, the members and the device's stored cursors are).</summary>
    private GroupStreamStarts GroupStreamStartsHere(GroupStreamsRequest request)
    {
        var result = new GroupStreamStarts { Read = true };
        var listed = new HashSet<ulong>();
        foreach (var cursor in request.Listed)
        {
            listed.Add(cursor.ConversationId);
            if (_chat.GroupStreamStart(request.User, request.Device, cursor.ConversationId, cursor.Seq) is { } position)
            {
                result.Starts.Add(new GroupCursor { ConversationId = cursor.ConversationId, Seq = position });
            }
            else
            {
                result.NotMember.Add(cursor.ConversationId);
            }
        }

        foreach (var conversationId in request.Stored)
        {
            if (listed.Add(conversationId) && _chat.GroupStreamStart(request.User, request.Device, conversationId, named: null) is { } position)
            {
                result.Starts.Add(new GroupCursor { ConversationId = conversationId, Seq = position });
            }
        }

        if (request.AllLarge)
        {
            foreach (var conversationId in _chat.LargeGroupsOf(request.User))
            {
                if (OwnsConversation(conversationId) && listed.Add(conversationId)
                    && _chat.GroupStreamStart(request.User, request.Device, conversationId, named: null) is { } position)
                {
                    result.Starts.Add(new GroupCursor { ConversationId = conversationId, Seq = position });
                }
            }
        }

        return result;
    }

    public void AckRemoteGroup(IDeviceLink device, ulong conversationId, ulong seq)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (State is { } s && s.OwnerOf(conversationId) is { } owner)
        {
            Interlocked.Increment(ref GroupMetrics.AcksForwarded);
            s.LinkOf(owner)?.TryPost(ClusterOpKind.GroupAck, s.Epoch,
                new GroupAck { User = device.UserId, Device = device.DeviceId, ConversationId = conversationId, Seq = seq }.ToByteArray());
        }
    }

    /// <summary>
    /// The users a forwarded group message goes to at their homes: the members now and, for a SYSTEM message that
    /// removes users (removal, leave), those users too, so a removed user gets the message that removed them, as
    /// on one node (<see cref="ChatService.EnqueueSystemMessage"/>).
    /// </summary>
    internal static IReadOnlyList<string> ForwardAudience(string[] members, StoredMessage message)
    {
        if (message.ContentType != (uint)ContentType.System)
        {
            return members;
        }

        SystemEvent systemEvent;
        try
        {
            systemEvent = SystemEvent.Parser.ParseFrom(message.Body.Span);
        }
        catch (InvalidProtocolBufferException)
        {
            return members;
        }

        if (systemEvent.Kind is not (SystemEvent.Types.Kind.MembersRemoved or SystemEvent.Types.Kind.MemberLeft))
        {
            return members;
        }

        var audience = new List<string>(members);
        foreach (var user in systemEvent.UserIds)
        {
            if (!ConversationDirectory.Contains(members, user))
            {
                audience.Add(user);
            }
        }

        return audience;
    }

    // ---- IMeshSink: what other nodes ask (owner, home and gateway sides) ----

    /// <summary>One group operation another node sent (ClusterOpKind 20–39); the task of what it still has to
    /// finish, or null.</summary>
    private Task? HandleGroupOperation(MeshInboundBatch batch, int index, MeshInboundMessage message, RoutingState s, CancellationToken cancellationToken)
    {
        switch ((ClusterOpKind)message.Kind)
        {
            case ClusterOpKind.GroupOp:
            {
                var op = GroupOp.Parser.ParseFrom(message.Payload.Span);
                var request = GroupRequest.Parser.ParseFrom(op.Request);
                if (op.User.Length == 0)
                {
                    throw new ArgumentException("a GroupOp names its user");
                }

                if (op.ConversationId != 0 && !RefuseUnlessOwner(batch, index, s, op.ConversationId))
                {
                    return null;
                }

                var drawnId = request.OpCase == GroupRequest.OpOneofCase.Create ? op.ConversationId : 0;
                return RunGroupOpAsync(batch, index, op.User, request, (int)op.MaxFrameBytes, drawnId, cancellationToken);
            }

            case ClusterOpKind.GroupList:
            {
                var list = GroupListOwned.Parser.ParseFrom(message.Payload.Span);
                if (list.User.Length == 0)
                {
                    throw new ArgumentException("a GroupListOwned names its user");
                }

                return RunGroupOpAsync(batch, index, list.User, new GroupRequest { List = new GroupListRequest() }, (int)list.MaxFrameBytes, 0, cancellationToken);
            }

            case ClusterOpKind.GroupLogToHome:
            {
                var post = GroupLogDeliver.Parser.ParseFrom(message.Payload.Span);
                var delivery = ClusterOps.ToDelivery(ForwardedMessage.Parser.ParseFrom(post.Message));
                ByteString? wire = post.Message;
                Dictionary<string, GroupLogDeliver>? toGateways = null;
                foreach (var user in post.Users)
                {
                    if (!s.IsSelf(s.HomeIndexOf(user)))
                    {
                        continue; // live only: a device missing this catches up from the owner at its next message
                    }

                    foreach (var device in _registry.DevicesOf(user))
                    {
                        device.OnGroupLogAppended(delivery, post.Write);
                    }

                    // The owner told the devices connected at it itself.
                    AddRemoteDevices(user, excludeGateway: batch.Origin, ref toGateways, ref wire, delivery, post.Write);
                }

                Post(s, ClusterOpKind.GroupLogToGateway, toGateways);
                return null;
            }

            case ClusterOpKind.GroupLogToGateway:
            {
                var post = GroupLogDeliver.Parser.ParseFrom(message.Payload.Span);
                if (post.Users.Count != post.Devices.Count)
                {
                    throw new ArgumentException("a GroupLogDeliver to a gateway has one user per device");
                }

                DeliveryMessage? delivery = null;
                for (var i = 0; i < post.Users.Count; i++)
                {
                    foreach (var device in _registry.DevicesOf(post.Users[i]))
                    {
                        if (string.Equals(device.DeviceId, post.Devices[i], StringComparison.Ordinal))
                        {
                            device.OnGroupLogAppended(delivery ??= ClusterOps.ToDelivery(ForwardedMessage.Parser.ParseFrom(post.Message)), post.Write);
                        }
                    }
                }

                return null;
            }

            case ClusterOpKind.GroupLogRead:
            {
                var read = GroupLogRead.Parser.ParseFrom(message.Payload.Span);
                if (RefuseUnlessOwner(batch, index, s, read.ConversationId))
                {
                    batch.Reply(index, ReadGroupLogPage(read).ToByteArray());
                }

                return null;
            }

            case ClusterOpKind.GroupStreams:
            {
                var request = GroupStreamsRequest.Parser.ParseFrom(message.Payload.Span);
                foreach (var cursor in request.Listed)
                {
                    if (!RefuseUnlessOwner(batch, index, s, cursor.ConversationId))
                    {
                        return null;
                    }
                }

                foreach (var conversationId in request.Stored)
                {
                    if (!RefuseUnlessOwner(batch, index, s, conversationId))
                    {
                        return null;
                    }
                }

                batch.Reply(index, GroupStreamStartsHere(request).ToByteArray());
                return null;
            }

            case ClusterOpKind.GroupAck:
            {
                var ack = GroupAck.Parser.ParseFrom(message.Payload.Span);
                if (!RefuseUnlessOwner(batch, index, s, ack.ConversationId))
                {
                    return null;
                }

                return AckGroupForGatewayAsync(ack, cancellationToken);
            }

            default:
                batch.Reject(index, (uint)ReasonCode.BadRequest);
                return null;
        }
    }

    /// <summary>True when this node owns the conversation under its map; otherwise refuses the message naming the owner.</summary>
    private static bool RefuseUnlessOwner(MeshInboundBatch batch, int index, RoutingState s, ulong conversationId)
    {
        var owner = s.OwnerIndexOf(conversationId);
        if (s.IsSelf(owner))
        {
            return true;
        }

        batch.RefuseStaleEpoch(index, s.Epoch, s.NodeAt(owner));
        return false;
    }

    private async Task RunGroupOpAsync(MeshInboundBatch batch, int index, string user, GroupRequest request, int maxFrameBytes, ulong drawnId, CancellationToken cancellationToken)
    {
        GroupOpResult answer;
        try
        {
            // The answer must fit the device's frame and this reply.
            var frame = Math.Min(maxFrameBytes == 0 ? int.MaxValue : maxFrameBytes, _options.Mesh.MaxReplyBytes - 64);
            answer = ToResult(await Groups.HandleOwnedAsync(user, request, frame, drawnId, cancellationToken).ConfigureAwait(false));
        }
        catch (StorageException)
        {
            answer = new GroupOpResult { Reason = (uint)ReasonCode.ServerUnavailable, Message = "the group change could not be stored; retry", Read = true };
        }
        catch (ArgumentException e)
        {
            answer = new GroupOpResult { Reason = (uint)ReasonCode.BadRequest, Message = e.Message, Read = true };
        }

        batch.Reply(index, answer.ToByteArray());
    }

    private async Task AckGroupForGatewayAsync(GroupAck ack, CancellationToken cancellationToken)
    {
        try
        {
            await _chat.AckConversationsAsync(new RemoteDevice(ack.User, ack.Device), [new ConversationCursor { ConversationId = ack.ConversationId, Seq = ack.Seq }], null, cancellationToken).ConfigureAwait(false);
        }
        catch (ArgumentException)
        {
            // An id the store refuses: nothing to move.
        }
    }

    /// <summary>Owner: a page of a large group's log for a remote device's catch-up, as much as fits one reply.</summary>
    private GroupLogPage ReadGroupLogPage(GroupLogRead read)
    {
        var items = new List<DeliveryItem>();
        var page = new GroupLogPage { Read = true };
        page.Member = _chat.ReadGroupLogAfter(read.User, read.ConversationId, read.AfterSeq, (int)Math.Clamp(read.Limit, 1, 1024), items);
        var budget = _options.Mesh.MaxReplyBytes - 64;
        foreach (var item in items)
        {
            var wire = new GroupLogItem { Seq = item.Position, Message = item.Message is null ? ByteString.Empty : ClusterOps.ToWire(item.Message).ToByteString() };
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
}
