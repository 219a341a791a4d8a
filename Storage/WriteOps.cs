using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

// Every op validates and reads first, and writes to the batch last, so that an op that throws
// has written nothing (see CommitWriter.Add).

internal sealed class AppendOp(AppendRequest request) : WriteOp<AppendResult>
{
    public override int EstimatedBytes =>
        96 + request.Body.Length + (request.InboxRecipients.Count * 48) + (request.PushRecipients.Count * 64);

    public override void Apply(CommitWriter w)
    {
        var r = request;
        var now = w.Now();
        var idempotency = new IdempotencyKey(r.SenderUserId, r.SenderDeviceId, r.ClientMsgId);
        if (r.ClientMsgId != 0)
        {
            if (w.TryGetPendingDuplicate(idempotency, out var pending))
            {
                Result = pending with { IsDuplicate = true, InboxSeqs = [] };
                return;
            }

            var existing = w.IsAboveNewestClientMsgId(r.SenderUserId, r.SenderDeviceId, r.ClientMsgId)
                ? null
                : w.Engine.Get(Cf.Idempotency, Records.IdempotencyKey(w.Key, r.SenderUserId, r.SenderDeviceId, r.ClientMsgId).Span);
            if (existing is not null)
            {
                var v = new ByteReader(existing);
                var (conversation, seq, ts) = (v.U64(), v.U64(), v.I64());
                if (now - ts < (long)w.Options.IdempotencyWindow.TotalMilliseconds)
                {
                    Result = new AppendResult(conversation, seq, ts, true, []);
                    StorageMetrics.Duplicates.Add(1);
                    return;
                }
            }
        }

        var messageSeq = w.NextSeq(r.ConversationId);
        Records.MessageKey(w.Key, r.ConversationId, messageSeq);
        Records.MessageValue(w.Value, now, r);
        w.Batch.Put(Cf.Messages, w.Key.Span, w.Value.Span);

        var inboxSeqs = r.InboxRecipients.Count == 0 ? [] : new ulong[r.InboxRecipients.Count];
        Records.InboxValue(w.Value, r.ConversationId, messageSeq, now);
        for (var i = 0; i < inboxSeqs.Length; i++)
        {
            var user = r.InboxRecipients[i];
            inboxSeqs[i] = w.NextInboxSeq(user);
            w.Batch.Put(Cf.Inboxes, Records.InboxKey(w.Key, user, inboxSeqs[i]).Span, w.Value.Span);
            if (w.Options.InboxCopyMarks && user[0] != '#')
            {
                w.RaiseInboxCopyMark(user, r.ConversationId, messageSeq); // a forwarded copy of it (a re-forward) is then known here
            }
        }

        for (var i = 0; i < r.PushRecipients.Count; i++)
        {
            var job = new PushJob(w.NextPushJobId(), r.PushRecipients[i], r.ConversationId, messageSeq, now, 0, now);
            w.Batch.Put(Cf.PushJobs, Records.PushJobKey(w.Key, job.Id).Span, Records.PushJobValue(w.Value, job).Span);
        }

        Result = new AppendResult(r.ConversationId, messageSeq, now, false, inboxSeqs);
        if (r.ClientMsgId != 0)
        {
            Records.IdempotencyKey(w.Key, r.SenderUserId, r.SenderDeviceId, r.ClientMsgId);
            w.Batch.Put(Cf.Idempotency, w.Key.Span, Records.IdempotencyValue(w.Value, r.ConversationId, messageSeq, now).Span);
            w.AddPendingIdempotency(idempotency, Result);
            w.NoteClientMsgId(r.SenderUserId, r.SenderDeviceId, r.ClientMsgId);
        }

        StorageMetrics.Appends.Add(1);
    }
}

internal sealed class AdvanceCursorOp(string userId, string deviceId, CursorStream stream, ulong position) : WriteOp<ulong>
{
    public override string? ConflictKey => $"cursor|{userId}|{deviceId}|{stream.ConversationId}";

    public override void Apply(CommitWriter w) => Result = Advance(w, userId, deviceId, stream, position).Current;

