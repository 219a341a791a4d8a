namespace ChatBroker.Storage;

// Writes return tasks that complete when the write is committed (durable with Durability.Sync).
// Reads are synchronous: they see every write whose task has completed.

/// <summary>The per-conversation message log.</summary>
public interface IMessageLog
{
    /// <summary>Appends a message and assigns the conversation's next seq (1, 2, 3, … no gaps, no reuse).
    /// A repeated (sender user, sender device, client_msg_id) inside the idempotency window returns
    /// the original result with <see cref="AppendResult.IsDuplicate"/> set and stores nothing.
    /// <paramref name="completions"/>: a scope the caller has entered on this thread, in which it completes
    /// other callers' appends that it writes along with its own (<see cref="AppendCompletionScope"/>); null
    /// leaves their completions to the thread pool.</summary>
    Task<AppendResult> AppendAsync(AppendRequest request, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default);

    /// <summary>Stores a copy of a message that another node sequenced (cluster mode: the conversation's owner
    /// forwards it to its recipients' home node) at its seq, with an inbox entry for each of
    /// <paramref name="inboxRecipients"/>, in one write. Idempotent: a message whose seq is not above the last
    /// seq this store has of the conversation stores nothing and returns <see cref="AppendResult.IsDuplicate"/>.
    /// Later seqs may skip (the copies of one conversation arrive in seq order, but not every message has a
    /// recipient here).</summary>
    Task<AppendResult> StoreCopyAsync(StoredMessage message, IReadOnlyList<string> inboxRecipients, CancellationToken cancellationToken = default);

    /// <summary><see cref="StoreCopyAsync(StoredMessage, IReadOnlyList{string}, CancellationToken)"/> with a push job
    /// for each of <paramref name="pushRecipients"/> (recipients with no online device) in the same write, so a
    /// resent copy, which stores nothing, creates no second job.</summary>
    Task<AppendResult> StoreCopyAsync(StoredMessage message, IReadOnlyList<string> inboxRecipients, IReadOnlyList<string> pushRecipients, CancellationToken cancellationToken = default);

    /// <summary>Several copies (<see cref="StoreCopyAsync(StoredMessage, IReadOnlyList{string}, CancellationToken)"/>) in
    /// one write, in order: a new owner's re-forward of a conversation's tail into its forward queues, whose entries
    /// must keep seq order. Recipients that are reserved ids ('#…': a node's forward queues) get an entry every time,
    /// copy marks or not. Returns each copy's result (as StoreCopyAsync's). At most <see cref="MaxCopiesPerWrite"/> at once.</summary>
    Task<AppendResult[]> StoreCopiesAsync(IReadOnlyList<CopyRequest> copies, CancellationToken cancellationToken = default);

    /// <summary>The bound on <see cref="StoreCopiesAsync"/>.</summary>
    const int MaxCopiesPerWrite = 64;

    /// <summary>Up to <paramref name="limit"/> messages with seq ≥ <paramref name="fromSeq"/>, ascending.</summary>
    IReadOnlyList<StoredMessage> ReadRange(ulong conversationId, ulong fromSeq, int limit);

    /// <summary>History page: the <paramref name="limit"/> messages just before <paramref name="beforeSeq"/>,
    /// returned in ascending seq order. Use <c>ulong.MaxValue</c> for "the newest".</summary>
    IReadOnlyList<StoredMessage> ReadBefore(ulong conversationId, ulong beforeSeq, int limit);

    /// <summary>The last assigned seq of the conversation (0 if none).</summary>
    ulong GetLastSeq(ulong conversationId);
}

/// <summary>Per-user inboxes written by fan-out on write.</summary>
public interface IInboxStore
{
    /// <summary>Up to <paramref name="limit"/> entries with inbox seq &gt; <paramref name="afterInboxSeq"/>, ascending.</summary>
    IReadOnlyList<InboxEntry> ReadInbox(string userId, ulong afterInboxSeq, int limit);

