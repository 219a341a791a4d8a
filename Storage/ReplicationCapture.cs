using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>
/// The commit writer's batch: forwards every write to the engine's batch and, while <see cref="Capturing"/>, keeps a
/// copy of each write in the families that replicate (a primary with replicas). Without a tap nothing is copied:
/// the single-node path pays one field test per write.
/// </summary>
internal sealed class CapturingKvBatch(IKvBatch inner, CaptureSwitch capture) : IKvBatch
{
    private List<ReplicaRecord>? _records;

    public IKvBatch Inner { get; } = inner;

    /// <summary>On while a tap is installed (the writer's switch).</summary>
    public bool Capturing => capture.On;

    /// <summary>Set by an op whose writes must not be captured (a replica applying what it was sent).</summary>
    public bool Paused { get; set; }

    public int Count => Inner.Count;

    public void Put(Cf cf, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        Inner.Put(cf, key, value);
        if (Capturing && !Paused)
        {
            Capture(cf, key, value, delete: false);
        }
    }

    public void Delete(Cf cf, ReadOnlySpan<byte> key)
    {
        Inner.Delete(cf, key);
        if (Capturing && !Paused)
        {
            Capture(cf, key, default, delete: true);
        }
    }

    /// <summary>The writes captured since the last take (empty when none).</summary>
    public IReadOnlyList<ReplicaRecord> TakeRecords()
    {
        var records = _records;
        _records = null;
        return records ?? (IReadOnlyList<ReplicaRecord>)[];
    }

    public void Clear()
    {
        Inner.Clear();
        _records = null;
    }

    public void Dispose() => Inner.Dispose();

    private static bool IsReserved(RangeOwner owner, ReadOnlySpan<byte> key)
    {
        try
        {
            return RangeTransferLayout.UserOf(owner, key) is { Length: > 0 } user && user[0] == '#';
        }
        catch (StorageException)
        {
            return false;
        }
    }

    private void Capture(Cf cf, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value, bool delete)
    {
        if (RangeTransferLayout.OwnerOf(cf) is not { } owner)
        {
            return; // node-local state: push jobs, meta
        }

        if (owner is RangeOwner.UserAtKeyStart or RangeOwner.UserAfterKeyHash && IsReserved(owner, key))
        {
            // A node's forward queues ('#home/…' inboxes and their cursors) are its own: another node's queue
            // of the same name holds that node's entries.
            return;
        }

        (_records ??= []).Add(new ReplicaRecord((byte)cf, key.ToArray(), delete ? default : value.ToArray(), delete));
    }
}
