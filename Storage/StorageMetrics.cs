using System.Diagnostics.Metrics;

namespace ChatBroker.Storage;

/// <summary>Instruments of the "ChatBroker.Storage" meter (System.Diagnostics.Metrics).</summary>
internal static class StorageMetrics
{
    public const string MeterName = "ChatBroker.Storage";

    public static readonly Meter Meter = new(MeterName);

    public static readonly Counter<long> Commits = Meter.CreateCounter<long>("chatbroker.storage.commits", description: "WriteBatches committed.");

    public static readonly Counter<long> CommitFailures = Meter.CreateCounter<long>("chatbroker.storage.commit_failures", description: "WriteBatches that failed; every request in them failed.");

    public static readonly Counter<long> Appends = Meter.CreateCounter<long>("chatbroker.storage.appends", description: "Messages appended (duplicates excluded).");

    public static readonly Counter<long> CallerWritten = Meter.CreateCounter<long>("chatbroker.storage.caller_written", description: "Requests written on their caller's own thread (durability=async, writer idle): no thread woken.");

    public static readonly Counter<long> HandedOver = Meter.CreateCounter<long>("chatbroker.storage.handed_over", description: "Requests handed to another caller that was writing its own; it wrote them and completed them when its completion scope ended.");

    public static readonly Counter<long> Duplicates = Meter.CreateCounter<long>("chatbroker.storage.duplicate_appends", description: "Appends answered from the idempotency index.");

    public static readonly Histogram<int> BatchSize = Meter.CreateHistogram<int>("chatbroker.storage.batch_size", unit: "{request}", description: "Requests per WriteBatch.");

    public static readonly Histogram<double> CommitLatency = Meter.CreateHistogram<double>("chatbroker.storage.commit_latency", unit: "ms", description: "Time of one rocksdb_write (the fsync is included when the writer fsyncs inside the write: durability=sync and no batch waiting for the syncer).");

    public static readonly Counter<long> WalSyncs = Meter.CreateCounter<long>("chatbroker.storage.wal_syncs", description: "fsyncs of the WAL by the syncer thread (durability=sync, overlapped); each covers every batch written before it.");

    public static readonly Histogram<double> WalSyncLatency = Meter.CreateHistogram<double>("chatbroker.storage.wal_sync_latency", unit: "ms", description: "Time of one WAL fsync by the syncer thread.");

    // The store whose write stalls the counter below reports: the last one opened (one per broker process).
    private static Native.RocksDb? _stallSource;

    /// <summary>RocksDB's own write stalls (rocksdb.cf-write-stall-stats summed over the families), by kind: the evidence
    /// that a slow write waited for RocksDB (too many memtables, L0 files, pending compaction) rather than for the disk.</summary>
    public static readonly ObservableCounter<long> WriteStalls = Meter.CreateObservableCounter("chatbroker.storage.rocksdb_write_stalls", ObserveWriteStalls,
        description: "Writes RocksDB delayed (kind=delay) or stopped (kind=stop) because of too many memtables, L0 files or pending compaction bytes (rocksdb.cf-write-stall-stats; events, not time).");

    public static void WatchWriteStalls(Native.RocksDb db) => Volatile.Write(ref _stallSource, db);

    public static void UnwatchWriteStalls(Native.RocksDb db) => Interlocked.CompareExchange(ref _stallSource, null, db);

    private static IEnumerable<Measurement<long>> ObserveWriteStalls()
    {
        if (Volatile.Read(ref _stallSource) is not { } db)
        {
            return [];
        }

        try
        {
            var (delays, stops) = db.WriteStallCounts();
            return [new(delays, new KeyValuePair<string, object?>("kind", "delay")), new(stops, new KeyValuePair<string, object?>("kind", "stop"))];
        }
        catch (ObjectDisposedException)
        {
            return []; // closed between the read of the field and the call
        }
    }

    public static readonly Counter<long> SweptRecords = Meter.CreateCounter<long>("chatbroker.storage.swept_records", description: "Records removed by retention and idempotency expiry.");
}