    ulong GetLastInboxSeq(string userId);
}

/// <summary>Per-device positions (what each device has acknowledged).</summary>
public interface ICursorStore
{
    /// <summary>0 when the device has never acknowledged anything on that stream.</summary>
    ulong GetCursor(string userId, string deviceId, CursorStream stream);

    /// <summary>Moves the cursor forward to <paramref name="position"/> (never backwards) and returns the stored value.
    /// <paramref name="completions"/> as for <see cref="IMessageLog.AppendAsync"/>.</summary>
    Task<ulong> AdvanceCursorAsync(string userId, string deviceId, CursorStream stream, ulong position, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default);

    /// <summary>Moves several cursors of one user forward (never backwards) in one write, e.g. an ACK's inbox
    /// cursor and its delivered receipts; returns each one's value before and after, in order. The
    /// (device, stream) pairs must differ. <paramref name="completions"/> as for <see cref="IMessageLog.AppendAsync"/>.</summary>
    Task<CursorMove[]> AdvanceCursorsAsync(string userId, IReadOnlyList<CursorAdvance> advances, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default);
}

/// <summary>Conversations and their members.</summary>
public interface IConversationStore
{
    /// <summary>The direct conversation of two users, created on first use. The id comes from the same
    /// counter as groups; the (lower user, higher user) → id mapping is stored, so it is stable.</summary>
    Task<Conversation> GetOrCreateDirectAsync(string userA, string userB, CancellationToken cancellationToken = default);

    /// <summary>The direct conversation of two distinct users at an id derived from them (cluster mode, where
    /// the id must be the same on every node without asking one): created if no conversation has that id,
    /// otherwise the one that has it, which may belong to another pair after a hash collision (the caller
    /// compares the members). <paramref name="conversationId"/> must be at least
    /// <see cref="ChatStore.FirstDerivedConversationId"/>; the counter never allocates there.</summary>
    Task<Conversation> GetOrCreateDirectAtAsync(ulong conversationId, string userA, string userB, CancellationToken cancellationToken = default);

    /// <summary>Creates a group; <paramref name="creator"/> becomes admin, <paramref name="members"/> members.</summary>
    Task<Conversation> CreateGroupAsync(string creator, string? title, IReadOnlyList<string> members, CancellationToken cancellationToken = default);

    /// <summary>Creates a group at an id drawn at random (cluster mode: the group's owner creates it at the id a
    /// gateway drew); null, with nothing written, when a conversation already has that id (the gateway draws again).
    /// <paramref name="conversationId"/> is in [<see cref="ChatStore.FirstDrawnGroupId"/>,
    /// <see cref="ChatStore.FirstDerivedConversationId"/>); the counter never allocates there.</summary>
    Task<Conversation?> CreateGroupAtAsync(ulong conversationId, string creator, string? title, IReadOnlyList<string> members, CancellationToken cancellationToken = default);

    Conversation? GetConversation(ulong conversationId);

    /// <summary>The id of the direct conversation of two users if it exists (nothing is created); null otherwise.</summary>
    ulong? FindDirect(string userA, string userB);

    /// <summary>Adds or changes the role of a member.</summary>
    Task SetMemberAsync(ulong conversationId, string userId, MemberRole role, CancellationToken cancellationToken = default);

    /// <summary>False when the user was not a member.</summary>
    Task<bool> RemoveMemberAsync(ulong conversationId, string userId, CancellationToken cancellationToken = default);

    Member? GetMember(ulong conversationId, string userId);

    IReadOnlyList<Member> ListMembers(ulong conversationId);

    IReadOnlyList<ulong> ListConversations(string userId);
}

/// <summary>Durable push-notification jobs.</summary>
public interface IPushJobStore
{
    Task<PushJob> EnqueuePushJobAsync(string userId, ulong conversationId, ulong seq, CancellationToken cancellationToken = default);

    /// <summary>Jobs whose NotBefore ≤ <paramref name="nowMs"/>, oldest first.</summary>
    IReadOnlyList<PushJob> ListDuePushJobs(long nowMs, int limit);

