namespace ChatBroker.Storage.Engine;

/// <summary>The column families of the store; docs/storage.md gives each one's key layout.</summary>
internal enum Cf
{
    Default = 0,
    Messages,
    Inboxes,
    Cursors,
    Conversations,
    Members,
    UserConversations,
    Directs,
    Idempotency,
    PushJobs,
    Presence,
    Prekeys,
    Receipts,
    /// <summary>The MQTT listener's session state and retained messages: opaque records the broker encodes (docs/storage.md).</summary>
    Mqtt,
}

/// <summary>
/// The ordered key-value engine under the store: RocksDB, or a sorted in-memory map for unit tests.
/// All sequencing, idempotency and fan-out logic sits above it, so both stores behave the same.
/// </summary>
internal interface IKvEngine : IDisposable
{
    IKvBatch CreateBatch();

    /// <summary>Applies the batch atomically. With <paramref name="sync"/> it is durable on return.</summary>
    void Commit(IKvBatch batch, bool sync);

    /// <summary>Makes every batch committed before this call durable (fsync of the WAL). May run
    /// concurrently with <see cref="Commit"/> on another thread.</summary>
    void SyncWal();

    byte[]? Get(Cf cf, ReadOnlySpan<byte> key);

    /// <summary>A cursor over keys in [lower, upper); an empty upper bound means unbounded.</summary>
    IKvCursor OpenCursor(Cf cf, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper);
}

internal interface IKvBatch : IDisposable
{
    int Count { get; }

    void Put(Cf cf, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value);

    void Delete(Cf cf, ReadOnlySpan<byte> key);

    void Clear();
}

/// <summary>Key and Value are valid until the next move.</summary>
internal interface IKvCursor : IDisposable
{
    bool Valid { get; }

    ReadOnlySpan<byte> Key { get; }

    ReadOnlySpan<byte> Value { get; }

    void SeekToFirst();

    void SeekToLast();

    void Seek(ReadOnlySpan<byte> key);

    void SeekForPrev(ReadOnlySpan<byte> key);

    void Next();

    void Prev();
}
