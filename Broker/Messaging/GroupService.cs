using System.Collections.Concurrent;
using ChatBroker.Broker.Configuration;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Messaging;

/// <summary>The answer to a GROUP_REQUEST: a GROUP_RESULT, or the reason it was refused.</summary>
public readonly record struct GroupOutcome(ReasonCode Error, string? Message, GroupResult? Result)
{
    public static GroupOutcome Refused(ReasonCode reason, string message) => new(reason, message, null);
}

/// <summary>
/// Groups: create, add/remove members, leave, promote/demote, list, get. Plain code over the store, the
/// directory and <see cref="ChatService"/>, tested with the in-memory store.
/// <para>
/// Every membership change is a SYSTEM message of the group (body: a <see cref="SystemEvent"/>), appended
/// through the same <see cref="IChatStore.AppendAsync"/> as user messages, so members see changes and
/// messages in one seq order. The message goes to the inbox of every member and of the users a removal
/// names (whatever the group's size), so a removed user gets the message that removed it, then nothing.
/// </para>
/// <para>
/// Changes of one group are serialized (one at a time, each stored before the next is checked), so the
/// admin and limit checks read settled state. The member list used for routing is swapped under the
/// group's gate together with enqueueing the SYSTEM message (see <see cref="ConversationDirectory"/>).
/// </para>
/// </summary>
public sealed class GroupService
{
    /// <summary>The refusal of a create whose drawn id a conversation already has (cluster mode): the gateway
    /// draws another id.</summary>
    public const string GroupIdTaken = "a conversation already has the drawn group id";

    private readonly IChatStore store;
    private readonly ConversationDirectory directory;
    private readonly ChatService chat;
    private readonly int _maxMembers;
    private readonly ConcurrentDictionary<ulong, SemaphoreSlim> _changes = new();

    public GroupService(IChatStore store, ConversationDirectory directory, ChatService chat, GroupsOptions? groups = null)
    {
        this.store = store;
        this.directory = directory;
        this.chat = chat;
        _maxMembers = (groups ?? new GroupsOptions()).MaxMembers;
        chat.Groups = this;
    }

    public int MaxMembers => _maxMembers;

    /// <summary>A device's GROUP_REQUEST: here on a single node; in cluster mode on the group's owner.</summary>
    public Task<GroupOutcome> HandleAsync(string userId, GroupRequest request, int maxFrameBytes, CancellationToken cancellationToken) =>
        chat.Router is IGroupRouter router
            ? router.HandleGroupRequestAsync(userId, request, maxFrameBytes, cancellationToken)
            : HandleOwnedAsync(userId, request, maxFrameBytes, 0, cancellationToken);

    /// <summary>
    /// A GROUP_REQUEST on the node that owns its group (every group, on a single node). <paramref name="drawnId"/>:
    /// cluster mode, the id a create puts the group at (0: from the store's counter); a taken id is refused with
    /// <see cref="GroupIdTaken"/>. LIST lists the groups of this node.
    /// </summary>
    public async Task<GroupOutcome> HandleOwnedAsync(string userId, GroupRequest request, int maxFrameBytes, ulong drawnId, CancellationToken cancellationToken)
    {
        // Cluster fencing, as for SENT (docs/cluster.md, "Fencing"): a primary that cannot confirm its lease neither
        // starts a group change nor acknowledges one it made meanwhile. A change refused after it was written is in the
        // store (and on the replicas that had it); the device's retry at whoever serves the group then finds it done
        // (members already in, no new SYSTEM message) or makes it.
        var changes = request.OpCase is not (GroupRequest.OpOneofCase.List or GroupRequest.OpOneofCase.Get);
        if (changes && Fenced() is { } before)
        {
            return before;
        }

        var outcome = await HandleOwnedOpAsync(userId, request, maxFrameBytes, drawnId, cancellationToken).ConfigureAwait(false);
        return changes && outcome.Error == ReasonCode.Success && Fenced() is { } after ? after : outcome;
    }

    private GroupOutcome? Fenced() =>
        chat.Router?.RefuseAcknowledgement() is { } refused ? GroupOutcome.Refused(refused.Error, refused.Message ?? "retry") : null;

