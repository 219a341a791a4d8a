using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Groups when the broker runs as a cluster (docs/cluster.md, "Groups"): a group lives on the ring owner of its
/// id, which alone changes, sequences and stores it, so every group operation a device asks of another node goes
/// there. <c>Broker/Cluster</c>'s ClusterNode implements it next to <see cref="IMessageRouter"/>; on a single node
/// there is none and <see cref="GroupService"/> does everything locally.
/// </summary>
public interface IGroupRouter
{
    /// <summary>A device's GROUP_REQUEST, run on the group's owner (create: on the owner of an id drawn at random,
    /// drawn again if it is taken); LIST asks every node for the groups it owns.</summary>
    Task<GroupOutcome> HandleGroupRequestAsync(string userId, GroupRequest request, int maxFrameBytes, CancellationToken cancellationToken);

    /// <summary>Owner: a message of a large group (fan-out on read) was committed here; tells the devices of
    /// <paramref name="members"/> connected at other nodes, through each member's home (live only: a lost one is a
    /// gap the device's stream notices). <paramref name="write"/> false only moves their position (a SYSTEM message).</summary>
    void DeliverGroupLog(string[] members, DeliveryMessage message, bool write);

    /// <summary>Catch-up of a large group owned by another node: its log after <paramref name="afterSeq"/>, read
    /// there; false when the user is not a member.</summary>
    ValueTask<bool> ReadRemoteGroupLogAsync(string userId, ulong conversationId, ulong afterSeq, int limit, List<DeliveryItem> into, CancellationToken cancellationToken);

    /// <summary>Where a device's delivery streams of large groups start (CONNECT, SYNC), asked of the groups'
    /// owners: the cursors it <paramref name="named"/>, checked; the groups of <paramref name="stored"/> from the
    /// device's stored cursor; with <paramref name="allLarge"/>, every large group of the user too. Groups the user
    /// is not a member of are in NotMember. With <paramref name="partial"/> (CONNECT), owners that do not answer are
    /// left out (their groups get no stream until the next CONNECT or SYNC, and the node's other groups are
    /// unaffected); without it (SYNC), such an owner fails the call with <see cref="RouteUnavailableException"/>.</summary>
    Task<(List<ConversationCursor> Starts, List<ulong> NotMember)> GroupStreamStartsAsync(string userId, string deviceId,
        IReadOnlyList<ConversationCursor> named, IReadOnlyCollection<ulong> stored, bool allLarge, bool partial, CancellationToken cancellationToken);

    /// <summary>ACK.conversations of a group owned by another node: its owner moves the device's cursor there.</summary>
    void AckRemoteGroup(IDeviceLink device, ulong conversationId, ulong seq);
}