    /// <summary>Moves one cursor forward in the batch being built (never backwards).</summary>
    internal static CursorMove Advance(CommitWriter w, string userId, string deviceId, CursorStream stream, ulong position)
    {
        Records.CursorKey(w.Key, userId, deviceId, stream);
        var existing = w.Engine.Get(Cf.Cursors, w.Key.Span);
        var current = existing is { Length: 8 } ? Records.TrailingU64(existing) : 0;
        var move = new CursorMove(current, Math.Max(current, position));
        if (move.Current != current || existing is null)
        {
            w.Batch.Put(Cf.Cursors, w.Key.Span, w.Value.Reset().U64(move.Current).Span);
        }

        return move;
    }
}

/// <summary>Several cursors of one user in one batch, each as <see cref="AdvanceCursorOp"/> (the store checks
/// that no cursor appears twice: each reads the stored value, not another's write in this batch).</summary>
internal sealed class AdvanceCursorsOp(string userId, CursorAdvance[] advances) : WriteOp<CursorMove[]>
{
    public override IReadOnlyList<string>? ConflictKeys =>
        Array.ConvertAll(advances, a => $"cursor|{userId}|{a.DeviceId}|{a.Stream.ConversationId}");

    public override void Apply(CommitWriter w)
    {
        var moves = new CursorMove[advances.Length];
        for (var i = 0; i < advances.Length; i++)
        {
            var (deviceId, stream, position) = advances[i];
            moves[i] = AdvanceCursorOp.Advance(w, userId, deviceId, stream, position);
        }

        Result = moves;
    }
}

internal sealed class GetOrCreateDirectOp(string userA, string userB) : WriteOp<Conversation>
{
    // Two ids that render the same here only cost an extra commit, never a wrong answer.
    public override string? ConflictKey => string.CompareOrdinal(userA, userB) <= 0
        ? $"direct|{userA.Length}|{userA}|{userB}"
        : $"direct|{userB.Length}|{userB}|{userA}";

    public override void Apply(CommitWriter w)
    {
        var mapping = w.Engine.Get(Cf.Directs, Records.DirectKey(w.Key, userA, userB).Span);
        if (mapping is not null)
        {
            var id = Records.TrailingU64(mapping);
            var value = w.Engine.Get(Cf.Conversations, Records.ConversationKey(w.Key, id).Span)
                ?? throw new StorageException(StorageFailure.Corruption, $"Direct conversation {id} of {userA} and {userB} has no record.");
            Result = Records.ReadConversation(w.Key.Span, value);
            return;
        }

        var now = w.Now();
        var conversation = new Conversation(w.NextConversationId(), ConversationKind.Direct, now, userA, null);
        w.Batch.Put(Cf.Conversations, Records.ConversationKey(w.Key, conversation.Id).Span, Records.ConversationValue(w.Value, conversation).Span);
        w.Batch.Put(Cf.Directs, Records.DirectKey(w.Key, userA, userB).Span, w.Value.Reset().U64(conversation.Id).Span);
        ConversationOps.PutMember(w, conversation.Id, userA, MemberRole.Member, now);
        if (userA != userB)
        {
            ConversationOps.PutMember(w, conversation.Id, userB, MemberRole.Member, now);
        }

        Result = conversation;
    }
}

internal sealed class CreateGroupOp(string creator, string? title, IReadOnlyList<string> members) : WriteOp<Conversation>
{
    public override int EstimatedBytes => 64 + (members.Count * 64);

    public override void Apply(CommitWriter w)
    {
        var now = w.Now();
        var conversation = new Conversation(w.NextConversationId(), ConversationKind.Group, now, creator, title);
        w.Batch.Put(Cf.Conversations, Records.ConversationKey(w.Key, conversation.Id).Span, Records.ConversationValue(w.Value, conversation).Span);
        ConversationOps.PutMember(w, conversation.Id, creator, MemberRole.Admin, now);
        foreach (var member in members)
        {
            if (member != creator)
            {
                ConversationOps.PutMember(w, conversation.Id, member, MemberRole.Member, now);
            }
        }

        Result = conversation;
    }
}

