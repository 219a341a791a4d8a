using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

// The counters the builder role assigns while it builds (so seqs follow commit order), each recovered
// from the data when first needed. Used by ops in Apply, under _builderLock; each batch slot keeps the
// values from before its batch, to roll them back when the batch fails (CommitWriter.Slot.cs).
internal sealed partial class CommitWriter
{
    private readonly Dictionary<ulong, ulong> _lastSeq = [];
    private readonly Dictionary<string, ulong> _lastInboxSeq = new(StringComparer.Ordinal);
    private readonly ByteWriter _markKey = new();
    private readonly ByteWriter _markValue = new(8);
    private ulong _lastConversationId;
    private ulong _lastPushJobId;
    private long _lastTimestamp;

    // Per sending device, the highest client_msg_id in the idempotency index as far as this process knows
    // (read once from the index, then raised by every append). A client_msg_id above it cannot be a
    // duplicate, so the point lookup is skipped; devices that number their sends with a counter (the SDK
    // does) never need it. Only ever too high after a failed batch, which costs a lookup, never a wrong
    // answer. A cache: cleared when it holds StorageOptions.IdempotencyCacheDevices devices.
    private readonly Dictionary<(string User, string Device), ulong> _newestClientMsgId = [];

    /// <summary>Server time in ms, never going backwards within this process, so that message
    /// timestamps are non-decreasing in seq order (retention relies on it).</summary>
    internal long Now()
    {
        var now = _options.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        if (now < _lastTimestamp)
        {
            now = _lastTimestamp;
        }

        _lastTimestamp = now;
        return now;
    }

    internal ulong NextSeq(ulong conversationId)
    {
        if (!_lastSeq.TryGetValue(conversationId, out var last))
        {
            // Not cached means no batch in flight touched it: the engine is up to date for it.
            last = RecoverLastSeq(conversationId);
        }

        _current.SeqUndo.TryAdd(conversationId, last);
        _current.OwnSeqBefore.TryAdd(conversationId, last);
        _lastSeq[conversationId] = last + 1;
        return last + 1;
    }

    /// <summary>Takes <paramref name="seq"/> as the conversation's last seq if it is above the last one (a copy of a
    /// message sequenced by another node); false when this store already has it or a later one.</summary>
    internal bool TryTakeSeq(ulong conversationId, ulong seq)
    {
        if (!_lastSeq.TryGetValue(conversationId, out var last))
        {
            last = RecoverLastSeq(conversationId);
        }

        if (seq <= last)
        {
            _lastSeq[conversationId] = last;
            return false;
        }

        _current.SeqUndo.TryAdd(conversationId, last);
        if (!ApplyingForeign)
        {
            _current.OwnSeqBefore.TryAdd(conversationId, last);
        }

        _lastSeq[conversationId] = seq;
        return true;
    }

    /// <summary>
    /// The copy mark of <paramref name="userId"/> for <paramref name="conversationId"/>: the highest seq of that
    /// conversation whose inbox entry this store holds for the user, written by this node (a local append, a home's
    /// copy) or replicated and moved with the user's range (docs/cluster.md, "Replication"). A home keeps a forwarded
    /// copy for the user only above it. Batches being built or written are seen through their pending marks.
    /// </summary>
    internal ulong InboxCopyMark(string userId, ulong conversationId)
    {
        if (_current.PendingMarks.TryGetValue((userId, conversationId), out var mark)
            || _inFlight.PendingMarks.TryGetValue((userId, conversationId), out mark))
        {
            return mark;
        }

        var stored = _engine.Get(Cf.Cursors, Records.InboxCopyMarkKey(_markKey, userId, conversationId).Span);
        return stored is { Length: 8 } ? Records.TrailingU64(stored) : 0;
    }

    /// <summary>Raises the user's copy mark for the conversation to <paramref name="seq"/> in this batch (never lowers
    /// it); false when it was already there or above.</summary>
    internal bool RaiseInboxCopyMark(string userId, ulong conversationId, ulong seq)
    {
        if (InboxCopyMark(userId, conversationId) >= seq)
        {
            return false;
        }

        _current.PendingMarks[(userId, conversationId)] = seq;
        _current.Batch.Put(Cf.Cursors, Records.InboxCopyMarkKey(_markKey, userId, conversationId).Span, _markValue.Reset().U64(seq).Span);
        return true;
    }

