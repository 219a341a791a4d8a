namespace ChatBroker.Storage;

// Counters raised by an imported range (ReplicaApplyOp): the data came from another node, so the cached counters
// of this one may be behind it. Builder role only, undone with the batch like the others (CommitWriter.Slot.cs).
internal sealed partial class CommitWriter
{
    /// <summary>
    /// True while <see cref="ReplicaApplyOp"/> writes another node's records (builder role only). Their seqs and inbox
    /// positions raise the counters but are not this node's to hide until its own replicas ack: that op's writes are not
    /// shipped to them, and a batch that also held an own write waiting for a dead replica hid a replicated tail for
    /// seconds — long enough for the node that took the range over to re-forward without it and then answer the
    /// client's retry as a duplicate, so the message never reached the members' inboxes (checker seed 342).
    /// </summary>
    internal bool ApplyingForeign { get; set; }

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