/// <summary>A group at an id drawn at random (cluster mode); nothing is written when the id is taken.</summary>
internal sealed class CreateGroupAtOp(ulong conversationId, string creator, string? title, IReadOnlyList<string> members) : WriteOp<Conversation?>
{
    public override string? ConflictKey => $"conversation|{conversationId}";

    public override int EstimatedBytes => 64 + (members.Count * 64);

    public override void Apply(CommitWriter w)
    {
        if (w.Engine.Get(Cf.Conversations, Records.ConversationKey(w.Key, conversationId).Span) is not null)
        {
            Result = null;
            return;
        }

        var now = w.Now();
        var conversation = new Conversation(conversationId, ConversationKind.Group, now, creator, title);
        w.Batch.Put(Cf.Conversations, Records.ConversationKey(w.Key, conversationId).Span, Records.ConversationValue(w.Value, conversation).Span);
        ConversationOps.PutMember(w, conversationId, creator, MemberRole.Admin, now);
        foreach (var member in members)
        {
            if (member != creator)
            {
                ConversationOps.PutMember(w, conversationId, member, MemberRole.Member, now);
            }
        }

        Result = conversation;
    }
}

internal sealed class SetMemberOp(ulong conversationId, string userId, MemberRole role) : WriteOp<bool>
{
    public override string? ConflictKey => $"member|{conversationId}|{userId}";

    public override void Apply(CommitWriter w)
    {
        if (w.Engine.Get(Cf.Conversations, Records.ConversationKey(w.Key, conversationId).Span) is null)
        {
            throw new StorageException(StorageFailure.NotFound, $"Conversation {conversationId} does not exist.");
        }

        var existing = w.Engine.Get(Cf.Members, Records.MemberKey(w.Key, conversationId, userId).Span);
        var joined = existing is null ? w.Now() : Records.ReadMember(w.Key.Span, existing).JoinedAtMs;
        ConversationOps.PutMember(w, conversationId, userId, role, joined);
        Result = true;
    }
}

internal sealed class RemoveMemberOp(ulong conversationId, string userId) : WriteOp<bool>
{
    public override string? ConflictKey => $"member|{conversationId}|{userId}";

    public override void Apply(CommitWriter w)
    {
        Result = w.Engine.Get(Cf.Members, Records.MemberKey(w.Key, conversationId, userId).Span) is not null;
        if (Result)
        {
            w.Batch.Delete(Cf.Members, w.Key.Span);
            w.Batch.Delete(Cf.UserConversations, Records.UserConversationKey(w.Key, userId, conversationId).Span);
        }
    }
}

internal static class ConversationOps
{
    public static void PutMember(CommitWriter w, ulong conversationId, string userId, MemberRole role, long joinedAt)
    {
        w.Batch.Put(Cf.Members, Records.MemberKey(w.Key, conversationId, userId).Span, Records.MemberValue(w.Value, role, joinedAt).Span);
        w.Batch.Put(Cf.UserConversations, Records.UserConversationKey(w.Key, userId, conversationId).Span, []);
    }
}

internal sealed class EnqueuePushJobOp(string userId, ulong conversationId, ulong seq) : WriteOp<PushJob>
{
    public override void Apply(CommitWriter w)
    {
        var now = w.Now();
        Result = new PushJob(w.NextPushJobId(), userId, conversationId, seq, now, 0, now);
        w.Batch.Put(Cf.PushJobs, Records.PushJobKey(w.Key, Result.Id).Span, Records.PushJobValue(w.Value, Result).Span);
    }
}

internal sealed class CompletePushJobOp(ulong jobId) : WriteOp<bool>
{
    public override string? ConflictKey => $"push|{jobId}";

    public override void Apply(CommitWriter w)
    {
        w.Batch.Delete(Cf.PushJobs, Records.PushJobKey(w.Key, jobId).Span);
        Result = true;
    }
}

