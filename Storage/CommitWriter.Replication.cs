namespace ChatBroker.Storage;

// Replication (docs/cluster.md, "Replication"): with a tap installed, every batch's writes in the families that
// replicate are captured while it is built (CapturingKvBatch), and once the batch is durable its ops are handed to
// the tap instead of completing: the tap completes them when the replicas have the records. Without a tap this is
// the single-node path (one field test per write).
internal sealed partial class CommitWriter
{
    private readonly CaptureSwitch _capture = new();
    private volatile IReplicationTap? _tap;

    internal void SetTap(IReplicationTap? tap)
    {
        _tap = tap;
        _capture.On = tap is not null;
    }

    // Batches written under a tap whose ops the tap has not completed yet, oldest first, with the counters from before
    // each: readers see none of their seqs (VisibleSeq), so no device reads a message before the replicas have it.
    private readonly LinkedList<Unreplicated> _unreplicated = new();
    private readonly Lock _unreplicatedLock = new();
    private volatile int _unreplicatedCount;

    /// <summary>Registered before the write makes the batch visible (as the syncer's unsynced batches are).</summary>
    private LinkedListNode<Unreplicated>? RegisterUnreplicated(Slot slot)
    {
        // Only what this node's own ops took: another node's records applied here are not shipped by this tap
        // (CommitWriter.ApplyingForeign).
        if (slot.OwnSeqBefore.Count == 0 && slot.OwnInboxBefore.Count == 0)
        {
            return null;
        }

        var entry = new Unreplicated(slot.OwnSeqBefore.Count == 0 ? null : new Dictionary<ulong, ulong>(slot.OwnSeqBefore),
            slot.OwnInboxBefore.Count == 0 ? null : new Dictionary<string, ulong>(slot.OwnInboxBefore, StringComparer.Ordinal));
        lock (_unreplicatedLock)
        {
            _unreplicatedCount++;
            return _unreplicated.AddLast(entry);
        }
    }

    private void Replicated(LinkedListNode<Unreplicated>? node)
    {
        if (node is null)
        {
            return;
        }

        lock (_unreplicatedLock)
        {
            if (node.List is not null)
            {
                _unreplicated.Remove(node);
                _unreplicatedCount--;
            }
        }
    }

    /// <summary>The highest seq of the conversation readers may see while batches wait for their replicas.</summary>
    private ulong ReplicatedSeq(ulong conversationId) => UnreplicatedBound(conversationId, static u => u.SeqBefore);

    private ulong ReplicatedInboxSeq(string userId) => UnreplicatedBound(userId, static u => u.InboxSeqBefore);

    private ulong UnreplicatedBound<TKey>(TKey key, Func<Unreplicated, Dictionary<TKey, ulong>?> before)
        where TKey : notnull
    {
        if (_unreplicatedCount == 0)
        {
            return ulong.MaxValue;
        }

        lock (_unreplicatedLock)
        {
            // Oldest first, and seqs grow with batches: the first hit is the lowest seq not replicated yet.
            foreach (var u in _unreplicated)
            {
                if (before(u) is { } map && map.TryGetValue(key, out var last))
                {
                    return last;
                }
            }
        }

        return ulong.MaxValue;
    }

    private sealed record Unreplicated(Dictionary<ulong, ulong>? SeqBefore, Dictionary<string, ulong>? InboxSeqBefore);

    private void HandToTap(IReplicationTap tap, Slot slot, LinkedListNode<Unreplicated>? unreplicated)
    {
        List<WriteOp>? waiting = null;
        List<WriteOp>? local = null;
        foreach (var op in slot.Ops)
        {
            if (op.WaitsForReplicas)
            {
                (waiting ??= []).Add(op);
            }
            else
            {
                (local ??= []).Add(op);
            }
        }

        if (local is not null)
        {
            WriteCompletion.OnPool(local, null);
        }

        var records = slot.Batch.TakeRecords();
        if (waiting is null && records.Count == 0)
        {
            Replicated(unreplicated);
            return;
        }

        var batch = new CommittedBatch(records, waiting is null ? [] : [.. waiting], () => Replicated(unreplicated));
        try
        {
            tap.OnCommitted(batch);
        }
        catch (Exception ex)
        {
            // The tap must not throw; if it does, the writes are durable here but not known to be replicated.
            batch.Complete(StorageException.From("Replication of a committed batch failed: ", ex, StorageFailure.Internal));
        }
    }
}

/// <summary>Whether the writer's batches capture their writes; shared by both slots' batches.</summary>
internal sealed class CaptureSwitch
{
    public volatile bool On;
}
