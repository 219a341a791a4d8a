using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>What a mesh message's payload is (<c>MeshMessage.kind</c>); each is a message of a Cluster/*.proto file.
/// Ranges: 1–19 messages and inbox (cluster_ops.proto), 20–39 groups, 40–59 receipts, presence, typing, keys and
/// push, 60–79 range hand-over, 80–99 node-level operations, 100–109 accounts (revocation, settings).</summary>
public enum ClusterOpKind : uint
{
    /// <summary>Gateway → owner: <see cref="ForwardSend"/>, answered with <see cref="SendResult"/>.</summary>
    ForwardSend = 1,

    /// <summary>Owner → home: <see cref="Wire.InboxAppend"/>; the ack means stored.</summary>
    InboxAppend = 2,

    /// <summary>Gateway → home: <see cref="Wire.DeviceRegistration"/>.</summary>
    DeviceRegistration = 3,

    /// <summary>Home → gateway: <see cref="Wire.DeviceDeliver"/>.</summary>
    DeviceDeliver = 4,

    /// <summary>Gateway → home: <see cref="Wire.ReadInbox"/>, answered with <see cref="InboxPage"/>.</summary>
    ReadInbox = 5,

    /// <summary>Gateway → home: <see cref="Wire.AckInbox"/>.</summary>
    AckInbox = 6,

    /// <summary>Home → gateway: <see cref="Wire.DeviceRegistration"/> of a device that connected elsewhere: close
    /// its session here (SESSION_TAKEN_OVER), as a second login on one node does.</summary>
    DeviceTakenOver = 7,

    /// <summary>Gateway → owner: <see cref="HistoryRequest"/>, answered with <see cref="HistoryResult"/>.</summary>
    History = 8,

    /// <summary>A node that (re)started → every other member: register again the sessions of my users you hold, and
    /// catch them up from me (an empty payload; see ClusterNode.Resync.cs).</summary>
    Reattach = 9,

    /// <summary>Gateway → group owner: <see cref="GroupOp"/>, answered with <see cref="GroupOpResult"/>.</summary>
    GroupOp = 20,

    /// <summary>Gateway → every member: <see cref="GroupListOwned"/>, answered with <see cref="GroupOpResult"/>.</summary>
    GroupList = 21,

    /// <summary>Group owner → home: <see cref="GroupLogDeliver"/> of a large group's message.</summary>
    GroupLogToHome = 22,

    /// <summary>Home → gateway: <see cref="GroupLogDeliver"/> of a large group's message.</summary>
    GroupLogToGateway = 23,

    /// <summary>Gateway → group owner: <see cref="GroupLogRead"/>, answered with <see cref="GroupLogPage"/>.</summary>
    GroupLogRead = 24,

    /// <summary>Gateway → members / owner: <see cref="GroupStreamsRequest"/>, answered with <see cref="GroupStreamStarts"/>.</summary>
    GroupStreams = 25,

    /// <summary>Gateway → group owner: <see cref="GroupAck"/>.</summary>
    GroupAck = 26,
    // ---- 40–59: receipts, presence, typing, keys (cluster_signals.proto; ClusterNode.Signals.cs) ----

    /// <summary>Gateway → owner: <see cref="Wire.ReadReceipt"/> (READ), answered with <see cref="SignalResult"/>.</summary>
    ReadReceipt = 40,

    /// <summary>Reader's home → owner: <see cref="Wire.DeliveredReport"/> (an ACK moved a delivered position).</summary>
    DeliveredReport = 41,

    /// <summary>Owner → the receipt's recipient's home: <see cref="Wire.ReceiptForUser"/>; the ack means stored.</summary>
    ReceiptForUser = 42,

    /// <summary>Gateway → home: <see cref="Wire.StoredReceiptsRequest"/>, answered with <see cref="StoredReceiptList"/>.</summary>
    StoredReceipts = 43,

    /// <summary>Home → gateway: <see cref="Wire.DeviceNotice"/> (a receipt, typing, presence or low-prekeys packet).</summary>
    DeviceNotice = 44,

    /// <summary>Owner → home: <see cref="Wire.UserNotice"/> (a packet for users whose home is the target).</summary>
    UserNotice = 45,

    /// <summary>Gateway → owner: <see cref="ConversationMembersRequest"/>, answered with <see cref="ConversationMembersResult"/>.</summary>
    ConversationMembers = 46,

    /// <summary>Gateway → home: <see cref="Wire.PresenceWatch"/>; a subscribe is answered with <see cref="SignalResult"/>.</summary>
    PresenceWatch = 47,

    /// <summary>Gateway → home: <see cref="Wire.PresenceAway"/> (PRESENCE_SET).</summary>
    PresenceAway = 48,

    /// <summary>Gateway → owner: <see cref="TypingRequest"/>, answered with <see cref="SignalResult"/>.</summary>
    Typing = 49,

    /// <summary>Gateway → home: <see cref="KeysUploadRequest"/>, answered with <see cref="SignalResult"/>.</summary>
    KeysUpload = 50,

    /// <summary>Gateway → the target's home: <see cref="FetchKeysRequest"/>, answered with <see cref="SignalResult"/>.</summary>
    FetchKeys = 51,
    /// <summary>Hand-over driver → member: <see cref="Wire.HandoverStep"/>, answered later by a posted
    /// <see cref="Wire.HandoverStepDone"/>.</summary>
    HandoverStep = 60,

    /// <summary>Member → hand-over driver: <see cref="Wire.HandoverStepDone"/>.</summary>
    HandoverStepDone = 61,