    private Task<GroupOutcome> HandleOwnedOpAsync(string userId, GroupRequest request, int maxFrameBytes, ulong drawnId, CancellationToken cancellationToken) =>
        request.OpCase switch
        {
            GroupRequest.OpOneofCase.Create => CreateAsync(userId, request.RequestId, request.Create, drawnId, cancellationToken),
            GroupRequest.OpOneofCase.AddMembers => ChangeAsync(userId, request.RequestId, request.AddMembers.ConversationId,
                (s, members) => s.Add(members, request.AddMembers.UserIds), cancellationToken),
            GroupRequest.OpOneofCase.RemoveMembers => ChangeAsync(userId, request.RequestId, request.RemoveMembers.ConversationId,
                (s, members) => s.Remove(members, request.RemoveMembers.UserIds), cancellationToken),
            GroupRequest.OpOneofCase.Leave => ChangeAsync(userId, request.RequestId, request.Leave.ConversationId,
                (s, members) => s.Leave(members), cancellationToken),
            GroupRequest.OpOneofCase.SetAdmin => ChangeAsync(userId, request.RequestId, request.SetAdmin.ConversationId,
                (s, members) => s.SetAdmin(members, request.SetAdmin.UserId, request.SetAdmin.Admin), cancellationToken),
            GroupRequest.OpOneofCase.List => Task.FromResult(List(userId, request.RequestId, maxFrameBytes)),
            GroupRequest.OpOneofCase.Get => Task.FromResult(Get(userId, request.RequestId, request.Get.ConversationId)),
            _ => Task.FromResult(GroupOutcome.Refused(ReasonCode.BadRequest, "GROUP_REQUEST needs exactly one op")),
        };

    private async Task<GroupOutcome> CreateAsync(string creator, ulong requestId, GroupCreate create, ulong drawnId, CancellationToken cancellationToken)
    {
        var members = new List<string> { creator };
        foreach (var user in create.MemberUserIds)
        {
            if (ChatIds.Describe(user) is { } invalid)
            {
                return GroupOutcome.Refused(ReasonCode.BadRequest, invalid);
            }

            if (!members.Contains(user))
            {
                members.Add(user);
            }
        }

        if (members.Count > _maxMembers)
        {
            return GroupOutcome.Refused(ReasonCode.GroupFull, $"a group has at most {_maxMembers} members");
        }

        var title = create.Title.Length == 0 ? null : create.Title;
        var conversation = drawnId == 0
            ? await store.CreateGroupAsync(creator, title, members, cancellationToken).ConfigureAwait(false)
            : await store.CreateGroupAtAsync(drawnId, creator, title, members, cancellationToken).ConfigureAwait(false);
        if (conversation is null)
        {
            return GroupOutcome.Refused(ReasonCode.ServerUnavailable, GroupIdTaken);
        }

        var all = members.ToArray();
        var routing = chat.RouteAudience(all);
        var systemEvent = new SystemEvent { Kind = SystemEvent.Types.Kind.GroupCreated, ActorUserId = creator, Title = create.Title };
        systemEvent.UserIds.Add(all);
        var gate = directory.GateOf(conversation.Id);
        Task<AppendResult> append;
        lock (gate)
        {
            directory.SetMembers(conversation.Id, all);
            append = chat.EnqueueSystemMessage(creator, conversation.Id, systemEvent, routing.Recipients, cancellationToken);
        }

        var result = await append.ConfigureAwait(false);
        chat.NotifySystemMessage(all, routing, result, creator, systemEvent.ToByteArray(), chat.IsLarge(all.Length));
        return new GroupOutcome(ReasonCode.Success, null, new GroupResult { RequestId = requestId, ConversationId = conversation.Id, Seq = result.Seq });
    }

    /// <summary>What one membership change does, decided from the current members and the actor's role.</summary>
    private sealed class ChangeContext(string actor, bool actorIsAdmin, int maxMembers)
    {
        public string Actor { get; } = actor;
        public ReasonCode Error { get; private set; }
        public string? ErrorMessage { get; private set; }
        public SystemEvent? Event { get; private set; }
        public string[] NewMembers { get; private set; } = [];
        public string[] Audience { get; private set; } = [];
        public List<(string User, MemberRole? Role)> Writes { get; } = [];

        public void Add(string[] members, IEnumerable<string> users)
        {
            if (!RequireAdmin())
            {
                return;
            }

            var added = new List<string>();
            foreach (var user in users)
            {
                if (ChatIds.Describe(user) is { } invalid)
                {
                    Refuse(ReasonCode.BadRequest, invalid);
                    return;
                }

                if (!ConversationDirectory.Contains(members, user) && !added.Contains(user))
                {
                    added.Add(user);
                }
            }

            if (members.Length + added.Count > maxMembers)
            {
                Refuse(ReasonCode.GroupFull, $"a group has at most {maxMembers} members; it has {members.Length}");
                return;
            }

            if (added.Count == 0)
            {
                return;
            }

            NewMembers = [.. members, .. added];
            Audience = NewMembers;
            foreach (var user in added)
            {
                Writes.Add((user, MemberRole.Member));
            }

            Event = new SystemEvent { Kind = SystemEvent.Types.Kind.MembersAdded, ActorUserId = Actor };
            Event.UserIds.Add(added);
        }

