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

    private static void HandToTap(IReplicationTap tap, Slot slot)
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
            return;
        }

        var batch = new CommittedBatch(records, waiting is null ? [] : [.. waiting]);
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