    Task CompletePushJobAsync(ulong jobId, CancellationToken cancellationToken = default);

    /// <summary>Records a failed attempt and when to try again; false if the job no longer exists.</summary>
    Task<bool> ReschedulePushJobAsync(ulong jobId, long notBeforeMs, CancellationToken cancellationToken = default);
}

public interface IPresenceStore
{
    Task SetLastSeenAsync(string userId, long lastSeenMs, CancellationToken cancellationToken = default);

    long? GetLastSeen(string userId);
}

/// <summary>
/// Receipts kept for a user (cluster mode: on the user's home node): "reader R has received (or read) conversation C
/// up to seq S", the latest position per (conversation, reader, kind), so a user whose devices were all offline
/// learns them on the next CONNECT.
/// </summary>
public interface IReceiptStore
{
    /// <summary>Moves the receipt forward to <paramref name="upToSeq"/> (never backwards); returns the position it
    /// had before (0 when none).</summary>
    Task<ulong> StoreReceiptAsync(string userId, ulong conversationId, string readerUserId, bool read, ulong upToSeq, CancellationToken cancellationToken = default);

    /// <summary>Up to <paramref name="limit"/> receipts kept for the user, by conversation.</summary>
    IReadOnlyList<StoredReceipt> ListReceipts(string userId, int limit);
}

/// <summary>End-to-end encryption key bundles.</summary>
public interface IPrekeyStore
{
    /// <summary>Stores the bundle (if given, replacing the previous one) and adds one-time prekeys.</summary>
    Task UploadPrekeysAsync(string userId, string deviceId, PrekeyBundle? bundle, IReadOnlyList<OneTimePrekey> oneTimePrekeys, CancellationToken cancellationToken = default);

    /// <summary>The bundle plus one one-time prekey, which is consumed: concurrent callers never get the
    /// same one. Null when the device has no bundle.</summary>
    Task<FetchedPrekeys?> TakePrekeysAsync(string userId, string deviceId, CancellationToken cancellationToken = default);

    /// <summary>The device's one-time prekeys, counted up to <paramref name="upTo"/> at most (a caller that only asks
    /// whether there are fewer than N stops reading there).</summary>
    int CountOneTimePrekeys(string userId, string deviceId, int upTo = int.MaxValue);

    /// <summary>The device's bundle without consuming anything; null when it never uploaded one.</summary>
    PrekeyBundle? GetPrekeyBundle(string userId, string deviceId);

    /// <summary>The devices of a user that have a bundle (in storage order, not sorted).</summary>
    IReadOnlyList<string> ListKeyDevices(string userId);
}

/// <summary>The whole store. <see cref="IAsyncDisposable.DisposeAsync"/> commits what is queued, then closes.</summary>
public interface IChatStore : IMessageLog, IInboxStore, ICursorStore, IConversationStore, IPushJobStore, IPresenceStore, IPrekeyStore, IReceiptStore, IAccountStore, IMqttStateStore, IRangeTransfer, IReplicaStore, IAsyncDisposable, IDisposable
{
    /// <summary>Applies retention and expires idempotency keys now; returns the number of records removed.
    /// The background sweeper calls this every <see cref="StorageOptions.SweepInterval"/>.</summary>
    Task<long> SweepAsync(CancellationToken cancellationToken = default);
}

/// <summary>One copy of <see cref="IChatStore.StoreCopiesAsync"/>: the message, its inbox recipients here, and the
/// recipients that get a push job with it. <paramref name="FromOwner"/>: the caller checked that the copy comes from the
/// node that serves the conversation now, so its record replaces a different one this store holds at the seq (one that
/// came from an owner that failed before acknowledging it); any other copy never replaces a log record.</summary>
public sealed record CopyRequest(StoredMessage Message, IReadOnlyList<string> InboxRecipients, IReadOnlyList<string> PushRecipients, bool FromOwner = false);
