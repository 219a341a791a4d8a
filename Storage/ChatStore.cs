using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>
/// The store's logic over an ordered key-value engine: writes go through the single
/// <see cref="CommitWriter"/>, reads go straight to the engine. <see cref="RocksDbChatStore"/> and
/// <see cref="InMemoryChatStore"/> differ only in the engine, so the broker's unit tests exercise the
/// same sequencing, idempotency and fan-out code that runs in production.
/// </summary>
public abstract partial class ChatStore : IChatStore
{
    /// <summary>Conversation ids from here up are derived from their members (a cluster's direct conversations,
    /// <see cref="IConversationStore.GetOrCreateDirectAtAsync"/>); the counter allocates below it.</summary>
    public const ulong FirstDerivedConversationId = 1UL << 63;

    /// <summary>Group ids from here up to <see cref="FirstDerivedConversationId"/> are drawn at random (a cluster's
    /// groups, <see cref="IConversationStore.CreateGroupAtAsync"/>); the counter allocates below it.</summary>
    public const ulong FirstDrawnGroupId = 1UL << 62;

    private const int MaxReadLimit = 10_000;
    private const int SweepChunk = 1024;

    private readonly IKvEngine _engine;
    private readonly CommitWriter _writer;
    private readonly StorageOptions _options;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _sweeper;
    private int _disposed;

    private protected ChatStore(IKvEngine engine, StorageOptions options)
    {
        Validate(options);
        CheckFormat(engine, options);
        _engine = engine;
        _options = options;
        _writer = new CommitWriter(engine, options);
        _sweeper = options.SweepInterval == Timeout.InfiniteTimeSpan
            ? Task.CompletedTask
            : Task.Run(() => SweepPeriodicallyAsync(_stopping.Token));
    }

    public StorageOptions Options => _options;

    /// <summary>Refuses a store written in another key layout instead of misreading it; stamps a new
    /// (empty) store with <see cref="Records.StorageFormat"/>.</summary>
    private static void CheckFormat(IKvEngine engine, StorageOptions options)
    {
        var stored = engine.Get(Cf.Default, Records.FormatKey);
        if (stored is { Length: 4 } && Records.TrailingU32(stored) == Records.StorageFormat)
        {
            return;
        }

        string? found = stored switch
        {
            null when HoldsData(engine) => "1 (written before the format was recorded)",
            null => null,
            { Length: 4 } => Records.TrailingU32(stored).ToString(System.Globalization.CultureInfo.InvariantCulture),
            _ => "unreadable",
        };
        if (found is not null)
        {
            throw new StorageException(
                StorageFailure.Incompatible,
                $"Cannot open message store at {options.Path}: its storage format is {found}, this build reads format " +
                $"{Records.StorageFormat} only. Start on an empty directory (storage.path), or run the ChatBroker version that wrote it.");
        }

        using var batch = engine.CreateBatch();
        batch.Put(Cf.Default, Records.FormatKey, new ByteWriter(4).U32(Records.StorageFormat).Span);
        engine.Commit(batch, sync: true);
    }

    private static bool HoldsData(IKvEngine engine)
    {
        foreach (var cf in Enum.GetValues<Cf>())
        {
            using var cursor = engine.OpenCursor(cf, [], []);
            cursor.SeekToFirst();
            if (cursor.Valid)
            {
                return true;
            }
        }

        return false;
    }

    // ---- messages ----

    public Task<AppendResult> AppendAsync(AppendRequest request, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        Records.ValidateId(request.SenderUserId, nameof(request.SenderUserId));
        Records.ValidateId(request.SenderDeviceId, nameof(request.SenderDeviceId));
        if (request.ConversationId == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(request), "ConversationId 0 is reserved.");
        }

        foreach (var user in request.InboxRecipients)
        {
            Records.ValidateId(user, nameof(request.InboxRecipients));
        }

        foreach (var user in request.PushRecipients)
        {
            Records.ValidateId(user, nameof(request.PushRecipients));
        }