internal sealed class ReschedulePushJobOp(ulong jobId, long notBeforeMs) : WriteOp<bool>
{
    public override string? ConflictKey => $"push|{jobId}";

    public override void Apply(CommitWriter w)
    {
        var existing = w.Engine.Get(Cf.PushJobs, Records.PushJobKey(w.Key, jobId).Span);
        Result = existing is not null;
        if (existing is not null)
        {
            var job = Records.ReadPushJob(w.Key.Span, existing);
            job = job with { Attempts = job.Attempts + 1, NotBeforeMs = notBeforeMs };
            w.Batch.Put(Cf.PushJobs, w.Key.Span, Records.PushJobValue(w.Value, job).Span);
        }
    }
}

internal sealed class SetLastSeenOp(string userId, long lastSeenMs) : WriteOp<bool>
{
    public override void Apply(CommitWriter w)
    {
        w.Batch.Put(Cf.Presence, Records.PresenceKey(w.Key, userId).Span, w.Value.Reset().I64(lastSeenMs).Span);
        Result = true;
    }
}

internal sealed class UploadPrekeysOp(string userId, string deviceId, PrekeyBundle? bundle, IReadOnlyList<OneTimePrekey> oneTime) : WriteOp<bool>
{
    public override string? ConflictKey => $"prekeys|{userId}|{deviceId}";

    public override int EstimatedBytes => 256 + (oneTime.Count * 64);

    public override void Apply(CommitWriter w)
    {
        if (bundle is not null)
        {
            w.Batch.Put(Cf.Prekeys, Records.BundleKey(w.Key, userId, deviceId).Span, Records.BundleValue(w.Value, bundle).Span);
        }

        foreach (var key in oneTime)
        {
            w.Batch.Put(Cf.Prekeys, Records.OneTimeKey(w.Key, userId, deviceId, key.Id).Span, key.PublicKey.Span);
        }

        Result = true;
    }
}

/// <summary>Consumes the lowest-numbered one-time prekey. Atomic because only the writer thread runs
/// it, and because <see cref="ConflictKey"/> commits any earlier take of the same device first.</summary>
internal sealed class TakePrekeysOp(string userId, string deviceId) : WriteOp<FetchedPrekeys?>
{
    public override string? ConflictKey => $"prekeys|{userId}|{deviceId}";

    public override void Apply(CommitWriter w)
    {
        var bundleValue = w.Engine.Get(Cf.Prekeys, Records.BundleKey(w.Key, userId, deviceId).Span);
        if (bundleValue is null)
        {
            Result = null;
            return;
        }

        var prefix = Records.OneTimePrefix(w.Key, userId, deviceId).ToArray();
        OneTimePrekey? taken = null;
        using (var cursor = w.Engine.OpenCursor(Cf.Prekeys, prefix, KeyRange.PrefixSuccessor(prefix)))
        {
            cursor.SeekToFirst();
            if (cursor.Valid)
            {
                taken = new OneTimePrekey(Records.TrailingU32(cursor.Key), cursor.Value.ToArray());
                w.Batch.Delete(Cf.Prekeys, cursor.Key);
            }
        }

        Result = new FetchedPrekeys(Records.ReadBundle(bundleValue), taken);
    }
}

/// <summary>Removals decided by the sweeper: expired log entries (messages, inbox entries), deleted
/// one by one, and expired idempotency keys, re-checked here because an append may have reused an
/// expired key since the sweeper looked. (Not DeleteRange: with memtable insert hints, RocksDB 7.8
/// inserts a range tombstone with the hint of the point-key skiplist and fails an assertion.)</summary>
internal sealed class SweepOp(Cf cf, List<byte[]> expiredLogKeys, List<byte[]> expiredIdempotencyKeys, long cutoffMs) : WriteOp<long>
{
    public override int EstimatedBytes => 64 * (expiredLogKeys.Count + expiredIdempotencyKeys.Count);

