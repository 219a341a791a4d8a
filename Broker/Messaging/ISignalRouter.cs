using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Cluster mode: where receipts, presence, typing, keys and push decisions go when the node that keeps them is not
/// this one (docs/cluster.md, "Receipts" to "Push jobs"). A user's home keeps the user's receipts, presence, device
/// table and keys; a conversation's owner knows its members. <c>Broker/Cluster</c> implements it with the
/// <see cref="IMessageRouter"/>; on a single node there is none and every service works on its local state.
/// </summary>
public interface ISignalRouter : IMessageRouter
{
    // ---- receipts ----

    /// <summary>READ of a conversation another node owns: the owner checks, clamps and records it.</summary>
    Task<(ReasonCode Error, string? Message)> ReadRemoteAsync(IDeviceLink device, ulong conversationId, ulong upToSeq, CancellationToken cancellationToken);

    /// <summary>On the reader's home: an ACK moved the reader's delivered position in a conversation another node
    /// owns; the owner records the receipt and sends it on to whom it concerns.</summary>
    void ReportDelivered(string reader, ulong conversationId, ulong upToSeq);

    /// <summary>On the conversation's owner: a receipt for <paramref name="userId"/>, kept and delivered by the user's
    /// home (stored for the next CONNECT, pushed to the user's devices wherever they are connected).</summary>
    void RouteReceipt(string userId, Receipt receipt);

    /// <summary>A device connected: the receipts its user's home keeps are written to it (when they come).</summary>
    void SendStoredReceipts(IDeviceLink device, int limit);

    // ---- presence, typing, notices ----

    /// <summary>True when the user has a device connected at another node (the caller is the user's home).</summary>
    bool IsOnlineElsewhere(string userId);

    /// <summary>The presence permission across nodes: <paramref name="userA"/> and <paramref name="userB"/> have a
    /// direct conversation (asked of its owner).</summary>
    Task<bool> SharesConversationAsync(string userA, string userB, CancellationToken cancellationToken);

    /// <summary>Subscribes <paramref name="subscriber"/> to users whose home is another node; returns their current
    /// presence. <see cref="RouteUnavailableException"/> when a home does not answer.</summary>
    Task<List<Presence>> WatchAsync(IDeviceLink subscriber, IReadOnlyList<string> users, CancellationToken cancellationToken);

    /// <summary>Ends <paramref name="subscriber"/>'s subscriptions to users whose home is another node.</summary>
    void Unwatch(IDeviceLink subscriber, IReadOnlyList<string> users);

    /// <summary>PRESENCE_SET of a device whose user's home is another node.</summary>
    void ReportAway(IDeviceLink device, bool away);

    /// <summary>TYPING in a conversation another node owns (best effort; a refusal comes back as ERROR).</summary>
    void RelayTyping(IDeviceLink from, Typing typing);

    /// <summary>On the conversation's owner: an ephemeral packet for the devices of <paramref name="users"/>, wherever
    /// they are connected (through each user's home). Returns how many devices here were told.</summary>
    int NotifyUsers(IReadOnlyList<string> users, IMessage packet);

    // ---- keys ----

    /// <summary>KEYS_UPLOAD of a device whose user's home is another node; <see cref="RouteUnavailableException"/> when
    /// it does not answer in time.</summary>
    Task<KeyDirectory.Outcome<KeysUploaded>> UploadKeysAsync(IDeviceLink device, KeysUpload upload, CancellationToken cancellationToken);

    /// <summary>FETCH_KEYS of a user whose home is another node (the one-time prekeys are taken there);
    /// <see cref="RouteUnavailableException"/> when it does not answer in time.</summary>
    Task<KeyDirectory.Outcome<KeyBundle>> FetchKeysAsync(FetchKeys fetch, int maxFrameBytes, CancellationToken cancellationToken);

    /// <summary>On the user's home: a packet for one device connected at another node; false when it is not.</summary>
    bool NotifyRemoteDevice(string userId, string deviceId, IMessage packet);
}
