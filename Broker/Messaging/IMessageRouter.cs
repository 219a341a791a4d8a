using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Where conversations and users live when the broker runs as a cluster: the core asks it on the SEND path and
/// when it reads or acknowledges an inbox. <c>Broker/Cluster</c> implements it over the ring and the mesh; on a
/// single node there is none (<see cref="ChatService.Router"/> is null) and the core does everything locally.
/// </summary>
public interface IMessageRouter
{
    /// <summary>The direct conversation of two users: derived from the pair, the same on every node. A pair has a
    /// few candidate ids (<paramref name="attempt"/> 0, 1, …): the first that is free or already the pair's is its
    /// id. Returns 0 when <paramref name="attempt"/> is past the last candidate.</summary>
    ulong DirectConversationId(string userA, string userB, int attempt);

    /// <summary>Which candidate of the pair <paramref name="conversationId"/> is, or -1 when none.</summary>
    int DirectIdAttempt(string userA, string userB, ulong conversationId);

    /// <summary>True when this node sequences the conversation under its current map.</summary>
    bool OwnsConversation(ulong conversationId);

    /// <summary>True when this node keeps the user's inbox under its current map.</summary>
    bool IsHomeOf(string userId);

    /// <summary>Hands a SEND to the conversation's owner and returns its outcome (a retryable refusal when the
    /// owner cannot be reached in time).</summary>
    Task<SendOutcome> ForwardSendAsync(IDeviceLink origin, Send send, ulong conversationId, CancellationToken cancellationToken);

    /// <summary>The inbox recipients of a message to <paramref name="members"/> committed here: the members whose
    /// home is this node first, then one forward queue per other home node (see <see cref="InboxRouting"/>).</summary>
    InboxRouting RouteInbox(string[] members);

    /// <summary>Starts the commit of a message to conversation <paramref name="conversationId"/>: its inbox routing
    /// (as <see cref="RouteInbox"/>; for a group fanned out on read, <paramref name="fanOutOnRead"/>, no inbox
    /// entries: Local and Recipients are the members), or <see cref="InboxRouting.Refused"/> while the
    /// conversation or a member's home is being handed to another node (a retryable refusal). The caller enqueues
    /// its write, then calls <see cref="EndCommit"/> (also when refused or failed), without yielding between.</summary>
    InboxRouting BeginCommit(ulong conversationId, string[] members, bool fanOutOnRead);

    /// <summary>The write of a commit begun with <see cref="BeginCommit"/> is enqueued (or was not made).</summary>
    void EndCommit(in InboxRouting routing);

    /// <summary>A refusal (retryable SERVER_UNAVAILABLE) when this node may not acknowledge a write now: a primary whose
    /// lease may be about to expire (fencing, docs/cluster.md "Failover"); null when it may. Asked before a commit
    /// starts and again when its write is durable, before SENT.</summary>
    SendOutcome? RefuseAcknowledgement() => null;

    /// <summary>The client addresses (host:port) of the cluster's members that serve clients, for CONNACK's
    /// cluster_nodes; empty when unknown.</summary>
    IReadOnlyList<string> ClientAddresses => [];

    /// <summary>A message to <paramref name="members"/> is committed here, with inbox entries for
    /// <paramref name="local"/> (<see cref="InboxRouting.Local"/>) and the others' in forward queues: wakes the
    /// forwarders of those queues.</summary>
    void OnCommitted(string[] members, string[] local);

    /// <summary>A message entered the inbox of <paramref name="userId"/>, whose home is this node: tells the
    /// user's devices connected at other nodes (the local ones the core tells itself).</summary>
    void DeliverToRemoteDevices(string userId, ulong inboxSeq, DeliveryMessage message);

    /// <summary>Catch-up from a remote home: up to <paramref name="limit"/> inbox entries after
    /// <paramref name="afterInboxSeq"/>, with their messages, appended to <paramref name="into"/>.</summary>
    ValueTask ReadRemoteInboxAsync(string userId, ulong afterInboxSeq, int limit, List<DeliveryItem> into, CancellationToken cancellationToken);

    /// <summary>HISTORY of a conversation another node owns: the page its owner answers.</summary>
    Task<(ReasonCode Error, string? Message, HistoryPage? Page)> RemoteHistoryAsync(string userId, History request, int maxFrameBytes, CancellationToken cancellationToken);

    /// <summary>A device acknowledged its inbox, which lives on a remote home.</summary>
    void AckRemoteInbox(IDeviceLink device, ulong inboxSeq);

    /// <summary>A device connected here (<paramref name="online"/>) or closed: its home learns where to deliver.</summary>
    void OnDeviceSession(IDeviceLink device, bool online);
}

/// <summary>
/// Who gets an inbox entry for a message committed on its conversation's owner. <see cref="Recipients"/> starts
/// with <see cref="Local"/> (members whose home is this node; <c>InboxSeqs[i]</c> of the append is
/// <c>Local[i]</c>'s) and goes on with the forward queues of the other home nodes: reserved inbox ids whose
/// entries, written in the same batch as the message, are what the owner still has to send to that home.
/// </summary>
/// <see cref="Refused"/>: the commit may not be made now (a hand-over moves the conversation or a member's home);
/// <see cref="Ticket"/> is the router's, for <see cref="IMessageRouter.EndCommit"/>.
public readonly record struct InboxRouting(string[] Local, string[] Recipients, SendOutcome? Refused = null, object? Ticket = null);

/// <summary>A node this one needs for an operation (a conversation's owner, a user's home) could not be reached
/// in time; the operation may be retried.</summary>
public sealed class RouteUnavailableException(string message) : Exception(message)
{
}