    public override void Apply(CommitWriter w)
    {
        foreach (var key in expiredLogKeys)
        {
            w.Batch.Delete(cf, key);
        }

        long removed = expiredLogKeys.Count;
        foreach (var key in expiredIdempotencyKeys)
        {
            var (user, device, clientMsgId) = Records.ReadIdempotencyKey(key);
            if (w.TryGetPendingDuplicate(new IdempotencyKey(user, device, clientMsgId), out _))
            {
                continue;
            }

            var value = w.Engine.Get(Cf.Idempotency, key);
            if (value is not null && Records.TrailingU64(value) is var ts && (long)ts < cutoffMs)
            {
                w.Batch.Delete(Cf.Idempotency, key);
                removed++;
            }
        }

        Result = removed;
    }
}

/// <summary>A direct conversation at an id derived from its members (cluster mode): created if the id is free;
/// otherwise the record that holds it, which the caller compares (a hash collision names another pair).</summary>
internal sealed class GetOrCreateDirectAtOp(ulong conversationId, string userA, string userB) : WriteOp<Conversation>
{
    public override string? ConflictKey => $"conversation|{conversationId}";

    public override void Apply(CommitWriter w)
    {
        var existing = w.Engine.Get(Cf.Conversations, Records.ConversationKey(w.Key, conversationId).Span);
        if (existing is not null)
        {
            Result = Records.ReadConversation(w.Key.Span, existing);
            return;
        }

        var now = w.Now();
        var conversation = new Conversation(conversationId, ConversationKind.Direct, now, userA, null);
        w.Batch.Put(Cf.Conversations, Records.ConversationKey(w.Key, conversationId).Span, Records.ConversationValue(w.Value, conversation).Span);
        ConversationOps.PutMember(w, conversationId, userA, MemberRole.Member, now);
        ConversationOps.PutMember(w, conversationId, userB, MemberRole.Member, now);
        Result = conversation;
    }
}

/// <summary>
/// A copy of a message another node sequenced, with the inbox entries of its recipients here, in one batch. Each
/// recipient gets an entry only if the seq is above its copy mark for the conversation (<see
/// cref="CommitWriter.InboxCopyMark"/>: replicated with the user, so a new home after a failover knows what the old one
/// stored), so a resent or re-forwarded copy is a no-op; the message goes into the log with its idempotency mark (a
/// retry of the SEND at a node that later sequences the conversation must find it). Duplicate when nothing was new.
/// The result's inbox seqs follow <c>inboxRecipients</c>, 0 for a recipient that had it.
/// </summary>
internal sealed class StoreCopyOp(StoredMessage message, IReadOnlyList<string> inboxRecipients, IReadOnlyList<string> pushRecipients, bool fromOwner = false) : WriteOp<AppendResult>
{
    public override int EstimatedBytes => 96 + message.Body.Length + (inboxRecipients.Count * 48) + (pushRecipients.Count * 64);

