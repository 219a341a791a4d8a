namespace ChatBroker.Storage;

/// <summary>When a write is acknowledged.</summary>
public enum Durability
{
    /// <summary>The WAL is fsynced before the task completes: survives power loss (the default).</summary>
    Sync,

    /// <summary>Written to the OS before the task completes: survives a process kill, not a machine crash.</summary>
    Async,
}

/// <summary>How long messages are kept: forever (<see cref="Keep"/>) or N days.</summary>
public readonly record struct RetentionPolicy
{
    private RetentionPolicy(int days) => Days = days;

    /// <summary>0 means keep forever.</summary>
    public int Days { get; }

    public bool KeepsForever => Days == 0;

    public static RetentionPolicy Keep => default;

    public static RetentionPolicy ForDays(int days) =>
        days > 0 ? new RetentionPolicy(days) : throw new ArgumentOutOfRangeException(nameof(days), days, "Retention days must be positive.");

    public override string ToString() => KeepsForever ? "keep" : $"days = {Days}";
}

/// <summary>Settings of the message store (broker.toml [storage]).</summary>
public sealed record StorageOptions
{
    /// <summary>Directory of the RocksDB database; created if missing.</summary>
    public string Path { get; init; } = "data";

    public Durability Durability { get; init; } = Durability.Sync;

    /// <summary>With <see cref="Durability.Sync"/>: true fsyncs the WAL on its own thread while the next
    /// batch is written (memtable inserts and the fsync overlap; callers still complete only after their
    /// batch is fsynced, and reads never show a message before it is). False fsyncs inside each
    /// rocksdb_write, one batch after another. Not a setting: no user needs the slower way; only the
    /// benchmark (<c>storage-append --durability sync-inline</c>, whose figures docs/performance.md
    /// publishes) and the tests turn it off, hence internal.</summary>
    internal bool OverlapWalSync { get; init; } = true;

    /// <summary>When nothing else is queued, the builder thread writes a batch itself (fsyncing inside
    /// the write if no batch waits for the syncer) instead of handing it on. Tests turn it off to
    /// drive the committer and syncer threads deterministically.</summary>
    internal bool WriteInlineWhenIdle { get; init; } = true;

    /// <summary>With <see cref="Durability.Async"/>, a caller writes its own op (no thread hop) only when the
    /// writer has been idle at least this long; under a steady stream the builder's batches are cheaper.
    /// 100 µs by default: with many callers appending in a loop (the storage-append benchmark) it keeps the
    /// batches (218k/s, mean batch 59; 20 µs gave 174k/s, batch 12, and zero 124k/s). The broker sets zero:
    /// its callers are the few socket event threads, its closed loop kept its rate with zero, and at 10,000
    /// evenly spaced messages/s zero saved two thread wake-ups per message (docs/performance.md).</summary>
    public TimeSpan CallerWritesAfterIdle { get; init; } = TimeSpan.FromTicks(1_000); // 100 µs

    /// <summary>Brackets each batch of ops completed on a pool work item by the committer and the WAL syncer (see
    /// <see cref="IWriteCompletionScope"/>); null: none.</summary>
    public IWriteCompletionScope? CompletionScope { get; init; }

    /// <summary>RocksDB's LOG at INFO (flushes, memtable switches, WAL files, compactions, each with its time) instead of WARN.</summary>
    public bool RocksDbInfoLog { get; init; }

    /// <summary>Most requests committed in one WriteBatch.</summary>
    public int MaxBatchCount { get; init; } = 1024;

    /// <summary>Most payload bytes in one WriteBatch; a single larger request still commits alone.</summary>
    public int MaxBatchBytes { get; init; } = 4 << 20;

    /// <summary>Requests waiting for the commit writer. When full, callers wait (backpressure).</summary>
    public int QueueCapacity { get; init; } = 16384;

    public long BlockCacheBytes { get; init; } = 64L << 20;

    /// <summary>Memtable size per column family (RocksDB's write_buffer_size). With insert hints the size
    /// no longer slows inserts, and larger memtables mean fewer flushed files and less compaction
    /// (docs/performance.md: 16 vs 64 MiB).</summary>
    public long WriteBufferBytes { get; init; } = 64L << 20;

    /// <summary>How long a (sender, device, client_msg_id) is remembered for deduplication.</summary>
    /// <summary>Whether an append raises its local recipients' copy marks (<c>InboxCopyMarkKey</c>, docs/storage.md): on in
    /// cluster mode, where a home may later be sent a copy of a message it stored itself (a failover's re-forward, a
    /// failed home's queue sent to its replica). One more key per local inbox entry; off on a single node.</summary>
    public bool InboxCopyMarks { get; init; }

    public TimeSpan IdempotencyWindow { get; init; } = TimeSpan.FromDays(1);

    /// <summary>Sending devices whose highest client_msg_id the writer remembers, to skip the idempotency
    /// lookup for a client_msg_id above it (a cache; cleared when full).</summary>
    public int IdempotencyCacheDevices { get; init; } = 100_000;

    public RetentionPolicy Retention { get; init; } = RetentionPolicy.ForDays(30);

    /// <summary>How often the background sweeper applies retention and expires idempotency keys.
    /// <see cref="Timeout.InfiniteTimeSpan"/> disables the background sweep (call SweepAsync yourself).</summary>
    public TimeSpan SweepInterval { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>Clock for server timestamps, expiry and retention; tests inject a fake one.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;
}
