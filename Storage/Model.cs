namespace ChatBroker.Storage;

/// <summary>
/// Everything one SEND writes, committed in a single batch: the message, its idempotency key,
/// the inbox entries of fan-out on write and the push jobs for offline recipients.
/// </summary>
public sealed record AppendRequest
{
    public required ulong ConversationId { get; init; }

    public required string SenderUserId { get; init; }

    public required string SenderDeviceId { get; init; }

    /// <summary>The client's id for this message; 0 means "no idempotency key".</summary>
    public ulong ClientMsgId { get; init; }

    public uint ContentType { get; init; }

    public ReadOnlyMemory<byte> Body { get; init; }

    public string? MediaRef { get; init; }

    /// <summary>Users whose inbox gets an entry (conversation, seq); each gets its own inbox seq.</summary>
    public IReadOnlyList<string> InboxRecipients { get; init; } = [];

    /// <summary>Users for whom a push-notification job is recorded in the same batch.</summary>
    public IReadOnlyList<string> PushRecipients { get; init; } = [];
}

/// <summary>The outcome of an append. For a duplicate, the original (conversation, seq, timestamp)
/// and no inbox seqs: nothing new was stored.</summary>
public sealed record AppendResult(
    ulong ConversationId,
    ulong Seq,
    long TimestampMs,
    bool IsDuplicate,
    IReadOnlyList<ulong> InboxSeqs);

public sealed record StoredMessage(
    ulong ConversationId,
    ulong Seq,
    long TimestampMs,
    string SenderUserId,
    string SenderDeviceId,
    ulong ClientMsgId,
    uint ContentType,
    string? MediaRef,
    ReadOnlyMemory<byte> Body);

/// <summary>One entry of a user's inbox: message (conversation, seq) at position InboxSeq.</summary>
public readonly record struct InboxEntry(ulong InboxSeq, ulong ConversationId, ulong Seq, long TimestampMs);

public enum ConversationKind : byte
{
    Direct = 1,
    Group = 2,
}

public enum MemberRole : byte
{
    Member = 1,
    Admin = 2,
}

public sealed record Conversation(ulong Id, ConversationKind Kind, long CreatedAtMs, string CreatedBy, string? Title);

public readonly record struct Member(string UserId, MemberRole Role, long JoinedAtMs);

/// <summary>A durable push-notification job: tell <see cref="UserId"/> about (conversation, seq).</summary>
/// <summary>A receipt kept for a user: <paramref name="ReaderUserId"/> received (or, <paramref name="Read"/>, read)
/// the conversation up to <paramref name="UpToSeq"/>.</summary>
public sealed record StoredReceipt(ulong ConversationId, string ReaderUserId, bool Read, ulong UpToSeq);

public sealed record PushJob(ulong Id, string UserId, ulong ConversationId, ulong Seq, long CreatedAtMs, int Attempts, long NotBeforeMs);

/// <summary>A device's long-lived keys (the bundle without one-time prekeys).</summary>
public sealed record PrekeyBundle(ReadOnlyMemory<byte> IdentityKey, uint SignedPrekeyId, ReadOnlyMemory<byte> SignedPrekey, ReadOnlyMemory<byte> Signature);

public readonly record struct OneTimePrekey(uint Id, ReadOnlyMemory<byte> PublicKey);

/// <summary>What FETCH_KEYS returns: the bundle and, while any are left, one consumed one-time prekey.</summary>
public sealed record FetchedPrekeys(PrekeyBundle Bundle, OneTimePrekey? OneTimePrekey);

/// <summary>One cursor of a user to move forward (<see cref="ICursorStore.AdvanceCursorsAsync"/>).</summary>
public readonly record struct CursorAdvance(string DeviceId, CursorStream Stream, ulong Position);

/// <summary>A cursor's value before and after an advance.</summary>
public readonly record struct CursorMove(ulong Previous, ulong Current);

/// <summary>Which position a cursor tracks: a user's inbox, or one conversation's log (fan-out on read).</summary>
public readonly record struct CursorStream(ulong ConversationId)
{
    public static CursorStream Inbox => default;

    public static CursorStream Conversation(ulong conversationId) =>
        conversationId != 0 ? new(conversationId) : throw new ArgumentOutOfRangeException(nameof(conversationId));

    public bool IsInbox => ConversationId == 0;
}