    public override void Apply(CommitWriter w)
    {
        var m = message;
        var fresh = 0;
        var freshUsers = 0; // entries of users (not of forward queues, which do not replicate)
        for (var i = 0; i < inboxRecipients.Count; i++)
        {
            if (IsQueue(inboxRecipients[i]))
            {
                fresh++;
            }
            else if (w.InboxCopyMark(inboxRecipients[i], m.ConversationId) < m.Seq)
            {
                fresh++;
                freshUsers++;
            }
        }

        // The log's counter too (the copy is a message of the conversation here): a replica of the conversation's
        // owner may already hold this seq in its log.
        var logNew = w.TryTakeSeq(m.ConversationId, m.Seq);
        if (fresh == 0 && !logNew && !fromOwner)
        {
            // Nothing new, and only the owner's copy may replace the record: no read, no write.
            Result = new AppendResult(m.ConversationId, m.Seq, m.TimestampMs, true, []);
            return;
        }

        var request = new AppendRequest
        {
            ConversationId = m.ConversationId,
            SenderUserId = m.SenderUserId,
            SenderDeviceId = m.SenderDeviceId,
            ClientMsgId = m.ClientMsgId,
            ContentType = m.ContentType,
            MediaRef = m.MediaRef,
            Body = m.Body,
        };
        // A log record this store holds for the seq already is normally the same bytes (it replicates the conversation,
        // or had the copy before). It differs when it came from an owner that failed before its write was acknowledged
        // (a user's replica gets the log record with the user's entry, that owner being the user's home too) and the new
        // owner gave the seq to another message. A copy the caller checked comes from the node serving the conversation
        // now (fromOwner) then replaces it (checker seed 324: the home kept the failed owner's version and shipped it on
        // with its own writes; a node applying it put it over the new owner's log: one acknowledged message lost,
        // another stored twice). Any other copy never replaces a log record: it may be the stale one (checker seed 122:
        // a partitioned old owner's forward queue, sent after the heal). (The log's last seq does not say: a home's log
        // of a conversation it does not own holds only the seqs copied to it.)
        Records.MessageKey(w.Key, m.ConversationId, m.Seq);
        var own = logNew ? null : w.Engine.Get(Cf.Messages, w.Key.Span);
        var differs = false;
        if (own is null || fromOwner)
        {
            // Encoded only to be written or compared: a copy of a record this store has, from anyone else, writes none.
            Records.MessageValue(w.Value, m.TimestampMs, request);
            differs = own is not null && !w.Value.Span.SequenceEqual(own);
        }
        if (fresh == 0 && !logNew && !differs)
        {
            Result = new AppendResult(m.ConversationId, m.Seq, m.TimestampMs, true, []);
            return;
        }

        if (own is null || differs)
        {
            if (differs)
            {
                ForgetReplacedMark(w, m, own!);
            }

            w.Batch.Put(Cf.Messages, w.Key.Span, w.Value.Span);
            if (m.ClientMsgId != 0)
            {
                PutIdempotencyMark(w, m);
            }

            if (fresh == 0)
            {
                // Only the record was replaced: no user gets a new entry, nobody a push.
                Result = new AppendResult(m.ConversationId, m.Seq, m.TimestampMs, true, []);
                return;
            }
        }
        else if (freshUsers > 0)
        {
            // The entries below reach the users' replicas with the batch's log record of their message (the replication
            // tap adds it for each target that gets an entry); a replica of a user that does not replicate the
            // conversation has no other way to get it, and as the user's next home could not deliver the entry. So the
            // batch carries the record again, the same bytes (checker seed 205: a new device at a user's new home read
            // the inbox only from the failover on). Not for forward-queue entries alone (a re-forward at the owner):
            // queues stay on their node, and the conversation's replicas have the record already.
            w.Batch.Put(Cf.Messages, w.Key.Span, own);
        }

        var inboxSeqs = inboxRecipients.Count == 0 ? [] : new ulong[inboxRecipients.Count];
        Records.InboxValue(w.Value, m.ConversationId, m.Seq, m.TimestampMs);
        for (var i = 0; i < inboxSeqs.Length; i++)
        {
            if (!IsQueue(inboxRecipients[i]) && !w.RaiseInboxCopyMark(inboxRecipients[i], m.ConversationId, m.Seq))
            {
                continue; // this user has it (a recipient listed twice, or a mark at or above the seq)
            }

            inboxSeqs[i] = w.NextInboxSeq(inboxRecipients[i]);
            w.Batch.Put(Cf.Inboxes, Records.InboxKey(w.Key, inboxRecipients[i], inboxSeqs[i]).Span, w.Value.Span);
        }

        var now = pushRecipients.Count == 0 ? 0 : w.Now();
        for (var i = 0; i < pushRecipients.Count; i++)
        {
            var job = new PushJob(w.NextPushJobId(), pushRecipients[i], m.ConversationId, m.Seq, now, 0, now);
            w.Batch.Put(Cf.PushJobs, Records.PushJobKey(w.Key, job.Id).Span, Records.PushJobValue(w.Value, job).Span);
        }

        Result = new AppendResult(m.ConversationId, m.Seq, m.TimestampMs, false, inboxSeqs);
    }

    /// <summary>After <see cref="Apply"/>: its result.</summary>
    internal AppendResult Outcome => Result;