        public void Remove(string[] members, IEnumerable<string> users)
        {
            if (!RequireAdmin())
            {
                return;
            }

            var removed = new List<string>();
            foreach (var user in users)
            {
                if (ConversationDirectory.Contains(members, user) && !removed.Contains(user))
                {
                    removed.Add(user);
                }
            }

            if (removed.Count == 0)
            {
                return;
            }

            NewMembers = Array.FindAll(members, m => !removed.Contains(m));
            Audience = members;
            foreach (var user in removed)
            {
                Writes.Add((user, null));
            }

            Event = new SystemEvent { Kind = SystemEvent.Types.Kind.MembersRemoved, ActorUserId = Actor };
            Event.UserIds.Add(removed);
        }

        public void Leave(string[] members)
        {
            NewMembers = Array.FindAll(members, m => m != Actor);
            Audience = members;
            Writes.Add((Actor, null));
            Event = new SystemEvent { Kind = SystemEvent.Types.Kind.MemberLeft, ActorUserId = Actor };
            Event.UserIds.Add(Actor);
        }

        public void SetAdmin(string[] members, string user, bool admin)
        {
            if (!RequireAdmin())
            {
                return;
            }

            if (!ConversationDirectory.Contains(members, user))
            {
                Refuse(ReasonCode.NotAMember, $"{user} is not a member of this group");
                return;
            }

            NewMembers = members;
            Audience = members;
            Writes.Add((user, admin ? MemberRole.Admin : MemberRole.Member));
            Event = new SystemEvent { Kind = SystemEvent.Types.Kind.AdminChanged, ActorUserId = Actor, Admin = admin };
            Event.UserIds.Add(user);
        }

        private bool RequireAdmin()
        {
            if (!actorIsAdmin)
            {
                Refuse(ReasonCode.NotGroupAdmin, "only group admins may do this");
                return false;
            }

            return true;
        }

        private void Refuse(ReasonCode reason, string message)
        {
            Error = reason;
            ErrorMessage = message;
        }
    }