    internal ulong NextInboxSeq(string userId)
    {
        if (!_lastInboxSeq.TryGetValue(userId, out var last))
        {
            last = RecoverLastInboxSeq(userId);
        }

        _current.InboxUndo.TryAdd(userId, last);
        _current.OwnInboxBefore.TryAdd(userId, last);
        _lastInboxSeq[userId] = last + 1;
        return last + 1;
    }

    /// <summary>True when no stored append of this device can have <paramref name="clientMsgId"/>: it is
    /// above the highest client_msg_id the device has in the idempotency index.</summary>
    internal bool IsAboveNewestClientMsgId(string userId, string deviceId, ulong clientMsgId)
    {
        if (!_newestClientMsgId.TryGetValue((userId, deviceId), out var newest))
        {
            if (_newestClientMsgId.Count >= _options.IdempotencyCacheDevices)
            {
                _newestClientMsgId.Clear();
            }

            var lower = Records.IdempotencyKey(new ByteWriter(), userId, deviceId, 0).Span[..^8].ToArray();
            using (var cursor = _engine.OpenCursor(Cf.Idempotency, lower, KeyRange.PrefixSuccessor(lower)))
            {
                cursor.SeekToLast();
                newest = cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
            }

            _newestClientMsgId[(userId, deviceId)] = newest;
        }

        return clientMsgId > newest;
    }

    internal void NoteClientMsgId(string userId, string deviceId, ulong clientMsgId)
    {
        ref var newest = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_newestClientMsgId, (userId, deviceId), out _);
        newest = Math.Max(newest, clientMsgId);
    }

    internal ulong NextConversationId() => ++_lastConversationId;

    internal ulong NextPushJobId() => ++_lastPushJobId;

    /// <summary>Idempotency keys written by batches not yet visible in the engine (building or in flight).</summary>
    internal bool TryGetPendingDuplicate(in IdempotencyKey key, out AppendResult result) =>
        _current.PendingIdempotency.TryGetValue(key, out result!) || _inFlight.PendingIdempotency.TryGetValue(key, out result!);

    internal void AddPendingIdempotency(in IdempotencyKey key, AppendResult result) => _current.PendingIdempotency[key] = result;

    // ---- recovery: every counter comes from the data itself ----

    private ulong RecoverLastSeq(ulong conversationId)
    {
        var lower = Records.ConversationPrefix(new ByteWriter(8), conversationId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Messages, lower, KeyRange.PrefixSuccessor(lower));
        cursor.SeekToLast();
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    private ulong RecoverLastInboxSeq(string userId)
    {
        var lower = Records.InboxPrefix(new ByteWriter(), userId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Inboxes, lower, KeyRange.PrefixSuccessor(lower));
        cursor.SeekToLast();
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    private ulong RecoverLastConversationId()
    {
        // Ids from ChatStore.FirstDrawnGroupId up are drawn (groups) or derived from their members (direct chats) in
        // cluster mode, not counted: the counter recovers from the counted ones only.
        var upper = Records.ConversationKey(new ByteWriter(8), ChatStore.FirstDrawnGroupId).ToArray();
        using var cursor = _engine.OpenCursor(Cf.Conversations, [], upper);
        cursor.SeekToLast();
        return cursor.Valid ? Records.TrailingU64(cursor.Key) : 0;
    }

    private ulong RecoverLastPushJobId()
    {
        // Completed jobs are deleted, so the newest key alone could go backwards; a high-water mark
        // written with every batch that enqueues jobs keeps ids unique across restarts.
        var hw = _engine.Get(Cf.Default, Records.PushJobHighWaterKey);
        var last = hw is { Length: 8 } ? Records.TrailingU64(hw) : 0;
        using var cursor = _engine.OpenCursor(Cf.PushJobs, [], []);
        cursor.SeekToLast();
        if (cursor.Valid)
        {
            last = Math.Max(last, Records.TrailingU64(cursor.Key));
        }

        return last;
    }
}