    /// <summary>Old owner → new owner: <see cref="Wire.RangeChunk"/>, answered with <see cref="Wire.RangeChunkResult"/>.</summary>
    RangeChunk = 62,

    // ---- 80–89: replication (cluster_replication.proto; ClusterNode.Replication.cs) ----

    /// <summary>Primary → replica (stream 1): <see cref="Wire.ReplicaBatch"/> of one committed write batch; the ack
    /// means durable at the replica.</summary>
    ReplicaRecords = 80,

    /// <summary>Primary → replica catching up (stream 1): <see cref="Wire.ReplicaBatch"/> of one page of the primary's
    /// ranges (a range export); the ack means durable.</summary>
    ReplicaCopy = 81,

    /// <summary>Primary → replica about to be caught up (stream 1, empty payload, stamped with the primary's epoch): delete
    /// what you hold of my ranges that you replicate (every family but the logs, which hold your inboxes' copies too),
    /// so the copy that follows leaves nothing the primary deleted meanwhile. Refused unless the replica's map has the
    /// same epoch (the same ring).</summary>
    ReplicaReset = 82,

    // ---- 100–109: accounts (issue 18; cluster_accounts.proto, ClusterNode.Accounts.cs) ----

    /// <summary>Revoking node → every other member: <see cref="Wire.DeviceRevocation"/>, answered with <see cref="Wire.AccountResult"/>.</summary>
    DeviceRevocation = 100,

    /// <summary>Gateway → the user's home: <see cref="Wire.SettingsRequest"/>, answered with <see cref="Wire.AccountResult"/>.</summary>
    SettingsRequest = 101,
}

/// <summary>Conversions between the core's types and the cluster operations, and the derived ids.</summary>
public static class ClusterOps
{
    /// <summary>Ids a pair may have: when the first holds another pair's conversation (a hash collision), the next
    /// seed is tried, on whichever node owns that id.</summary>
    public const int DirectIdProbes = 4;

    /// <summary>Seed of the direct conversation id hash (plus the probe): distinct from the ring's key spaces.</summary>
    private const long DirectIdSeed = 0x646972656374; // "direct"

    /// <summary>
    /// The id of the direct conversation of two users in a cluster: XxHash3 of the ordered pair (each id length-
    /// prefixed, so no two pairs give the same bytes), in the upper half of the id space, which the store's
    /// counter never reaches (<see cref="ChatStore.FirstDerivedConversationId"/>). Every node computes it alone.
    /// </summary>
    public static ulong DirectConversationId(string userA, string userB, int attempt = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(attempt);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(attempt, DirectIdProbes);
        var (lo, hi) = string.CompareOrdinal(userA, userB) <= 0 ? (userA, userB) : (userB, userA);
        var loBytes = Encoding.UTF8.GetByteCount(lo);
        var length = 8 + loBytes + Encoding.UTF8.GetByteCount(hi);
        Span<byte> key = length <= 512 ? stackalloc byte[length] : new byte[length];
        BinaryPrimitives.WriteInt32LittleEndian(key, loBytes);
        Encoding.UTF8.GetBytes(lo, key[4..]);
        BinaryPrimitives.WriteInt32LittleEndian(key[(4 + loBytes)..], length - 8 - loBytes);
        Encoding.UTF8.GetBytes(hi, key[(8 + loBytes)..]);
        return ChatStore.FirstDerivedConversationId | (XxHash3.HashToUInt64(key, DirectIdSeed + attempt) & ~ChatStore.FirstDerivedConversationId);
    }

    /// <summary>Which probe of the pair <paramref name="conversationId"/> is, or -1 when it is none of them.</summary>
    public static int DirectIdAttempt(string userA, string userB, ulong conversationId)
    {
        for (var attempt = 0; attempt < DirectIdProbes; attempt++)
        {
            if (DirectConversationId(userA, userB, attempt) == conversationId)
            {
                return attempt;
            }
        }

        return -1;
    }

    public static ForwardedMessage ToWire(StoredMessage m) =>
        ToWire(m.ConversationId, m.Seq, m.TimestampMs, m.SenderUserId, m.SenderDeviceId, m.ClientMsgId, m.ContentType, m.MediaRef, m.Body.Span);

    public static ForwardedMessage ToWire(DeliveryMessage m) =>
        ToWire(m.ConversationId, m.Seq, m.TimestampMs, m.SenderUserId, m.SenderDeviceId, m.ClientMsgId, (uint)m.ContentType,
            m.Media is null ? null : Convert.ToBase64String(m.Media.ToByteArray()), m.Body.Span);

    private static ForwardedMessage ToWire(ulong conversationId, ulong seq, long timestampMs, string senderUser, string senderDevice, ulong clientMsgId, uint contentType, string? mediaRef, ReadOnlySpan<byte> body) => new()
    {
        ConversationId = conversationId,
        Seq = seq,
        TimestampMs = timestampMs,
        SenderUser = senderUser,
        SenderDevice = senderDevice,
        ClientMsgId = clientMsgId,
        ContentType = contentType,
        MediaRef = mediaRef ?? "", // as stored: base64 of a MediaRef
        Body = ByteString.CopyFrom(body),
    };

    public static StoredMessage ToStored(ForwardedMessage m) =>
        new(m.ConversationId, m.Seq, m.TimestampMs, m.SenderUser, m.SenderDevice, m.ClientMsgId, m.ContentType,
            m.MediaRef.Length == 0 ? null : m.MediaRef, m.Body.Memory);

    public static DeliveryMessage ToDelivery(ForwardedMessage m) => DeliveryMessage.FromStored(ToStored(m));
}
