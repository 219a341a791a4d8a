namespace ChatBroker.Storage;

/// <summary>
/// One write of a committed batch, as the store made it: a put (<see cref="Value"/>) or a delete of
/// <see cref="Key"/> in column family <see cref="Family"/> (the store's own numbering, as in <see cref="RangeRecord"/>).
/// Only the families of conversations and users are captured (those a range hand-over moves); node-local state
/// (push jobs, meta, counters' high-water marks) is not.
/// </summary>
public readonly record struct ReplicaRecord(byte Family, ReadOnlyMemory<byte> Key, ReadOnlyMemory<byte> Value, bool Delete);

/// <summary>What a replicated record belongs to: a conversation, or a user (never a reserved '#' id).</summary>
public readonly record struct ReplicaRecordOwner(ulong ConversationId, string? UserId)
{
    public bool IsUser => UserId is not null;
}

/// <summary>
/// A batch the store has committed (durable with the store's durability) whose ops wait for the replicas
/// (docs/cluster.md, "Replication"). The tap that got it calls <see cref="Complete"/> exactly once, when every
/// replica that must have it has it (or with the failure that makes the writes unacknowledgeable); only then do
/// the callers' tasks complete, so a SENT, a cursor move or a receipt is answered after the replicas have it.
/// Batches are handed to the tap in commit order.
/// </summary>
public sealed class CommittedBatch
{
    private readonly WriteOp[] _ops;
    private readonly Action? _onComplete;
    private int _completed;

    internal CommittedBatch(IReadOnlyList<ReplicaRecord> records, WriteOp[] ops, Action? onComplete = null)
    {
        Records = records;
        _ops = ops;
        _onComplete = onComplete;
    }

    /// <summary>The batch's writes in the families that replicate, in the order they were made.</summary>
    public IReadOnlyList<ReplicaRecord> Records { get; }

    /// <summary>Completes the batch's ops (on a pool thread), or fails them with <paramref name="failure"/>.
    /// A second call does nothing.</summary>
    public void Complete(Exception? failure = null)
    {
        if (Interlocked.Exchange(ref _completed, 1) != 0)
        {
            return;
        }

        // Readers see the batch from now on (replicated, or failed: a failed write stays in this store and is what a
        // retry finds), before its callers hear of it.
        _onComplete?.Invoke();
        if (_ops.Length > 0)
        {
            WriteCompletion.OnPool(_ops, failure);
        }
    }
}

/// <summary>Receives each committed batch of a primary (cluster mode with replicas). Called on the store's
/// committer thread, in commit order: it must not block (hand the records on and return).</summary>
public interface IReplicationTap
{
    void OnCommitted(CommittedBatch batch);
}

/// <summary>
/// The store's side of replication: a primary's store hands its committed batches to a tap before their callers
/// hear of them; a replica's store applies the records a primary sent.
/// </summary>
public interface IReplicaStore
{
    /// <summary>
    /// From now on every committed batch is handed to <paramref name="tap"/> instead of completing its ops (null:
    /// complete them at once again, the single-node path). Set it before the node serves writes: a batch being
    /// built when it is set may be handed over with only part of its records.
    /// </summary>
    void SetReplicationTap(IReplicationTap? tap);

    /// <summary>
    /// Applies a primary's records in one write batch, idempotently: puts and deletes as the primary made them,
    /// counters raised as by a range import (the log continues at the last seq + 1, an inbox at its last seq + 1,
    /// a retried SEND finds its original), cursors and receipts only forward. The write is not handed to this
    /// store's own tap (a replica does not replicate what it is given). Throws <see cref="ArgumentException"/> on
    /// a record it cannot place, before writing anything.
    /// </summary>
    Task<int> ApplyReplicatedAsync(IReadOnlyList<ReplicaRecord> records, CancellationToken cancellationToken = default);
}
