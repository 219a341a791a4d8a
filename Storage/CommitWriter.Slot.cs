using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

internal sealed partial class CommitWriter
{
    /// <summary>One batch being built or committed, with what is needed to undo its counters.</summary>
    private sealed class Slot(CapturingKvBatch batch)
    {
        public CapturingKvBatch Batch { get; } = batch;

        public List<WriteOp> Ops { get; } = [];

        public HashSet<string> Touched { get; } = new(StringComparer.Ordinal);

        public Dictionary<ulong, ulong> SeqUndo { get; } = [];

        public Dictionary<string, ulong> InboxUndo { get; } = new(StringComparer.Ordinal);

        /// <summary>Like <see cref="SeqUndo"/>, for the seqs this node's own ops took (not another node's records it
        /// applied): what readers must not see until the batch's replicas have it (CommitWriter.Replication.cs).</summary>
        public Dictionary<ulong, ulong> OwnSeqBefore { get; } = [];

        /// <summary>Like <see cref="InboxUndo"/>, for this node's own ops (see <see cref="OwnSeqBefore"/>).</summary>
        public Dictionary<string, ulong> OwnInboxBefore { get; } = new(StringComparer.Ordinal);

        /// <summary>Copy marks this batch raised (<see cref="InboxCopyMark"/>): pending until the engine has them.</summary>
        public Dictionary<(string User, ulong Conversation), ulong> PendingMarks { get; } = [];

        public Dictionary<IdempotencyKey, AppendResult> PendingIdempotency { get; } = [];

        public ulong ConversationIdBefore { get; private set; }

        public ulong PushJobIdBefore { get; private set; }

        public long Bytes { get; set; }

        public void Begin(ulong conversationId, ulong pushJobId)
        {
            ConversationIdBefore = conversationId;
            PushJobIdBefore = pushJobId;
        }

        public void Rollback(CommitWriter w)
        {
            foreach (var (conversation, last) in SeqUndo)
            {
                w._lastSeq[conversation] = last;
            }

            foreach (var (user, last) in InboxUndo)
            {
                w._lastInboxSeq[user] = last;
            }

            w._lastConversationId = ConversationIdBefore;
            w._lastPushJobId = PushJobIdBefore;
        }

        public void Reset()
        {
            Batch.Clear();
            Ops.Clear();
            Touched.Clear();
            SeqUndo.Clear();
            InboxUndo.Clear();
            OwnSeqBefore.Clear();
            OwnInboxBefore.Clear();
            PendingMarks.Clear();
            PendingIdempotency.Clear();
            Bytes = 0;
        }
    }
}
