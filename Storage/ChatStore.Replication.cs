using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

// IReplicaStore: a primary's committed batches out to a tap, a replica's apply of what a primary sent
// (docs/cluster.md, "Replication").
public abstract partial class ChatStore : IReplicaStore
{
    public void SetReplicationTap(IReplicationTap? tap) => _writer.SetTap(tap);

    public Task<int> ApplyReplicatedAsync(IReadOnlyList<ReplicaRecord> records, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(records);
        return EnqueueApply([.. records], "a replicated batch", cancellationToken);
    }

    /// <summary>Writes another node's records in one batch (<see cref="ReplicaApplyOp"/>), after checking every one.</summary>
    private Task<int> EnqueueApply(ReplicaRecord[] records, string what, CancellationToken cancellationToken)
    {
        if (records.Length > IRangeTransfer.MaxImportRecords)
        {
            throw new ArgumentException($"{what} carries at most {IRangeTransfer.MaxImportRecords} records, got {records.Length}", nameof(records));
        }

        List<string>? conflicts = null;
        foreach (var record in records)
        {
            if (ReplicaApplyOp.Validate(record) is { } key)
            {
                (conflicts ??= []).Add(key);
            }
        }

        return records.Length == 0
            ? Task.FromResult(0)
            : _writer.EnqueueAsync(new ReplicaApplyOp(records, conflicts), null, cancellationToken);
    }

    /// <summary>True for a record of a conversation's log (the messages family): the family a home's copies of other
    /// owners' messages share with the logs it replicates, so a replica's reset of a primary's ranges keeps it
    /// (docs/cluster.md, "Replication").</summary>
    public static bool IsLogRecord(byte family) => family == (byte)Cf.Messages;

    /// <summary>A user's copy mark for a conversation (a cursors-family row under the empty device id: see
    /// <see cref="Records.InboxCopyMarkKey"/>): the conversation it is for; false for any other record. The replication
    /// tap holds a local append's marks back with its entries (a mark without its entry makes a new home drop the entry
    /// when it is re-forwarded).</summary>
    public static bool TryGetCopyMarkConversation(in ReplicaRecord record, out ulong conversationId)
    {
        conversationId = 0;
        return (Cf)record.Family == Cf.Cursors && Records.TryReadInboxCopyMarkKey(record.Key.Span, out conversationId);
    }

    /// <summary>The message an inbox entry record points at, or a log record's own place: (conversation, seq); false for
    /// any other record or a delete. The replication tap sends a user's replicas the messages of the user's new entries
    /// (the entries alone would name messages a new home after a failover does not have).</summary>
    public static bool TryGetMessagePosition(in ReplicaRecord record, out bool isLog, out ulong conversationId, out ulong seq)
    {
        (isLog, conversationId, seq) = (false, 0, 0);
        if (record.Delete)
        {
            return false;
        }

        switch ((Cf)record.Family)
        {
            case Cf.Messages when record.Key.Length == 16:
                var key = record.Key.Span;
                (isLog, conversationId, seq) = (true, Records.TrailingU64(key[..8]), Records.TrailingU64(key));
                return true;
            case Cf.Inboxes when record.Value.Length >= 16:
                var value = new ByteReader(record.Value.Span);
                (conversationId, seq) = (value.U64(), value.U64());
                return true;
            default:
                return false;
        }
    }

    /// <summary>What a replicated record belongs to; false for a record of no conversation or user (or of a
    /// reserved '#' id: a node's forward queues, which are the node's own). Throws <see cref="ArgumentException"/>
    /// on a malformed key.</summary>
    public static bool TryGetOwner(in ReplicaRecord record, out ReplicaRecordOwner owner)
    {
        owner = default;
        if (RangeTransferLayout.OwnerOf((Cf)record.Family) is not { } layout)
        {
            return false;
        }

        var key = record.Key.Span;
        var value = record.Value.Span;
        try
        {
            switch (layout)
            {
                case RangeOwner.ConversationAtKeyStart when key.Length >= 8:
                    owner = new ReplicaRecordOwner(Records.TrailingU64(key[..8]), null);
                    return true;
                case RangeOwner.ConversationAtKeyEnd when key.Length >= 8:
                    owner = new ReplicaRecordOwner(Records.TrailingU64(key), null);
                    return true;
                case RangeOwner.ConversationAtValueStart when value.Length >= 8:
                    owner = new ReplicaRecordOwner(Records.TrailingU64(value[..8]), null);
                    return true;
                case RangeOwner.UserAtKeyStart or RangeOwner.UserAfterKeyHash:
                    var user = RangeTransferLayout.UserOf(layout, key);
                    if (user.Length == 0 || user[0] == '#')
                    {
                        return false;
                    }

                    owner = new ReplicaRecordOwner(0, user);
                    return true;
                default:
                    // A deleted record keyed by its value's conversation (a direct pair, an idempotency mark) carries
                    // no value: it goes with the batch's other records.
                    return false;
            }
        }
        catch (StorageException e)
        {
            throw new ArgumentException($"malformed family {record.Family} record: {e.Message}", e);
        }
    }
}

/// <summary>Writes another node's records in one batch: a primary's (see <see cref="IReplicaStore.ApplyReplicatedAsync"/>)
/// or a range import's; its writes are not captured for this node's own replicas (a new owner's import reaches its
/// replicas by their catch-up, docs/cluster.md).</summary>
internal sealed class ReplicaApplyOp(ReplicaRecord[] records, List<string>? conflictKeys) : WriteOp<int>
{
    public override IReadOnlyList<string>? ConflictKeys => conflictKeys;

    // Answered once durable here: waiting for this node's own replicas could close a cycle of primaries waiting
    // for each other's acks.
    public override bool WaitsForReplicas => false;

    public override int EstimatedBytes
    {
        get
        {
            var bytes = 64;
            foreach (var r in records)
            {
                bytes += r.Key.Length + r.Value.Length + 16;
            }

            return bytes;
        }
    }

    public static string? Validate(in ReplicaRecord record)
    {
        if (!record.Delete)
        {
            return ImportedRecord.Validate(new RangeRecord(record.Family, record.Key, record.Value));
        }

        if (RangeTransferLayout.OwnerOf((Cf)record.Family) is null || record.Key.Length is 0 or > 4 * Records.MaxIdBytes)
        {
            throw new ArgumentException($"replicated delete of family {record.Family} with a {record.Key.Length}-byte key cannot be applied");
        }

        return null;
    }

    public override void Apply(CommitWriter w)
    {
        var batch = w.CapturingBatch;
        batch.Paused = true;
        w.ApplyingForeign = true;
        try
        {
            foreach (var r in records)
            {
                if (r.Delete)
                {
                    batch.Delete((Cf)r.Family, r.Key.Span);
                }
                else if (ImportedRecord.Raise(w, r.Family, r.Key.Span, r.Value.Span))
                {
                    batch.Put((Cf)r.Family, r.Key.Span, r.Value.Span);
                }
            }
        }
        finally
        {
            batch.Paused = false;
            w.ApplyingForeign = false;
        }

        Result = records.Length;
    }
}