    /// <summary>A reserved id ('#…', a node's forward queue): it gets the entry every time (a re-forward into it).</summary>
    private static bool IsQueue(string recipient) => recipient[0] == '#';

    /// <summary>The replaced record's idempotency mark, if it names this (conversation, seq): that message does not have it
    /// (were this node to serve the conversation later, a retry of it must not be answered with another message's seq).</summary>
    private static void ForgetReplacedMark(CommitWriter w, StoredMessage m, byte[] replaced)
    {
        var old = Records.ReadMessage(Records.MessageKey(new ByteWriter(16), m.ConversationId, m.Seq).Span, replaced);
        if (old.ClientMsgId == 0)
        {
            return;
        }

        var markKey = Records.IdempotencyKey(new ByteWriter(), old.SenderUserId, old.SenderDeviceId, old.ClientMsgId);
        if (w.Engine.Get(Cf.Idempotency, markKey.Span) is { Length: >= 16 } mark
            && Records.TrailingU64(mark.AsSpan(0, 8)) == m.ConversationId && Records.TrailingU64(mark.AsSpan(8, 8)) == m.Seq)
        {
            w.Batch.Delete(Cf.Idempotency, markKey.Span);
        }
    }

    /// <summary>The SEND's idempotency mark, unless this store has one for it already (the original's, or a pending one).</summary>
    private static void PutIdempotencyMark(CommitWriter w, StoredMessage m)
    {
        var key = new IdempotencyKey(m.SenderUserId, m.SenderDeviceId, m.ClientMsgId);
        if (w.TryGetPendingDuplicate(key, out _))
        {
            return;
        }

        var markKey = Records.IdempotencyKey(new ByteWriter(), m.SenderUserId, m.SenderDeviceId, m.ClientMsgId);
        if (!w.IsAboveNewestClientMsgId(m.SenderUserId, m.SenderDeviceId, m.ClientMsgId) && w.Engine.Get(Cf.Idempotency, markKey.Span) is not null)
        {
            return;
        }

        w.Batch.Put(Cf.Idempotency, markKey.Span, Records.IdempotencyValue(new ByteWriter(32), m.ConversationId, m.Seq, m.TimestampMs).Span);
        w.AddPendingIdempotency(key, new AppendResult(m.ConversationId, m.Seq, m.TimestampMs, false, []));
        w.NoteClientMsgId(m.SenderUserId, m.SenderDeviceId, m.ClientMsgId);
    }
}

/// <summary>Copies in one batch, in order (<see cref="IChatStore.StoreCopiesAsync"/>); the result is each one's.</summary>
internal sealed class StoreCopiesOp(StoreCopyOp[] copies) : WriteOp<AppendResult[]>
{
    public override int EstimatedBytes
    {
        get
        {
            var bytes = 0;
            foreach (var copy in copies)
            {
                bytes += copy.EstimatedBytes;
            }

            return bytes;
        }
    }

    public override void Apply(CommitWriter w)
    {
        var results = new AppendResult[copies.Length];
        for (var i = 0; i < copies.Length; i++)
        {
            copies[i].Apply(w);
            results[i] = copies[i].Outcome;
        }

        Result = results;
    }
}

/// <summary>Moves a receipt kept for a user forward; the result is the position before.</summary>
internal sealed class StoreReceiptOp(string userId, ulong conversationId, string readerUserId, bool read, ulong upToSeq) : WriteOp<ulong>
{
    // Two receipts of one key in one batch: the second must see the first (forward only).
    public override string? ConflictKey => $"receipt|{userId}|{conversationId}|{readerUserId}";

    public override void Apply(CommitWriter w)
    {
        var key = Records.ReceiptKey(w.Key, userId, conversationId, readerUserId, read);
        var existing = w.Engine.Get(Cf.Receipts, key.Span);
        Result = existing is { Length: 8 } ? new ByteReader(existing).U64() : 0;
        if (upToSeq > Result)
        {
            w.Batch.Put(Cf.Receipts, key.Span, w.Value.Reset().U64(upToSeq).Span);
        }
    }
}
