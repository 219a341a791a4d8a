namespace ChatBroker.Storage;

// Counters raised by an imported range (ReplicaApplyOp): the data came from another node, so the cached counters
// of this one may be behind it. Builder role only, undone with the batch like the others (CommitWriter.Slot.cs).
internal sealed partial class CommitWriter
{
    internal void RaiseInboxSeq(string userId, ulong inboxSeq)
    {
        if (!_lastInboxSeq.TryGetValue(userId, out var last))
        {
            last = RecoverLastInboxSeq(userId);
        }

        if (inboxSeq <= last)
        {
            _lastInboxSeq[userId] = last;
            return;
        }

        _current.InboxUndo.TryAdd(userId, last);
        _lastInboxSeq[userId] = inboxSeq;
    }

    /// <summary>A counted (group) conversation id from another node's counter: this node's never hands it out again.</summary>
    internal void RaiseConversationId(ulong conversationId)
    {
        // Drawn group ids and derived direct ids are never the counter's: a moved one must not raise it.
        if (conversationId < ChatStore.FirstDrawnGroupId && conversationId > _lastConversationId)
        {
            _lastConversationId = conversationId;
        }
    }
}
