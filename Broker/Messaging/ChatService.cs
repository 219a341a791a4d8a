using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Messaging;

/// <summary>A SEND whose conversation is resolved and whose sender is a member, or the reason it is not.</summary>
public readonly record struct PreparedSend(ReasonCode Error, string? Message, ulong ConversationId, string[]? Members)
{
    /// <summary>Accepted without members: another node owns the conversation (cluster mode) and checks them.</summary>
    public bool Remote => Error == ReasonCode.Success && Members is null;

    public static PreparedSend Refused(ReasonCode reason, string message) => new(reason, message, 0, null);

    /// <summary>A SEND for a conversation another node owns (cluster mode).</summary>
    public static PreparedSend ForOwner(ulong conversationId) => new(ReasonCode.Success, null, conversationId, null);
}

/// <summary>The outcome of a SEND: the stored position, or a reason it was refused (with a retry delay when
/// retrying helps, e.g. the conversation's owner node is unreachable).</summary>
public readonly record struct SendOutcome(ReasonCode Error, string? Message, AppendResult? Result, TimeSpan RetryAfter = default)
{
    public static SendOutcome Refused(ReasonCode reason, string message) => new(reason, message, null);
}

/// <summary>
/// The messaging core: SEND (sequence, persist, fan out), ACK (cursors and DELIVERED receipts), READ
/// receipts and HISTORY. Plain code over <see cref="IChatStore"/> and <see cref="SessionRegistry"/>, with no
/// sockets, so it is tested with the in-memory store and in-memory device links.
/// <para>
/// Fan-out on write: every member of a conversation, the sender included, gets an inbox entry in the
/// same batch as the message; each online device is then told about its user's new inbox position and
/// delivers in inbox order (the session's delivery stream). Members with no online device get a durable
/// push job in the same batch.
/// </para>
/// <para>
/// Receipts are positions, not events: "reader R has received (or read) conversation C up to seq S". They
/// are stored per (reader, conversation) as cursors of the reserved devices <see cref="DeliveredCursor"/>
/// and <see cref="ReadCursor"/>, so an offline sender is told the latest position when it reconnects.
/// </para>
/// </summary>
public sealed class ChatService(
    IChatStore store,
    SessionRegistry registry,
    ConversationDirectory directory,
    BrokerMetrics metrics,
    TimeProvider clock,
    FanoutOptions? fanout = null,
    RetentionOptions? retention = null)
{
    /// <summary>
    /// True for a message older than the retention period. The store deletes such messages in the
    /// background (and keeps each log's newest entry so counters survive), so every read path checks this
    /// too: an expired message is never delivered or returned by history, whether or not it was swept yet.
    /// </summary>
    public bool IsExpired(long timestampMs) =>
        retention is { Policy: Configuration.RetentionPolicy.Days } r &&
        timestampMs < clock.GetUtcNow().ToUnixTimeMilliseconds() - (r.Days * 86_400_000L);

    /// <summary>Most messages whose senders a group receipt is routed to (the newest of the acknowledged range).</summary>
    public const int MaxReceiptSenderScan = 256;

    private readonly int _writeThreshold = (fanout ?? new FanoutOptions()).WriteThreshold;

    /// <summary>Reserved cursor "device" holding a reader's delivered position per conversation. Device ids may not start with '#'.</summary>
    public const string DeliveredCursor = "#delivered";

    /// <summary>Reserved cursor "device" holding a reader's read position per conversation.</summary>
    public const string ReadCursor = "#read";

    /// <summary>Sender device of SYSTEM messages (the broker itself, on behalf of the acting user).</summary>
    public const string SystemDevice = "#broker";

    /// <summary>Largest page a HISTORY request gets.</summary>
    public const int MaxHistoryPage = 200;

    public IChatStore Store => store;

    /// <summary>The cluster's routing; null on a single node, where everything is local.</summary>
    public IMessageRouter? Router { get; private set; }

    /// <summary>Cluster mode: from now on SENDs are routed to their conversation's owner and inbox entries to
    /// their user's home (called once, before the node serves devices).</summary>
    public void UseRouter(IMessageRouter router)
    {
        ArgumentNullException.ThrowIfNull(router);
        if (Router is not null)
        {
            throw new InvalidOperationException("the router is already set");
        }

        Router = router;
        Signals = router as ISignalRouter;
    }

    /// <summary>Cluster mode: where receipts go (the router, when it routes them); null on a single node.</summary>
    public ISignalRouter? Signals { get; private set; }

    /// <summary>Cluster mode: a home stored push jobs with a forwarded message (wakes the push dispatcher).</summary>
    internal void RaisePushJobsAdded() => PushJobsAdded?.Invoke();

    public SessionRegistry Registry => registry;

    /// <summary>The node's group service (it registers itself here): the cluster layer runs the group operations
    /// other nodes forward to this one, the group's owner, through it.</summary>
    public GroupService? Groups { get; internal set; }

    /// <summary>Raised after a message with push recipients was committed (wakes the push dispatcher).</summary>
    public event Action? PushJobsAdded;

    /// <summary>SEND in one call (tests and tools); sessions use <see cref="PrepareAsync"/> + <see cref="CommitAsync"/>.</summary>
    public async Task<SendOutcome> SendAsync(IDeviceLink origin, Send send, CancellationToken cancellationToken)
    {
        var prepared = await PrepareAsync(origin, send, cancellationToken).ConfigureAwait(false);
        return prepared.Error != ReasonCode.Success
            ? SendOutcome.Refused(prepared.Error, prepared.Message!)
            : await CommitAsync(origin, send, prepared, null, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Resolves the conversation of a SEND and checks membership. Completes synchronously except the first
    /// time a direct conversation is used. A session awaits this before reading its next packet, so the
    /// appends of one device are enqueued in the order it sent them.
    /// </summary>
    public async ValueTask<PreparedSend> PrepareAsync(IDeviceLink origin, Send send, CancellationToken cancellationToken)
    {
        if (Router is { } router)
        {
            return await PrepareRoutedAsync(router, origin, send, 0, cancellationToken).ConfigureAwait(false);
        }

        var sender = origin.UserId;
        ulong conversationId;
        string[]? members;
        if (send.ToUserId.Length > 0)
        {
            if (send.ToUserId == sender)
            {
                return PreparedSend.Refused(ReasonCode.BadRequest, "cannot start a direct conversation with yourself");
            }

            conversationId = await directory.GetOrCreateDirectAsync(sender, send.ToUserId, cancellationToken).ConfigureAwait(false);
            members = directory.MembersOf(conversationId);
        }
        else
        {
            conversationId = send.ConversationId;
            members = directory.MembersOf(conversationId);
            if (members is null)
            {
                return PreparedSend.Refused(ReasonCode.ConversationNotFound, "no such conversation");
            }
        }

        if (members is null || !ConversationDirectory.Contains(members, sender))
        {
            return PreparedSend.Refused(ReasonCode.NotAMember, "not a member of this conversation");
        }

        return new PreparedSend(ReasonCode.Success, null, conversationId, members);
    }

    /// <summary>
    /// Cluster mode, on the conversation's owner: a SEND another node forwarded, with the conversation id that node
    /// resolved (for a direct conversation, one of the pair's candidate ids; checked).
    /// </summary>
    public ValueTask<PreparedSend> PrepareForwardedAsync(IDeviceLink origin, Send send, ulong conversationId, CancellationToken cancellationToken) =>
        PrepareRoutedAsync(Router ?? throw new InvalidOperationException("not in cluster mode"), origin, send, conversationId, cancellationToken);

    /// <summary>
    /// Cluster mode: a direct conversation's id is derived from its pair, so every node names it alike without
    /// asking one; a conversation owned elsewhere is left to its owner (which checks membership), one owned here
    /// is resolved as on a single node (a direct one is created at its derived id on first use). When the derived
    /// id holds another pair's conversation (a hash collision), the pair's next candidate is tried, here or on its
    /// owner. <paramref name="resolved"/>: the id a gateway forwarded (0: resolve it here).
    /// </summary>
    private async ValueTask<PreparedSend> PrepareRoutedAsync(IMessageRouter router, IDeviceLink origin, Send send, ulong resolved, CancellationToken cancellationToken)
    {
        var sender = origin.UserId;
        var to = send.ToUserId;
        ulong conversationId;
        if (to.Length > 0)
        {
            if (to == sender)
            {
                return PreparedSend.Refused(ReasonCode.BadRequest, "cannot start a direct conversation with yourself");
            }

            if (to.StartsWith('#'))
            {
                return PreparedSend.Refused(ReasonCode.InvalidField, "user ids starting with '#' are reserved");
            }

            if (resolved != 0)
            {
                if (router.DirectIdAttempt(sender, to, resolved) < 0)
                {
                    return PreparedSend.Refused(ReasonCode.InvalidField, "the forwarded conversation id is not one of this pair");
                }

                conversationId = resolved;
            }
            else if (!directory.TryGetDirect(sender, to, out conversationId))
            {
                conversationId = router.DirectConversationId(sender, to, 0);
            }
        }
        else
        {
            conversationId = resolved != 0 ? resolved : send.ConversationId;
            if (conversationId == 0)
            {
                return PreparedSend.Refused(ReasonCode.ConversationNotFound, "no such conversation");
            }
        }

        while (true)
        {
            if (!router.OwnsConversation(conversationId))
            {
                return PreparedSend.ForOwner(conversationId);
            }

            string[]? members;
            if (to.Length > 0)
            {
                members = await directory.GetOrCreateDirectAtAsync(conversationId, sender, to, cancellationToken).ConfigureAwait(false);
                if (members is null)
                {
                    // Another pair's conversation has this id. A forwarded SEND goes back to its gateway, which tries
                    // the next candidate; one resolved here tries it now.
                    var next = resolved == 0 ? router.DirectConversationId(sender, to, router.DirectIdAttempt(sender, to, conversationId) + 1) : 0;
                    if (next == 0)
                    {
                        return PreparedSend.Refused(ReasonCode.ServerUnavailable, ConversationDirectory.DirectIdTaken);
                    }

                    conversationId = next;
                    continue;
                }

                directory.RememberDirect(sender, to, conversationId);
            }
            else
            {
                members = directory.MembersOf(conversationId);
                if (members is null)
                {
                    return PreparedSend.Refused(ReasonCode.ConversationNotFound, "no such conversation");
                }
            }

            return ConversationDirectory.Contains(members, sender)
                ? new PreparedSend(ReasonCode.Success, null, conversationId, members)
                : PreparedSend.Refused(ReasonCode.NotAMember, "not a member of this conversation");
        }
    }

    /// <summary>
    /// Appends a prepared SEND (the store enqueues it before this method first yields), waits until it is
    /// durable, then tells every online device of every member. A group message takes its members under the
    /// group's gate, so it never reaches a user whose removal was sequenced before it; a sender removed since
    /// <see cref="PrepareAsync"/> is refused with NOT_A_MEMBER and nothing is stored. <paramref name="completions"/>:
    /// the read loop's scope, in which appends of others that this thread writes along with its own complete.
    /// </summary>
    public Task<SendOutcome> CommitAsync(IDeviceLink origin, Send send, PreparedSend prepared, AppendCompletionScope? completions, CancellationToken cancellationToken) =>
        prepared.Remote
            ? Router!.ForwardSendAsync(origin, send, prepared.ConversationId, cancellationToken)
            : CommitLocalAsync(origin, send, prepared, completions, cancellationToken);

    private async Task<SendOutcome> CommitLocalAsync(IDeviceLink origin, Send send, PreparedSend prepared, AppendCompletionScope? completions, CancellationToken cancellationToken)
    {
        var sender = origin.UserId;
        var conversationId = prepared.ConversationId;
        var body = send.Body.Memory;
        var media = send.Media is null ? null : Convert.ToBase64String(send.Media.ToByteArray());
        string[] members;
        bool large;
        List<string>? offline = null;
        Task<AppendResult> append;
        InboxRouting routing = default;
        var isGroup = directory.IsGroup(conversationId);
        var gate = isGroup ? directory.GateOf(conversationId) : null; // direct chats: members never change
        gate?.Enter();
        try
        {
            members = isGroup ? directory.MembersOf(conversationId) ?? [] : prepared.Members!;
            if (isGroup && !ConversationDirectory.Contains(members, sender))
            {
                return SendOutcome.Refused(ReasonCode.NotAMember, "not a member of this conversation");
            }

            // Above the threshold the message is stored once: no inbox entries, and no push jobs (one per
            // offline member of a 1,024-member group would cost more than the message itself).
            large = isGroup && IsLarge(members.Length);
            // Cluster mode: inbox entries here only for the members whose home this is; the others' go to their
            // homes through forward queues written in the same batch.
            routing = Router is { } router ? router.BeginCommit(conversationId, members, large) : new InboxRouting(members, members);
            if (routing.Refused is { } refused)
            {
                return refused; // a hand-over moves this conversation or a member's home: retryable
            }

            if (!large)
            {
                foreach (var member in routing.Local)
                {
                    // Cluster mode: this node is the member's home, which also knows its devices at other nodes.
                    if (member != sender && !registry.IsOnline(member) && Signals?.IsOnlineElsewhere(member) != true)
                    {
                        (offline ??= []).Add(member);
                    }
                }
            }

            append = store.AppendAsync(new AppendRequest
            {
                ConversationId = conversationId,
                SenderUserId = sender,
                SenderDeviceId = origin.DeviceId,
                ClientMsgId = send.ClientMsgId,
                ContentType = (uint)send.ContentType,
                Body = body,
                MediaRef = media,
                InboxRecipients = large ? [] : routing.Recipients,
                PushRecipients = (IReadOnlyList<string>?)offline ?? [],
            }, completions, cancellationToken);
            members = routing.Local; // who is told below: the devices of these users are this node's to tell
        }
        finally
        {
            gate?.Exit();
            Router?.EndCommit(routing);
        }

        var result = await append.ConfigureAwait(false);

        metrics.MessagesIn.Add(1);
        metrics.BytesIn.Add(body.Length);
        if (result.IsDuplicate)
        {
            metrics.DuplicateSends.Add(1);
            return Router?.RefuseAcknowledgement() ?? new SendOutcome(ReasonCode.Success, null, result);
        }

        var message = new DeliveryMessage(result.ConversationId, result.Seq, sender, origin.DeviceId, result.TimestampMs,
            send.ContentType, body, send.Media, send.ClientMsgId);
        Notify(members, result, message, large);
        if (!large)
        {
            Router?.OnCommitted(prepared.Members ?? [], members);
        }
        else if (Router is IGroupRouter groups)
        {
            groups.DeliverGroupLog(members, message, write: true); // the members' devices connected at other nodes
        }

        if (offline is not null)
        {
            PushJobsAdded?.Invoke();
        }

        // Cluster: a primary that may have lost its lease does not say SENT (the write is durable; a retry with the
        // same client_msg_id finds it here, or at the replica that took the range over if it was replicated).
        return Router?.RefuseAcknowledgement() ?? new SendOutcome(ReasonCode.Success, null, result);
    }

    /// <summary>True when a group of <paramref name="memberCount"/> members is fanned out on read.</summary>
    public bool IsLarge(int memberCount) => memberCount > _writeThreshold;

    /// <summary>
    /// Appends a SYSTEM message to a group: always fanned out on write to <paramref name="audience"/> (every
    /// member, and the users a removal names), whatever the group's size, so a removed user finds the message
    /// that removed them in its inbox even when the group is read from its log. No push jobs. The caller holds
    /// the group's gate while this enqueues; it returns the task of the durable append.
    /// </summary>
    public Task<AppendResult> EnqueueSystemMessage(string actor, ulong conversationId, SystemEvent systemEvent, string[] audience, CancellationToken cancellationToken) =>
        store.AppendAsync(new AppendRequest
        {
            ConversationId = conversationId,
            SenderUserId = actor,
            SenderDeviceId = SystemDevice,
            ContentType = (uint)ContentType.System,
            Body = systemEvent.ToByteArray(),
            InboxRecipients = audience,
        }, null, cancellationToken);

    /// <summary>The inbox recipients of a SYSTEM message to <paramref name="audience"/>: everyone on a single node;
    /// in cluster mode the users whose home is this node, then the forward queues of the other homes (as for a
    /// SEND, see <see cref="IMessageRouter.RouteInbox"/>).</summary>
    public InboxRouting RouteAudience(string[] audience) =>
        Router is { } router ? router.RouteInbox(audience) : new InboxRouting(audience, audience);

    /// <summary>Tells the online devices of <paramref name="audience"/> about a committed SYSTEM message appended
    /// with <paramref name="routing"/>'s recipients (<see cref="RouteAudience"/>): here those whose home is this
    /// node, and in cluster mode their devices at other nodes; the forward queues carry it to the other homes.</summary>
    public void NotifySystemMessage(string[] audience, InboxRouting routing, AppendResult result, string actor, ReadOnlyMemory<byte> body, bool large)
    {
        var message = new DeliveryMessage(result.ConversationId, result.Seq, actor, SystemDevice, result.TimestampMs,
            ContentType.System, body, null, 0);
        var local = routing.Local;
        var deliveries = 0;
        for (var i = 0; i < local.Length; i++)
        {
            foreach (var device in registry.DevicesOf(local[i]))
            {
                device.OnInboxAppended(result.InboxSeqs[i], message);
                if (large)
                {
                    // The device reads the group's log too: it must not see a gap at this seq.
                    device.OnGroupLogAppended(message, write: false);
                }

                deliveries++;
            }

            Router?.DeliverToRemoteDevices(local[i], result.InboxSeqs[i], message);
        }

        if (Router is { } router)
        {
            router.OnCommitted(audience, local);
            if (large && router is IGroupRouter groups)
            {
                groups.DeliverGroupLog(audience, message, write: false);
            }
        }

        metrics.FanOut.Record(deliveries);
    }

    private void Notify(string[] members, AppendResult result, DeliveryMessage message, bool large)
    {
        var deliveries = 0;
        for (var i = 0; i < members.Length; i++)
        {
            foreach (var device in registry.DevicesOf(members[i]))
            {
                if (large)
                {
                    device.OnGroupLogAppended(message, write: true);
                }
                else
                {
                    device.OnInboxAppended(result.InboxSeqs[i], message);
                }

                deliveries++;
            }

            if (!large && Router is { } router)
            {
                router.DeliverToRemoteDevices(members[i], result.InboxSeqs[i], message);
            }
        }

        metrics.FanOut.Record(deliveries);
    }

    /// <summary>
    /// The end of the user's inbox, to clamp a resume position. Cluster mode with the inbox on another node:
    /// <see cref="ulong.MaxValue"/> (not known without a round trip; the stream catches up from the device's
    /// position, and the home answers what lies after it).
    /// </summary>
    public ulong LastInboxSeq(string userId) =>
        Router is { } router && !router.IsHomeOf(userId) ? ulong.MaxValue : store.GetLastInboxSeq(userId);

    /// <summary><see cref="ReadInboxAfter"/> wherever the inbox lives: synchronous here, over the mesh when the
    /// user's home is another node (cluster mode). Throws <see cref="RouteUnavailableException"/> when it cannot
    /// be reached.</summary>
    public ValueTask ReadInboxAfterAsync(string userId, ulong afterInboxSeq, int limit, List<DeliveryItem> into, CancellationToken cancellationToken)
    {
        if (Router is { } router && !router.IsHomeOf(userId))
        {
            return router.ReadRemoteInboxAsync(userId, afterInboxSeq, limit, into, cancellationToken);
        }

        ReadInboxAfter(userId, afterInboxSeq, limit, into);
        return default;
    }

    /// <summary>
    /// Catch-up of a device's inbox: up to <paramref name="limit"/> entries after <paramref name="afterInboxSeq"/>,
    /// each with its message (null when retention removed it or it is due to be), appended to
    /// <paramref name="into"/>. Called by the session's delivery stream outside any lock.
    /// </summary>
    public void ReadInboxAfter(string userId, ulong afterInboxSeq, int limit, List<DeliveryItem> into)
    {
        var entries = store.ReadInbox(userId, afterInboxSeq, limit);
        // Consecutive entries of one conversation (the common case: a chat's messages in a row) are read with one
        // store range read instead of one seek per message.
        IReadOnlyList<StoredMessage> run = [];
        ulong runConversation = 0, runStart = 0, runEnd = 0;
        var runPos = 0;
        for (var i = 0; i < entries.Count; i++)
        {
            var entry = entries[i];
            if (entry.ConversationId != runConversation || entry.Seq < runStart || entry.Seq > runEnd)
            {
                var length = 1;
                while (i + length < entries.Count && length < limit
                    && entries[i + length].ConversationId == entry.ConversationId
                    && entries[i + length].Seq == entry.Seq + (ulong)length)
                {
                    length++;
                }

                run = store.ReadRange(entry.ConversationId, entry.Seq, length);
                (runConversation, runStart, runEnd, runPos) = (entry.ConversationId, entry.Seq, entry.Seq + (ulong)length - 1, 0);
            }

            while (runPos < run.Count && run[runPos].Seq < entry.Seq)
            {
                runPos++;
            }

            var stored = runPos < run.Count && run[runPos].Seq == entry.Seq ? run[runPos] : null;
            into.Add(new DeliveryItem(entry.InboxSeq, stored is null || IsExpired(stored.TimestampMs) ? null : DeliveryMessage.FromStored(stored)));
        }
    }

    /// <summary>
    /// Catch-up of a large group's log (fan-out on read): up to <paramref name="limit"/> messages after
    /// <paramref name="afterSeq"/>, appended to <paramref name="into"/>; SYSTEM messages (they come through the
    /// inbox) and expired ones as positions only. False, with nothing read, when <paramref name="userId"/> is not a
    /// member: checked after the read, since a message sequenced after a removal was appended after the directory
    /// dropped the user, so it is never delivered. Called by the session's delivery stream outside any lock.
    /// </summary>
    public ValueTask<bool> ReadGroupLogAfterAsync(string userId, ulong conversationId, ulong afterSeq, int limit, List<DeliveryItem> into, CancellationToken cancellationToken)
    {
        if (Router is IGroupRouter groups && !Router.OwnsConversation(conversationId))
        {
            return groups.ReadRemoteGroupLogAsync(userId, conversationId, afterSeq, limit, into, cancellationToken);
        }

        return new(ReadGroupLogAfter(userId, conversationId, afterSeq, limit, into));
    }

    /// <summary>
    /// <see cref="ReadGroupLogAfterAsync"/> on the group's owner (every group on a single node).
    /// </summary>
    public bool ReadGroupLogAfter(string userId, ulong conversationId, ulong afterSeq, int limit, List<DeliveryItem> into)
    {
        var messages = store.ReadRange(conversationId, afterSeq + 1, limit);
        var members = directory.MembersOf(conversationId);
        if (members is null || !ConversationDirectory.Contains(members, userId))
        {
            return false;
        }

        foreach (var m in messages)
        {
            var deliver = m.ContentType != (uint)ContentType.System && !IsExpired(m.TimestampMs);
            into.Add(new DeliveryItem(m.Seq, deliver ? DeliveryMessage.FromStored(m) : null));
        }

        return true;
    }

    /// <summary>
    /// Where a device's delivery stream of a large group starts: the cursor it <paramref name="named"/> (CONNECT,
    /// SYNC) or, with none, its stored cursor in the group (moved by ACK.conversations), at most the log's end: a
    /// position beyond it would silently skip what comes next. Null when the user is not a member (nothing is
    /// delivered from a group the user is not in).
    /// </summary>
    public ulong? GroupStreamStart(string userId, string deviceId, ulong conversationId, ulong? named)
    {
        var members = conversationId == 0 ? null : directory.MembersOf(conversationId);
        if (members is null || !ConversationDirectory.Contains(members, userId))
        {
            return null;
        }

        var cursor = named ?? store.GetCursor(userId, deviceId, CursorStream.Conversation(conversationId));
        return Math.Min(cursor, store.GetLastSeq(conversationId));
    }

    /// <summary>The user's groups that are large now (fan-out on read): each has a delivery stream per online device.</summary>
    public List<ulong> LargeGroupsOf(string userId)
    {
        var large = new List<ulong>();
        foreach (var conversationId in store.ListConversations(userId))
        {
            if (directory.IsGroup(conversationId) && IsLarge(directory.MembersOf(conversationId)?.Length ?? 0))
            {
                large.Add(conversationId);
            }
        }

        return large;
    }

    /// <summary>
    /// The device has received its inbox up to <paramref name="inboxSeq"/>: store its cursor and tell the
    /// other members of each conversation in that range how far this user has received. A local session passes
    /// its <paramref name="record"/>: the cursor its last ACK stored and the entries it passed since, so that the
    /// common ACK (of what it delivered) reads neither the cursor nor the inbox.
    /// </summary>
    public Task AckAsync(IDeviceLink device, ulong inboxSeq, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default) =>
        AckAsync(device, record: null, inboxSeq, completions, cancellationToken);

    internal async Task AckAsync(IDeviceLink device, IInboxAckRecord? record, ulong inboxSeq, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default)
    {
        var user = device.UserId;
        if (Router is { } router && !router.IsHomeOf(user))
        {
            router.AckRemoteInbox(device, inboxSeq); // the home moves the cursor and sends the receipts
            record?.Forget(inboxSeq);
            return;
        }

        // The cursor this session's last ACK stored: receipts went out up to it. Should the stored cursor be ahead
        // (another path moved it), the entries between are collected again and their receipts, already given, are
        // filtered out by the delivered cursors' "only forward" below.
        if (record is null || !record.TryGetAckedCursor(out var previous))
        {
            previous = store.GetCursor(user, device.DeviceId, CursorStream.Inbox);
        }

        if (inboxSeq <= previous)
        {
            return;
        }

        // Highest seq per conversation in (previous, inboxSeq], and the last entry there: the cursor's target.
        // An ACK beyond the inbox is clamped to its end this way, with no separate lookup of the inbox's last
        // seq (an iterator seek that cost about a quarter of an ACK). A short list: receipts are positions.
        var highest = new Dictionary<ulong, ulong>();
        var target = previous;
        if (record is not null && record.TryCollect(previous, inboxSeq, highest))
        {
            target = inboxSeq; // the session passed every entry in the range: the store holds the same
        }

        while (target < inboxSeq)
        {
            var entries = store.ReadInbox(user, target, (int)Math.Min(512, inboxSeq - target));
            var before = target;
            foreach (var entry in entries)
            {
                if (entry.InboxSeq > inboxSeq)
                {
                    break;
                }

                highest[entry.ConversationId] = Math.Max(highest.GetValueOrDefault(entry.ConversationId), entry.Seq);
                target = entry.InboxSeq;
            }

            if (target == before)
            {
                break; // the end of the inbox (or past what the device claims)
            }
        }

        if (target == previous)
        {
            // Nothing stored after the cursor up to the ACK, though the ACK is ahead of it: either nothing
            // more exists, or retention removed the entries. Only the latter moves the cursor.
            target = Math.Min(inboxSeq, store.GetLastInboxSeq(user));
            if (target <= previous)
            {
                return;
            }
        }

        // The inbox cursor and the delivered receipts in one write (one rocksdb_write, not one per cursor).
        var advances = new List<CursorAdvance>(highest.Count + 1) { new(device.DeviceId, CursorStream.Inbox, target) };
        foreach (var (conversationId, seq) in highest)
        {
            // A large group's inbox entries are only its SYSTEM messages: having them says nothing about the
            // log messages before them. Its DELIVERED receipts come from ACK.conversations.
            if (directory.IsGroup(conversationId) && IsLarge(directory.MembersOf(conversationId)?.Length ?? 0))
            {
                continue;
            }

            advances.Add(new(DeliveredCursor, CursorStream.Conversation(conversationId), seq));
        }

        var moves = await store.AdvanceCursorsAsync(user, advances, completions, cancellationToken).ConfigureAwait(false);
        record?.Acked(moves[0].Current);
        for (var i = 1; i < advances.Count; i++)
        {
            if (moves[i].Previous < advances[i].Position)
            {
                var conversationId = advances[i].Stream.ConversationId;
                if (Signals is { } signals && !signals.OwnsConversation(conversationId))
                {
                    // This home has no members of the conversation: its owner records the receipt and routes it.
                    signals.ReportDelivered(user, conversationId, advances[i].Position);
                    continue;
                }

                NotifyReceipt(user, conversationId, advances[i].Position, moves[i].Previous, ReceiptKind.Delivered);
            }
        }
    }

    /// <summary>READ: the user has read the conversation up to <paramref name="upToSeq"/>.</summary>
    public async Task<(ReasonCode Error, string? Message)> ReadAsync(IDeviceLink device, ulong conversationId, ulong upToSeq, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default)
    {
        if (Signals is { } signals && conversationId != 0 && !signals.OwnsConversation(conversationId))
        {
            return await signals.ReadRemoteAsync(device, conversationId, upToSeq, cancellationToken).ConfigureAwait(false);
        }

        var members = directory.MembersOf(conversationId);
        if (members is null)
        {
            return (ReasonCode.ConversationNotFound, "no such conversation");
        }

        if (!ConversationDirectory.Contains(members, device.UserId))
        {
            return (ReasonCode.NotAMember, "not a member of this conversation");
        }

        var seq = Math.Min(upToSeq, store.GetLastSeq(conversationId));
        if (seq > 0)
        {
            await RecordReceiptAsync(device.UserId, conversationId, seq, ReceiptKind.Read, completions, cancellationToken).ConfigureAwait(false);
        }

        return (ReasonCode.Success, null);
    }

    /// <summary>
    /// ACK of large-group positions: each (conversation, seq) moves this device's cursor in that group's log
    /// (what the broker resumes from when the device does not list the group in CONNECT) and the user's
    /// DELIVERED receipt. Conversations the user is not a member of are refused with NOT_A_MEMBER.
    /// </summary>
    public async Task<(ReasonCode Error, string? Message)> AckConversationsAsync(IDeviceLink device, IReadOnlyList<ConversationCursor> cursors, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default)
    {
        var writes = new List<Task>(cursors.Count * 2);
        var error = (ReasonCode.Success, (string?)null);
        foreach (var cursor in cursors)
        {
            if (Router is IGroupRouter groups && cursor.ConversationId != 0 && !Router.OwnsConversation(cursor.ConversationId))
            {
                groups.AckRemoteGroup(device, cursor.ConversationId, cursor.Seq); // the owner keeps the group's cursors
                continue;
            }

            var members = cursor.ConversationId == 0 ? null : directory.MembersOf(cursor.ConversationId);
            if (members is null || !ConversationDirectory.Contains(members, device.UserId))
            {
                error = (ReasonCode.NotAMember, $"not a member of conversation {cursor.ConversationId}");
                continue;
            }

            var seq = Math.Min(cursor.Seq, store.GetLastSeq(cursor.ConversationId));
            if (seq == 0)
            {
                continue;
            }

            writes.Add(store.AdvanceCursorAsync(device.UserId, device.DeviceId, CursorStream.Conversation(cursor.ConversationId), seq, completions, cancellationToken));
            writes.Add(RecordReceiptAsync(device.UserId, cursor.ConversationId, seq, ReceiptKind.Delivered, completions, cancellationToken));
        }

        await Task.WhenAll(writes).ConfigureAwait(false);
        return error;
    }

    /// <summary>
    /// Cluster mode, on the conversation's owner: the reader's home reports that an ACK moved the reader's delivered
    /// position. Recorded and routed as an ACK on one node does; ignored for a non-member and for a large group
    /// (whose DELIVERED receipts come from ACK.conversations).
    /// </summary>
    public Task RecordDeliveredReportAsync(string reader, ulong conversationId, ulong upToSeq, CancellationToken cancellationToken)
    {
        var members = directory.MembersOf(conversationId);
        if (members is null || !ConversationDirectory.Contains(members, reader) || (directory.IsGroup(conversationId) && IsLarge(members.Length)))
        {
            return Task.CompletedTask;
        }

        var seq = Math.Min(upToSeq, store.GetLastSeq(conversationId));
        return seq == 0 ? Task.CompletedTask : RecordReceiptAsync(reader, conversationId, seq, ReceiptKind.Delivered, null, cancellationToken);
    }

    private async Task RecordReceiptAsync(string reader, ulong conversationId, ulong seq, ReceiptKind kind, AppendCompletionScope? completions, CancellationToken cancellationToken)
    {
        var cursor = kind == ReceiptKind.Read ? ReadCursor : DeliveredCursor;
        var stream = CursorStream.Conversation(conversationId);
        var previous = store.GetCursor(reader, cursor, stream);
        if (previous >= seq)
        {
            return;
        }

        await store.AdvanceCursorAsync(reader, cursor, stream, seq, completions, cancellationToken).ConfigureAwait(false);
        NotifyReceipt(reader, conversationId, seq, previous, kind);
    }

    /// <summary>A receipt moved from <paramref name="previous"/> to <paramref name="seq"/> (stored): counts it and
    /// tells the other members' online devices (in a group, only those who sent in that range).</summary>
    private void NotifyReceipt(string reader, ulong conversationId, ulong seq, ulong previous, ReceiptKind kind)
    {
        metrics.Receipts.Add(1);
        var members = directory.MembersOf(conversationId);
        if (members is null)
        {
            return;
        }

        var receipt = new Receipt
        {
            ConversationId = conversationId,
            Kind = kind,
            UpToSeq = seq,
            ReaderUserId = reader,
            TimestampMs = (ulong)clock.GetUtcNow().ToUnixTimeMilliseconds(),
        };
        if (directory.IsGroup(conversationId))
        {
            // In a group every member's receipt would reach every member (n² frames per message round): it goes
            // only to the members who sent messages in the range it covers, read from the newest end.
            var scan = (int)Math.Min(seq - previous, MaxReceiptSenderScan);
            var told = new HashSet<string>(StringComparer.Ordinal) { reader };
            foreach (var m in store.ReadBefore(conversationId, seq + 1, scan))
            {
                if (m.ContentType != (uint)ContentType.System && told.Add(m.SenderUserId) && ConversationDirectory.Contains(members, m.SenderUserId))
                {
                    TellReceipt(m.SenderUserId, receipt);
                }
            }

            return;
        }

        foreach (var member in members)
        {
            if (member == reader)
            {
                continue;
            }

            TellReceipt(member, receipt);
        }
    }

    /// <summary>One node: the user's online devices. Cluster mode: the user's home, which keeps the receipt and
    /// tells the user's devices wherever they are connected.</summary>
    private void TellReceipt(string userId, Receipt receipt)
    {
        if (Signals is { } signals)
        {
            signals.RouteReceipt(userId, receipt);
            return;
        }

        foreach (var device in registry.DevicesOf(userId))
        {
            device.OnReceipt(receipt);
        }
    }

    /// <summary>True when the two users already have a direct conversation this node knows of (for the
    /// new-conversations limit; in cluster mode a pair this node has not seen counts as new).</summary>
    public bool DirectExists(string userA, string userB)
    {
        if (directory.TryGetDirect(userA, userB, out _))
        {
            return true;
        }

        try
        {
            return Router is null && store.FindDirect(userA, userB) is not null;
        }
        catch (ArgumentException)
        {
            return true; // an id the SEND's own checks refuse; not this limit's business
        }
    }

    /// <summary>
    /// Read state across a user's devices: a READ of one device is told to the user's other devices as a READ receipt
    /// whose <c>reader_user_id</c> is their own user and <c>reader_device_id</c> the device that read (docs/protocol.md
    /// §5, READ). One node: the user's other online devices here; cluster mode: through the user's home, which keeps
    /// it and tells the user's devices wherever they are (the reading device may get it too).
    /// </summary>
    public void TellOwnRead(IDeviceLink reader, ulong conversationId, ulong upToSeq)
    {
        var receipt = new Receipt
        {
            ConversationId = conversationId,
            Kind = ReceiptKind.Read,
            UpToSeq = upToSeq,
            ReaderUserId = reader.UserId,
            ReaderDeviceId = reader.DeviceId,
            TimestampMs = (ulong)clock.GetUtcNow().ToUnixTimeMilliseconds(),
        };
        if (Signals is { } signals)
        {
            signals.RouteReceipt(reader.UserId, receipt);
            metrics.ReadSynced.Add(1);
            return;
        }

        foreach (var device in registry.DevicesOf(reader.UserId))
        {
            if (!ReferenceEquals(device, reader))
            {
                device.OnReceipt(receipt);
                metrics.ReadSynced.Add(1);
            }
        }
    }

    /// <summary>
    /// The latest stored receipts of the other members of the user's conversations, for a device that has
    /// just connected (so a sender that was offline learns what happened meanwhile).
    /// </summary>
    public List<Receipt> StoredReceiptsFor(string userId, int maxConversations)
    {
        var receipts = new List<Receipt>();
        var conversations = store.ListConversations(userId);
        var count = Math.Min(conversations.Count, maxConversations);
        for (var i = 0; i < count; i++)
        {
            var conversationId = conversations[i];
            var members = directory.MembersOf(conversationId);
            if (members is null || (directory.IsGroup(conversationId) && IsLarge(members.Length)))
            {
                continue; // large groups: 2 x members receipts per connect would dwarf the backlog
            }

            var stream = CursorStream.Conversation(conversationId);
            foreach (var member in members)
            {
                if (member == userId)
                {
                    // The user's own read position (read state across devices): what another device of it read.
                    var own = store.GetCursor(member, ReadCursor, stream);
                    if (own > 0)
                    {
                        receipts.Add(new Receipt { ConversationId = conversationId, Kind = ReceiptKind.Read, UpToSeq = own, ReaderUserId = member });
                    }

                    continue;
                }

                var delivered = store.GetCursor(member, DeliveredCursor, stream);
                if (delivered > 0)
                {
                    receipts.Add(new Receipt { ConversationId = conversationId, Kind = ReceiptKind.Delivered, UpToSeq = delivered, ReaderUserId = member });
                }

                var read = store.GetCursor(member, ReadCursor, stream);
                if (read > 0)
                {
                    receipts.Add(new Receipt { ConversationId = conversationId, Kind = ReceiptKind.Read, UpToSeq = read, ReaderUserId = member });
                }
            }
        }

        return receipts;
    }

    /// <summary><see cref="History"/> wherever the conversation lives: here, or (cluster mode) on its owner.</summary>
    public ValueTask<(ReasonCode Error, string? Message, HistoryPage? Page)> HistoryAsync(string userId, History request, int maxFrameBytes, CancellationToken cancellationToken)
    {
        if (Router is { } router && request.ConversationId != 0 && !router.OwnsConversation(request.ConversationId))
        {
            return new(router.RemoteHistoryAsync(userId, request, maxFrameBytes, cancellationToken));
        }

        return new(History(userId, request, maxFrameBytes));
    }

    /// <summary>HISTORY: a page of messages before <c>before_seq</c>, members only.</summary>
    public (ReasonCode Error, string? Message, HistoryPage? Page) History(string userId, History request, int maxFrameBytes = int.MaxValue)
    {
        var members = directory.MembersOf(request.ConversationId);
        if (members is null)
        {
            return (ReasonCode.ConversationNotFound, "no such conversation", null);
        }

        if (!ConversationDirectory.Contains(members, userId))
        {
            return (ReasonCode.NotAMember, "not a member of this conversation", null);
        }

        var limit = request.Limit == 0 ? 50 : (int)Math.Min(request.Limit, MaxHistoryPage);
        var before = request.BeforeSeq == 0 ? ulong.MaxValue : request.BeforeSeq;
        var messages = store.ReadBefore(request.ConversationId, before, limit);
        var expired = 0;
        while (expired < messages.Count && IsExpired(messages[expired].TimestampMs))
        {
            expired++; // timestamps rise with seq: the expired ones are a prefix, and nothing older is left
        }

        if (expired > 0)
        {
            var kept = new List<StoredMessage>(messages.Count - expired);
            for (var i = expired; i < messages.Count; i++)
            {
                kept.Add(messages[i]);
            }

            messages = kept;
        }

        var page = new HistoryPage { RequestId = request.RequestId, ConversationId = request.ConversationId };
        // Keep the newest messages that fit one frame; the client pages on from the oldest it got.
        var delivers = new Deliver[messages.Count];
        var size = page.CalculateSize() + 16;
        var first = messages.Count;
        for (var i = messages.Count - 1; i >= 0; i--)
        {
            var deliver = DeliveryMessage.FromStored(messages[i]).ToDeliver(userId);
            var entry = deliver.CalculateSize() + 6; // field tag + length prefix
            if (size + entry > maxFrameBytes && first < messages.Count)
            {
                break;
            }

            size += entry;
            delivers[i] = deliver;
            first = i;
        }

        for (var i = first; i < messages.Count; i++)
        {
            page.Messages.Add(delivers[i]);
        }

        page.More = first > 0 || (expired == 0 && messages.Count == limit && messages[0].Seq > 1);
        return (ReasonCode.Success, null, page);
    }
}