    private async Task<GroupOutcome> ChangeAsync(string actor, ulong requestId, ulong conversationId,
        Action<ChangeContext, string[]> decide, CancellationToken cancellationToken)
    {
        if (conversationId == 0 || !directory.IsGroup(conversationId))
        {
            return GroupOutcome.Refused(ReasonCode.ConversationNotFound, "no such group");
        }

        var serial = _changes.GetOrAdd(conversationId, static _ => new SemaphoreSlim(1, 1));
        await serial.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var members = directory.MembersOf(conversationId) ?? [];
            var role = store.GetMember(conversationId, actor)?.Role;
            if (role is null || !ConversationDirectory.Contains(members, actor))
            {
                return GroupOutcome.Refused(ReasonCode.NotAMember, "not a member of this group");
            }

            var change = new ChangeContext(actor, role == MemberRole.Admin, _maxMembers);
            decide(change, members);
            if (change.Error != ReasonCode.Success)
            {
                return GroupOutcome.Refused(change.Error, change.ErrorMessage!);
            }

            if (change.Event is null)
            {
                // Nothing changed (members already in, users not members): no SYSTEM message, seq 0.
                return new GroupOutcome(ReasonCode.Success, null, new GroupResult { RequestId = requestId, ConversationId = conversationId });
            }

            // The last admin leaving hands the group to the longest-standing member, so it stays manageable.
            var successor = change.Event.Kind == SystemEvent.Types.Kind.MemberLeft && role == MemberRole.Admin
                ? SuccessorAdmin(conversationId, actor)
                : null;
            SystemEvent? promotion = null;
            if (successor is not null)
            {
                change.Writes.Add((successor, MemberRole.Admin));
                promotion = new SystemEvent { Kind = SystemEvent.Types.Kind.AdminChanged, ActorUserId = actor, Admin = true };
                promotion.UserIds.Add(successor);
            }

            var writes = new List<Task>(change.Writes.Count + 2);
            var audience = chat.RouteAudience(change.Audience);
            var promotionAudience = promotion is null ? default : chat.RouteAudience(change.NewMembers);
            Task<AppendResult> append;
            Task<AppendResult>? promoted = null;
            lock (directory.GateOf(conversationId))
            {
                directory.SetMembers(conversationId, change.NewMembers);
                foreach (var (user, newRole) in change.Writes)
                {
                    writes.Add(newRole is { } r
                        ? store.SetMemberAsync(conversationId, user, r, cancellationToken)
                        : store.RemoveMemberAsync(conversationId, user, cancellationToken));
                }

                append = chat.EnqueueSystemMessage(actor, conversationId, change.Event, audience.Recipients, cancellationToken);
                writes.Add(append);
                if (promotion is not null)
                {
                    promoted = chat.EnqueueSystemMessage(actor, conversationId, promotion, promotionAudience.Recipients, cancellationToken);
                    writes.Add(promoted);
                }
            }

            try
            {
                await Task.WhenAll(writes).ConfigureAwait(false);
            }
            catch
            {
                directory.Invalidate(conversationId); // refill from what the store has
                throw;
            }

            var result = await append.ConfigureAwait(false);
            var large = chat.IsLarge(Math.Max(change.Audience.Length, change.NewMembers.Length));
            chat.NotifySystemMessage(change.Audience, audience, result, actor, change.Event.ToByteArray(), large);
            if (promoted is not null)
            {
                chat.NotifySystemMessage(change.NewMembers, promotionAudience, await promoted.ConfigureAwait(false), actor, promotion!.ToByteArray(), large);
            }

            return new GroupOutcome(ReasonCode.Success, null, new GroupResult { RequestId = requestId, ConversationId = conversationId, Seq = result.Seq });
        }
        finally
        {
            serial.Release();
        }
    }

    /// <summary>The member to promote when <paramref name="leaving"/> is the last admin; null when another admin remains or nobody does.</summary>
    private string? SuccessorAdmin(ulong conversationId, string leaving)
    {
        Member? best = null;
        foreach (var member in store.ListMembers(conversationId))
        {
            if (member.UserId == leaving)
            {
                continue;
            }

            if (member.Role == MemberRole.Admin)
            {
                return null;
            }

            if (best is not { } b || member.JoinedAtMs < b.JoinedAtMs
                || (member.JoinedAtMs == b.JoinedAtMs && string.CompareOrdinal(member.UserId, b.UserId) < 0))
            {
                best = member;
            }
        }

        return best?.UserId;
    }

    private GroupOutcome Get(string userId, ulong requestId, ulong conversationId)
    {
        if (conversationId == 0 || !directory.IsGroup(conversationId))
        {
            return GroupOutcome.Refused(ReasonCode.ConversationNotFound, "no such group");
        }

        var members = directory.MembersOf(conversationId) ?? [];
        if (!ConversationDirectory.Contains(members, userId))
        {
            return GroupOutcome.Refused(ReasonCode.NotAMember, "not a member of this group");
        }

        var result = new GroupResult { RequestId = requestId, ConversationId = conversationId };
        result.Groups.Add(Info(conversationId, withMembers: true));
        return new GroupOutcome(ReasonCode.Success, null, result);
    }

    /// <summary>
    /// Every group of the user. Members are included while the answer fits one frame; groups past that are
    /// listed without members (GET fetches them one by one).
    /// </summary>
    private GroupOutcome List(string userId, ulong requestId, int maxFrameBytes)
    {
        var result = new GroupResult { RequestId = requestId };
        var size = ListHeaderBytes;
        foreach (var conversationId in store.ListConversations(userId))
        {
            // Cluster mode: the groups this node owns (every node is asked; a group is listed by its owner only).
            if (!directory.IsGroup(conversationId) || chat.Router?.OwnsConversation(conversationId) == false)
            {
                continue;
            }

            if (!TryAddFitting(result, Info(conversationId, withMembers: true), ref size, maxFrameBytes))
            {
                break;
            }
        }

        return new GroupOutcome(ReasonCode.Success, null, result);
    }

    /// <summary>The size a LIST answer starts with, before its groups (<see cref="TryAddFitting"/>).</summary>
    public const int ListHeaderBytes = 64;

    /// <summary>Adds a group to a LIST answer of at most <paramref name="maxFrameBytes"/> (<paramref name="size"/> so
    /// far): with its members while they fit, else without (GET fetches them); false when not even that fits.</summary>
    public static bool TryAddFitting(GroupResult result, GroupInfo info, ref int size, int maxFrameBytes)
    {
        var entry = info.CalculateSize() + 8;
        if (size + entry > maxFrameBytes)
        {
            info.Members.Clear();
            entry = info.CalculateSize() + 8;
        }

        if (size + entry > maxFrameBytes)
        {
            return false;
        }

        size += entry;
        result.Groups.Add(info);
        return true;
    }

    private GroupInfo Info(ulong conversationId, bool withMembers)
    {
        var conversation = store.GetConversation(conversationId)!;
        var info = new GroupInfo
        {
            ConversationId = conversationId,
            Title = conversation.Title ?? "",
            CreatedMs = (ulong)conversation.CreatedAtMs,
            LastSeq = store.GetLastSeq(conversationId),
        };
        if (withMembers)
        {
            foreach (var member in store.ListMembers(conversationId))
            {
                info.Members.Add(new GroupMember { UserId = member.UserId, Admin = member.Role == MemberRole.Admin });
            }
        }

        return info;
    }
}