        return _writer.EnqueueAsync(new AppendOp(request), completions, cancellationToken);
    }

    public Task<AppendResult> StoreCopyAsync(StoredMessage message, IReadOnlyList<string> inboxRecipients, CancellationToken cancellationToken = default) =>
        StoreCopyAsync(message, inboxRecipients, [], cancellationToken);

    public Task<AppendResult> StoreCopyAsync(StoredMessage message, IReadOnlyList<string> inboxRecipients, IReadOnlyList<string> pushRecipients, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        ArgumentNullException.ThrowIfNull(inboxRecipients);
        ArgumentNullException.ThrowIfNull(pushRecipients);
        foreach (var user in pushRecipients)
        {
            Records.ValidateId(user, nameof(pushRecipients));
        }

        Records.ValidateId(message.SenderUserId, nameof(message.SenderUserId));
        Records.ValidateId(message.SenderDeviceId, nameof(message.SenderDeviceId));
        if (message.ConversationId == 0 || message.Seq == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(message), "ConversationId 0 and seq 0 are reserved.");
        }

        foreach (var user in inboxRecipients)
        {
            Records.ValidateId(user, nameof(inboxRecipients));
        }

        return _writer.EnqueueAsync(new StoreCopyOp(message, inboxRecipients, pushRecipients), null, cancellationToken);
    }

    public Task<AppendResult[]> StoreCopiesAsync(IReadOnlyList<CopyRequest> copies, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(copies);
        if (copies.Count > IChatStore.MaxCopiesPerWrite)
        {
            throw new ArgumentException($"at most {IChatStore.MaxCopiesPerWrite} copies in one write, got {copies.Count}", nameof(copies));
        }

        var ops = new StoreCopyOp[copies.Count];
        for (var i = 0; i < ops.Length; i++)
        {
            ArgumentNullException.ThrowIfNull(copies[i]);
            var (message, recipients, push, fromOwner) = copies[i];
            ArgumentNullException.ThrowIfNull(message);
            ArgumentNullException.ThrowIfNull(recipients);
            ArgumentNullException.ThrowIfNull(push);
            Records.ValidateId(message.SenderUserId, nameof(copies));
            Records.ValidateId(message.SenderDeviceId, nameof(copies));
            if (message.ConversationId == 0 || message.Seq == 0)
            {
                throw new ArgumentOutOfRangeException(nameof(copies), "ConversationId 0 and seq 0 are reserved.");
            }

            foreach (var user in recipients)
            {
                Records.ValidateId(user, nameof(copies));
            }

            foreach (var user in push)
            {
                Records.ValidateId(user, nameof(copies));
            }

            ops[i] = new StoreCopyOp(message, recipients, push, fromOwner);
        }

        return ops.Length == 0 ? Task.FromResult<AppendResult[]>([]) : _writer.EnqueueAsync(new StoreCopiesOp(ops), null, cancellationToken);
    }

    public IReadOnlyList<StoredMessage> ReadRange(ulong conversationId, ulong fromSeq, int limit)
    {
        CheckLimit(limit);
        var w = new ByteWriter(16);
        var lower = Records.MessageKey(w, conversationId, fromSeq).ToArray();
        var upper = KeyRange.PrefixSuccessor(Records.ConversationPrefix(w, conversationId).Span);
        var result = new List<StoredMessage>(Math.Min(limit, 256));
        using var cursor = _engine.OpenCursor(Cf.Messages, lower, upper);
        var visible = _writer.VisibleSeq(conversationId); // after the cursor opened: see CommitWriter
        for (cursor.SeekToFirst(); cursor.Valid && result.Count < limit && Records.TrailingU64(cursor.Key) <= visible; cursor.Next())
        {
            result.Add(Records.ReadMessage(cursor.Key, cursor.Value));
        }

        return result;
    }

    public IReadOnlyList<StoredMessage> ReadBefore(ulong conversationId, ulong beforeSeq, int limit)
    {
        CheckLimit(limit);
        var w = new ByteWriter(16);
        var lower = Records.MessageKey(w, conversationId, 0).ToArray();
        var upper = beforeSeq == ulong.MaxValue
            ? KeyRange.PrefixSuccessor(Records.ConversationPrefix(w, conversationId).Span)
            : Records.MessageKey(w, conversationId, beforeSeq).ToArray();
        var result = new List<StoredMessage>(Math.Min(limit, 256));
        using var cursor = _engine.OpenCursor(Cf.Messages, lower, upper);
        SeekToLastVisible(cursor, lower.AsSpan(0, lower.Length - 8), _writer.VisibleSeq(conversationId), beforeSeq);
        for (; cursor.Valid && result.Count < limit; cursor.Prev())
        {
            result.Add(Records.ReadMessage(cursor.Key, cursor.Value));
        }

        result.Reverse();
        return result;
    }

    public ulong GetLastSeq(ulong conversationId)
    {
        var prefix = Records.ConversationPrefix(new ByteWriter(8), conversationId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Messages, prefix, KeyRange.PrefixSuccessor(prefix));
        SeekToLastVisible(cursor, prefix, _writer.VisibleSeq(conversationId), ulong.MaxValue);
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    /// <summary>Positions the cursor on the last key of prefix|seq with seq ≤ <paramref name="visible"/>
    /// and seq &lt; <paramref name="before"/> (<see cref="ulong.MaxValue"/>: no limit).</summary>
    private static void SeekToLastVisible(IKvCursor cursor, ReadOnlySpan<byte> prefix, ulong visible, ulong before)
    {
        if (visible == ulong.MaxValue || (before != ulong.MaxValue && visible >= before))
        {
            cursor.SeekToLast(); // the cursor's upper bound already stops at before
            return;
        }

        Span<byte> key = stackalloc byte[prefix.Length + 8];
        prefix.CopyTo(key);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(key[prefix.Length..], visible);
        cursor.SeekForPrev(key);
    }

    // ---- inboxes ----

    public IReadOnlyList<InboxEntry> ReadInbox(string userId, ulong afterInboxSeq, int limit)
    {
        Records.ValidateId(userId, nameof(userId));
        CheckLimit(limit);
        if (afterInboxSeq == ulong.MaxValue)
        {
            return [];
        }

        var w = new ByteWriter();
        var upper = KeyRange.PrefixSuccessor(Records.InboxPrefix(w, userId).Span);
        var lower = Records.InboxKey(w, userId, afterInboxSeq + 1).ToArray();
        // Grown as entries are found, not sized by the limit: most reads (a receiver's ACK, a live device's
        // catch-up) find a few entries, and 256 slots are 8 KB of garbage per read.
        var result = new List<InboxEntry>(Math.Min(limit, 16));
        using var cursor = _engine.OpenCursor(Cf.Inboxes, lower, upper);
        var visible = _writer.VisibleInboxSeq(userId);
        for (cursor.SeekToFirst(); cursor.Valid && result.Count < limit && Records.TrailingU64(cursor.Key) <= visible; cursor.Next())
        {
            result.Add(Records.ReadInbox(cursor.Key, cursor.Value));
        }

        return result;
    }

    public ulong GetLastInboxSeq(string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var prefix = Records.InboxPrefix(new ByteWriter(), userId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Inboxes, prefix, KeyRange.PrefixSuccessor(prefix));
        SeekToLastVisible(cursor, prefix, _writer.VisibleInboxSeq(userId), ulong.MaxValue);
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    // ---- cursors ----

    public ulong GetCursor(string userId, string deviceId, CursorStream stream)
    {
        ValidateIds(userId, deviceId);
        var value = _engine.Get(Cf.Cursors, Records.CursorKey(new ByteWriter(), userId, deviceId, stream).Span);
        return value is { Length: 8 } ? Records.TrailingU64(value) : 0;
    }

    public Task<ulong> AdvanceCursorAsync(string userId, string deviceId, CursorStream stream, ulong position, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default)
    {
        ValidateIds(userId, deviceId);
        return _writer.EnqueueAsync(new AdvanceCursorOp(userId, deviceId, stream, position), completions, cancellationToken);
    }

    public Task<CursorMove[]> AdvanceCursorsAsync(string userId, IReadOnlyList<CursorAdvance> advances, AppendCompletionScope? completions = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(advances);
        for (var i = 0; i < advances.Count; i++)
        {
            ValidateIds(userId, advances[i].DeviceId);
            for (var j = 0; j < i; j++)
            {
                if (advances[j].DeviceId == advances[i].DeviceId && advances[j].Stream == advances[i].Stream)
                {
                    // Each reads the stored value, not the other's write in the same batch.
                    throw new ArgumentException($"cursor ({advances[i].DeviceId}, {advances[i].Stream.ConversationId}) appears twice", nameof(advances));
                }
            }
        }

        return advances.Count == 0
            ? Task.FromResult(Array.Empty<CursorMove>())
            : _writer.EnqueueAsync(new AdvanceCursorsOp(userId, advances.ToArray()), completions, cancellationToken);
    }

    // ---- conversations ----

    public Task<Conversation> GetOrCreateDirectAsync(string userA, string userB, CancellationToken cancellationToken = default)
    {
        ValidateIds(userA, userB);
        return _writer.EnqueueAsync(new GetOrCreateDirectOp(userA, userB), null, cancellationToken);
    }

    public Task<Conversation> GetOrCreateDirectAtAsync(ulong conversationId, string userA, string userB, CancellationToken cancellationToken = default)
    {
        ValidateIds(userA, userB);
        if (conversationId < FirstDerivedConversationId)
        {
            throw new ArgumentOutOfRangeException(nameof(conversationId), conversationId, "A derived conversation id is at least 2^63 (below it the counter allocates).");
        }

        if (string.Equals(userA, userB, StringComparison.Ordinal))
        {
            throw new ArgumentException("A direct conversation has two distinct users.", nameof(userB));
        }

        return _writer.EnqueueAsync(new GetOrCreateDirectAtOp(conversationId, userA, userB), null, cancellationToken);
    }

    public Task<Conversation> CreateGroupAsync(string creator, string? title, IReadOnlyList<string> members, CancellationToken cancellationToken = default)
    {
        Records.ValidateId(creator, nameof(creator));
        ArgumentNullException.ThrowIfNull(members);
        foreach (var member in members)
        {
            Records.ValidateId(member, nameof(members));
        }

        return _writer.EnqueueAsync(new CreateGroupOp(creator, title, members), null, cancellationToken);
    }

    public Task<Conversation?> CreateGroupAtAsync(ulong conversationId, string creator, string? title, IReadOnlyList<string> members, CancellationToken cancellationToken = default)
    {
        if (conversationId is < FirstDrawnGroupId or >= FirstDerivedConversationId)
        {
            throw new ArgumentOutOfRangeException(nameof(conversationId), conversationId, "A drawn group id is in [2^62, 2^63).");
        }

        Records.ValidateId(creator, nameof(creator));
        ArgumentNullException.ThrowIfNull(members);
        foreach (var member in members)
        {
            Records.ValidateId(member, nameof(members));
        }

        return _writer.EnqueueAsync(new CreateGroupAtOp(conversationId, creator, title, members), null, cancellationToken);
    }

    public Conversation? GetConversation(ulong conversationId)
    {
        var key = Records.ConversationKey(new ByteWriter(8), conversationId);
        var value = _engine.Get(Cf.Conversations, key.Span);
        return value is null ? null : Records.ReadConversation(key.Span, value);
    }

    public async Task SetMemberAsync(ulong conversationId, string userId, MemberRole role, CancellationToken cancellationToken = default)
    {
        Records.ValidateId(userId, nameof(userId));
        await _writer.EnqueueAsync(new SetMemberOp(conversationId, userId, role), null, cancellationToken).ConfigureAwait(false);
    }

    public Task<bool> RemoveMemberAsync(ulong conversationId, string userId, CancellationToken cancellationToken = default)
    {
        Records.ValidateId(userId, nameof(userId));
        return _writer.EnqueueAsync(new RemoveMemberOp(conversationId, userId), null, cancellationToken);
    }

    public Member? GetMember(ulong conversationId, string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var key = Records.MemberKey(new ByteWriter(), conversationId, userId);
        var value = _engine.Get(Cf.Members, key.Span);
        return value is null ? null : Records.ReadMember(key.Span, value);
    }

    public IReadOnlyList<Member> ListMembers(ulong conversationId)
    {
        var prefix = Records.ConversationPrefix(new ByteWriter(8), conversationId).ToArray();
        var result = new List<Member>();
        using var cursor = _engine.OpenCursor(Cf.Members, prefix, KeyRange.PrefixSuccessor(prefix));
        for (cursor.SeekToFirst(); cursor.Valid; cursor.Next())
        {
            result.Add(Records.ReadMember(cursor.Key, cursor.Value));
        }

        return result;
    }

    public IReadOnlyList<ulong> ListConversations(string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var prefix = Records.UserPrefix(new ByteWriter(), userId).ToArray();
        var result = new List<ulong>();
        using var cursor = _engine.OpenCursor(Cf.UserConversations, prefix, KeyRange.PrefixSuccessor(prefix));
        for (cursor.SeekToFirst(); cursor.Valid; cursor.Next())
        {
            result.Add(Records.TrailingU64(cursor.Key));
        }

        return result;
    }

    // ---- push jobs ----

    public Task<PushJob> EnqueuePushJobAsync(string userId, ulong conversationId, ulong seq, CancellationToken cancellationToken = default)
    {
        Records.ValidateId(userId, nameof(userId));
        return _writer.EnqueueAsync(new EnqueuePushJobOp(userId, conversationId, seq), null, cancellationToken);
    }

    public IReadOnlyList<PushJob> ListDuePushJobs(long nowMs, int limit)
    {
        CheckLimit(limit);
        var result = new List<PushJob>();
        using var cursor = _engine.OpenCursor(Cf.PushJobs, [], []);
        for (cursor.SeekToFirst(); cursor.Valid && result.Count < limit; cursor.Next())
        {
            var job = Records.ReadPushJob(cursor.Key, cursor.Value);
            if (job.NotBeforeMs <= nowMs)
            {
                result.Add(job);
            }
        }

        return result;
    }

    public async Task CompletePushJobAsync(ulong jobId, CancellationToken cancellationToken = default) =>
        await _writer.EnqueueAsync(new CompletePushJobOp(jobId), null, cancellationToken).ConfigureAwait(false);

    public Task<bool> ReschedulePushJobAsync(ulong jobId, long notBeforeMs, CancellationToken cancellationToken = default) =>
        _writer.EnqueueAsync(new ReschedulePushJobOp(jobId, notBeforeMs), null, cancellationToken);

    // ---- presence ----

    public async Task SetLastSeenAsync(string userId, long lastSeenMs, CancellationToken cancellationToken = default)
    {
        Records.ValidateId(userId, nameof(userId));
        await _writer.EnqueueAsync(new SetLastSeenOp(userId, lastSeenMs), null, cancellationToken).ConfigureAwait(false);
    }

    public long? GetLastSeen(string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var value = _engine.Get(Cf.Presence, Records.PresenceKey(new ByteWriter(), userId).Span);
        return value is { Length: 8 } ? (long)Records.TrailingU64(value) : null;
    }

    // ---- receipts ----

    public Task<ulong> StoreReceiptAsync(string userId, ulong conversationId, string readerUserId, bool read, ulong upToSeq, CancellationToken cancellationToken = default)
    {
        ValidateIds(userId, readerUserId);
        ArgumentOutOfRangeException.ThrowIfZero(conversationId);
        return _writer.EnqueueAsync(new StoreReceiptOp(userId, conversationId, readerUserId, read, upToSeq), null, cancellationToken);
    }

    public IReadOnlyList<StoredReceipt> ListReceipts(string userId, int limit)
    {
        Records.ValidateId(userId, nameof(userId));
        CheckLimit(limit);
        var prefix = Records.UserPrefix(new ByteWriter(), userId).ToArray();
        var receipts = new List<StoredReceipt>(Math.Min(limit, 64));
        using var cursor = _engine.OpenCursor(Cf.Receipts, prefix, KeyRange.PrefixSuccessor(prefix));
        for (cursor.SeekToFirst(); cursor.Valid && receipts.Count < limit; cursor.Next())
        {
            receipts.Add(Records.ReadReceipt(cursor.Key, cursor.Value));
        }

        return receipts;
    }

    // ---- prekeys ----

    public async Task UploadPrekeysAsync(string userId, string deviceId, PrekeyBundle? bundle, IReadOnlyList<OneTimePrekey> oneTimePrekeys, CancellationToken cancellationToken = default)
    {
        ValidateIds(userId, deviceId);
        ArgumentNullException.ThrowIfNull(oneTimePrekeys);
        await _writer.EnqueueAsync(new UploadPrekeysOp(userId, deviceId, bundle, oneTimePrekeys), null, cancellationToken).ConfigureAwait(false);
    }

    public Task<FetchedPrekeys?> TakePrekeysAsync(string userId, string deviceId, CancellationToken cancellationToken = default)
    {
        ValidateIds(userId, deviceId);
        return _writer.EnqueueAsync(new TakePrekeysOp(userId, deviceId), null, cancellationToken);
    }

    public int CountOneTimePrekeys(string userId, string deviceId, int upTo = int.MaxValue)
    {
        ValidateIds(userId, deviceId);
        var prefix = Records.OneTimePrefix(new ByteWriter(), userId, deviceId).ToArray();
        var count = 0;
        using var cursor = _engine.OpenCursor(Cf.Prekeys, prefix, KeyRange.PrefixSuccessor(prefix));
        for (cursor.SeekToFirst(); cursor.Valid && count < upTo; cursor.Next())
        {
            count++;
        }

        return count;
    }

    public PrekeyBundle? GetPrekeyBundle(string userId, string deviceId)
    {
        ValidateIds(userId, deviceId);
        var value = _engine.Get(Cf.Prekeys, Records.BundleKey(new ByteWriter(), userId, deviceId).Span);
        return value is null ? null : Records.ReadBundle(value);
    }

    public IReadOnlyList<string> ListKeyDevices(string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var prefix = Records.UserPrefix(new ByteWriter(), userId).ToArray();
        var devices = new List<string>();
        using var cursor = _engine.OpenCursor(Cf.Prekeys, prefix, KeyRange.PrefixSuccessor(prefix));
        cursor.SeekToFirst();
        while (cursor.Valid)
        {
            var (device, tag) = Records.ReadKeyDevice(cursor.Key);
            if (tag == Records.BundleTag)
            {
                devices.Add(device);
            }

            // Skip the device's one-time prekeys: they sort right after its bundle.
            cursor.Seek(KeyRange.PrefixSuccessor(Records.KeyDevicePrefix(new ByteWriter(), userId, device).Span));
        }

        return devices;
    }

    // ---- retention ----

    public async Task<long> SweepAsync(CancellationToken cancellationToken = default)
    {
        var now = _options.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        long removed = 0;
        if (!_options.Retention.KeepsForever)
        {
            var cutoff = now - ((long)_options.Retention.Days * 86_400_000L);
            removed += await SweepLogAsync(Cf.Messages, prefixLength: _ => 8, cutoff, isMessage: true, cancellationToken).ConfigureAwait(false);
            removed += await SweepLogAsync(Cf.Inboxes, prefixLength: key => Records.InboxPrefixLength(key), cutoff, isMessage: false, cancellationToken).ConfigureAwait(false);
        }

        removed += await SweepIdempotencyAsync(now - (long)_options.IdempotencyWindow.TotalMilliseconds, cancellationToken).ConfigureAwait(false);
        StorageMetrics.SweptRecords.Add(removed);
        return removed;
    }

    private delegate int PrefixLength(ReadOnlySpan<byte> key);

    /// <summary>Deletes, per log (a conversation, or a user's inbox), the entries older than the cutoff,
    /// but never the newest one: its key is where the seq counter is recovered from on open.
    /// Timestamps are non-decreasing in seq order (the writer assigns them), so the expired entries
    /// are a prefix of each log. Deletes go to the writer in chunks of <see cref="SweepChunk"/> keys; the
    /// cursor is closed while a chunk is written (an open iterator would pin every memtable flushed
    /// meanwhile) and the walk resumes at the first key not yet looked at, so a large backlog never sits
    /// in memory, neither as keys nor as pinned memtables.</summary>
    private async Task<long> SweepLogAsync(Cf cf, PrefixLength prefixLength, long cutoffMs, bool isMessage, CancellationToken cancellationToken)
    {
        long removed = 0;
        byte[]? resumeAt = null;
        do
        {
            var expired = new List<byte[]>();
            resumeAt = FindExpired(cf, prefixLength, cutoffMs, isMessage, resumeAt, expired, cancellationToken);
            if (expired.Count > 0)
            {
                removed += await _writer.EnqueueAsync(new SweepOp(cf, expired, [], cutoffMs), null, cancellationToken).ConfigureAwait(false);
            }
        }
        while (resumeAt is not null);

        return removed;
    }

    /// <summary>Collects up to <see cref="SweepChunk"/> expired keys from <paramref name="from"/> on (the
    /// start when null); returns where to go on, or null at the end. Starting inside a log is fine: an
    /// entry is only taken when a newer one of the same log follows it.</summary>
    private byte[]? FindExpired(Cf cf, PrefixLength prefixLength, long cutoffMs, bool isMessage, byte[]? from, List<byte[]> expired, CancellationToken cancellationToken)
    {
        using var cursor = _engine.OpenCursor(cf, [], []);
        if (from is null)
        {
            cursor.SeekToFirst();
        }
        else
        {
            cursor.Seek(from);
        }

        while (cursor.Valid)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var prefix = cursor.Key[..prefixLength(cursor.Key)].ToArray();
            while (cursor.Valid && cursor.Key.StartsWith(prefix))
            {
                var ts = isMessage ? Records.MessageTimestamp(cursor.Value) : Records.ReadInbox(cursor.Key, cursor.Value).TimestampMs;
                if (ts >= cutoffMs)
                {
                    break;
                }

                // Entry is expired; it may be deleted only if a newer entry exists.
                var key = cursor.Key.ToArray();
                cursor.Next();
                if (!cursor.Valid || !cursor.Key.StartsWith(prefix))
                {
                    break;
                }

                expired.Add(key);
                if (expired.Count == SweepChunk)
                {
                    return cursor.Key.ToArray(); // the next entry of this log, not looked at yet
                }
            }

            var next = KeyRange.PrefixSuccessor(prefix);
            if (next.Length == 0)
            {
                return null;
            }

            cursor.Seek(next);
        }

        return null;
    }

    private async Task<long> SweepIdempotencyAsync(long cutoffMs, CancellationToken cancellationToken)
    {
        long removed = 0;
        var expired = new List<byte[]>();
        using (var cursor = _engine.OpenCursor(Cf.Idempotency, [], []))
        {
            for (cursor.SeekToFirst(); cursor.Valid; cursor.Next())
            {
                if ((long)Records.TrailingU64(cursor.Value) < cutoffMs)
                {
                    expired.Add(cursor.Key.ToArray());
                }
            }
        }

        for (var i = 0; i < expired.Count; i += SweepChunk)
        {
            var chunk = expired.GetRange(i, Math.Min(SweepChunk, expired.Count - i));
            removed += await _writer.EnqueueAsync(new SweepOp(Cf.Idempotency, [], chunk, cutoffMs), null, cancellationToken).ConfigureAwait(false);
        }

        return removed;
    }

    private async Task SweepPeriodicallyAsync(CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(_options.SweepInterval, _options.Clock);
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                try
                {
                    await SweepAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (StorageException ex) when (ex.Failure != StorageFailure.Closed)
                {
                    // A failed sweep is retried at the next tick; appends are unaffected.
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (StorageException ex) when (ex.Failure == StorageFailure.Closed)
        {
            // Closed while sweeping: nothing left to sweep.
        }
    }

    // ---- lifetime ----

    /// <summary>Stops the sweeper, commits every queued write, then closes the engine.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stopping.Cancel();
        _writer.Dispose();
        try
        {
            _sweeper.GetAwaiter().GetResult();
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
        }

        _engine.Dispose();
        _stopping.Dispose();
        GC.SuppressFinalize(this);
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    internal static void Validate(StorageOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxBatchCount, 1, nameof(options.MaxBatchCount));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxBatchBytes, 1, nameof(options.MaxBatchBytes));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.QueueCapacity, 1, nameof(options.QueueCapacity));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.IdempotencyWindow, TimeSpan.Zero, nameof(options.IdempotencyWindow));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.IdempotencyCacheDevices, 1, nameof(options.IdempotencyCacheDevices));
        if (options.SweepInterval != Timeout.InfiniteTimeSpan && options.SweepInterval <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.SweepInterval, "SweepInterval must be positive or Timeout.InfiniteTimeSpan.");
        }
    }

    private static void CheckLimit(int limit)
    {
        if (limit is <= 0 or > MaxReadLimit)
        {
            throw new ArgumentOutOfRangeException(nameof(limit), limit, $"limit must be 1..{MaxReadLimit}.");
        }
    }

    private static void ValidateIds(string userId, string deviceId)
    {
        Records.ValidateId(userId, nameof(userId));
        Records.ValidateId(deviceId, nameof(deviceId));
    }
}
