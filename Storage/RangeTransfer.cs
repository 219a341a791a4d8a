namespace ChatBroker.Storage;

/// <summary>
/// Which conversations and users a range export takes (cluster mode: those whose owner or home moves from this
/// node to one target under the next ring). Called once per record, from the exporting thread.
/// </summary>
public interface IRangeSelector
{
    bool TakesConversation(ulong conversationId);

    bool TakesUser(string userId);
}

/// <summary>
/// One stored record of a moving range, as the store holds it: <see cref="Family"/> names the column family
/// (the store's own numbering, the same on every node of one build), key and value are the bytes of
/// docs/storage.md. Opaque to everything but the store.
/// </summary>
public readonly record struct RangeRecord(byte Family, ReadOnlyMemory<byte> Key, ReadOnlyMemory<byte> Value);

/// <summary>Where an export stopped: the family (index in the store's transfer order) and the key to go on from (inclusive).
/// <see cref="Start"/> begins at the first family.</summary>
public readonly record struct RangePosition(int FamilyIndex, ReadOnlyMemory<byte> FromKey)
{
    public static RangePosition Start => default;
}

/// <summary>A bounded page of a range export; <see cref="Done"/> when nothing follows <see cref="Next"/>.</summary>
public sealed record RangeExportPage(IReadOnlyList<RangeRecord> Records, RangePosition Next, bool Done, long Bytes);

/// <summary>
/// Range hand-over (docs/cluster.md, "Ring changes"): export the records of the conversations and users a
/// selector takes, generically by key layout (each column family says where its owner, a conversation or a user,
/// sits in its key or value), in bounded pages; import them on another node idempotently.
/// </summary>
public interface IRangeTransfer
{
    /// <summary>Most records one import may carry.</summary>
    const int MaxImportRecords = 10_000;

    /// <summary>
    /// Up to <paramref name="maxRecords"/> records (and about <paramref name="maxBytes"/>) after
    /// <paramref name="from"/> whose conversation or user <paramref name="selector"/> takes, in family order then
    /// key order. An inbox entry brings the stored copy of the message it refers to along with it. Reserved ids
    /// (starting with '#': a node's forward queues) and node-local records (push jobs, meta) never move.
    /// Reads what is committed; the caller stops writes to the range first (the hand-over's freeze).
    /// </summary>
    RangeExportPage ExportRange(IRangeSelector selector, RangePosition from, int maxRecords, int maxBytes);

    /// <summary>
    /// Writes exported records in one batch. Idempotent: a record imported twice is written twice with the same
    /// bytes; cursors only move forward; the counters (a conversation's last seq, an inbox's last seq, the group id
    /// counter, a device's newest client_msg_id) are raised to cover what was imported, so the next SEND continues
    /// at last seq + 1 and a retried SEND finds its original. Throws <see cref="ArgumentException"/> on a record
    /// it cannot place (unknown family, malformed key), before writing anything.
    /// </summary>
    Task<int> ImportRangeAsync(IReadOnlyList<RangeRecord> records, CancellationToken cancellationToken = default);
}
