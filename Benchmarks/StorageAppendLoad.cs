using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using ChatBroker.Storage;
using HdrHistogram;

namespace ChatBroker.Benchmarks;

/// <summary>
/// Durable-append throughput: N concurrent callers each append a message and await its durability,
/// in a loop, for a fixed time. Reports appends/s, p50/p99/max of the per-append latency (enqueue to
/// durable), and commits/s with the mean batch size (from the "ChatBroker.Storage" meter).
/// BenchmarkDotNet measures one operation at a time, which cannot show group commit, hence this mode.
///
///   dotnet run -c Release --project Benchmarks -- storage-append [--callers 64] [--size 300]
///       [--seconds 5] [--durability sync|sync-inline|async|both|all] [--conversations 1000] [--idempotency on|off] [--write-buffer-mb 16] [--max-batch 1024] [--path DIR]
///
/// <c>--max-batch 1</c> is the peer to compare against: one fsync per append, no group commit.
/// <c>sync</c> fsyncs the WAL on the syncer thread, overlapped with the next batch's write (the default);
/// <c>sync-inline</c> fsyncs inside each rocksdb_write (StorageOptions.OverlapWalSync = false, internal to
/// the store and visible to this project only: a comparison, not a setting);
/// <c>both</c> runs sync and async, <c>all</c> runs the three, one after another in one process.
/// </summary>
internal static class StorageAppendLoad
{
    public static async Task<int> RunAsync(string[] args)
    {
        var callers = Option(args, "--callers", 64);
        var size = Option(args, "--size", 300);
        var seconds = Option(args, "--seconds", 5);
        var conversations = Option(args, "--conversations", 1000);
        var durability = OptionText(args, "--durability", "both");
        var maxBatch = Option(args, "--max-batch", 1024);
        var writeBufferMb = Option(args, "--write-buffer-mb", 16);
        var idempotency = OptionText(args, "--idempotency", "on") == "on";
        var root = OptionText(args, "--path", Path.Combine(Path.GetTempPath(), "chatbroker-bench-" + Environment.ProcessId));

        var fsync = ProbeFsyncMs(root);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"fsync probe: p50={fsync:F3} ms per 4 KiB write+fsync in {root} -> ceiling for {callers} closed-loop callers with one fsync per commit: {callers / fsync * 1000:N0} appends/s"));
        Console.WriteLine($"storage-append: {callers} callers, {size}-byte bodies, {conversations} conversations, {seconds} s per run, {Environment.ProcessorCount} cores");
        string[] modes = durability switch
        {
            "both" => ["sync", "async"],
            "all" => ["sync", "sync-inline", "async"],
            "sync" or "sync-inline" or "async" => [durability],
            _ => throw new ArgumentException($"--durability must be sync, sync-inline, async, both or all, not '{durability}'."),
        };
        foreach (var mode in modes)
        {
            var path = Path.Combine(root, mode);
            try
            {
                await RunOnceAsync(path, mode, callers, size, seconds, conversations, idempotency, writeBufferMb, maxBatch).ConfigureAwait(false);
            }
            finally
            {
                Directory.Delete(path, recursive: true);
            }
        }

        return 0;
    }

    private static async Task RunOnceAsync(string path, string mode, int callers, int size, int seconds, int conversations, bool idempotency, int writeBufferMb, int maxBatch)
    {
        var durability = mode == "async" ? Durability.Async : Durability.Sync;
        using var store = RocksDbChatStore.Open(new StorageOptions { Path = path, Durability = durability, OverlapWalSync = mode != "sync-inline", SweepInterval = Timeout.InfiniteTimeSpan, WriteBufferBytes = (long)writeBufferMb << 20, MaxBatchCount = maxBatch });
        long commits = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "ChatBroker.Storage" && instrument.Name is "chatbroker.storage.commits" or "chatbroker.storage.commit_latency" or "chatbroker.storage.wal_syncs" or "chatbroker.storage.wal_sync_latency")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        long walSyncs = 0;
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) => Interlocked.Add(ref instrument.Name == "chatbroker.storage.commits" ? ref commits : ref walSyncs, value));
        var writeMicros = 0L;
        var syncMicros = 0L;
        listener.SetMeasurementEventCallback<double>((instrument, value, _, _) => Interlocked.Add(ref instrument.Name == "chatbroker.storage.commit_latency" ? ref writeMicros : ref syncMicros, (long)(value * 1000)));
        listener.Start();

        var body = new byte[size];
        Random.Shared.NextBytes(body);
        var measuring = 0;
        var stop = 0;
        // Stopwatch ticks (nanoseconds on Linux), three significant digits, up to a minute.
        var latencies = new LongConcurrentHistogram(1, 60 * Stopwatch.Frequency, 3);
        var tasks = new Task[callers];
        for (var c = 0; c < callers; c++)
        {
            var caller = c;
            tasks[c] = Task.Run(async () =>
            {
                var random = new Random(caller);
                var sender = "user" + caller;
                for (ulong n = 1; Volatile.Read(ref stop) == 0; n++)
                {
                    var started = Stopwatch.GetTimestamp();
                    await store.AppendAsync(new AppendRequest
                    {
                        ConversationId = (ulong)random.Next(1, conversations + 1),
                        SenderUserId = sender,
                        SenderDeviceId = "device",
                        ClientMsgId = idempotency ? n : 0,
                        Body = body,
                    }).ConfigureAwait(false);
                    if (Volatile.Read(ref measuring) == 1)
                    {
                        latencies.RecordValue(Math.Min(Stopwatch.GetTimestamp() - started, latencies.HighestTrackableValue));
                    }
                }
            });
        }

        await Task.Delay(TimeSpan.FromSeconds(1)).ConfigureAwait(false); // warm-up
        var commitsBefore = Interlocked.Read(ref commits);
        var walSyncsBefore = Interlocked.Read(ref walSyncs);
        var writeMicrosBefore = Interlocked.Read(ref writeMicros);
        var syncMicrosBefore = Interlocked.Read(ref syncMicros);
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        Volatile.Write(ref measuring, 1);
        await Task.Delay(TimeSpan.FromSeconds(seconds)).ConfigureAwait(false);
        Volatile.Write(ref measuring, 0);
        var elapsed = clock.Elapsed.TotalSeconds;
        var cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpuBefore).TotalSeconds;
        var commitsDuring = Interlocked.Read(ref commits) - commitsBefore;
        var walSyncsDuring = Interlocked.Read(ref walSyncs) - walSyncsBefore;
        var meanSyncMs = (Interlocked.Read(ref syncMicros) - syncMicrosBefore) / 1000.0 / Math.Max(1, walSyncsDuring);
        var meanWriteMs = (Interlocked.Read(ref writeMicros) - writeMicrosBefore) / 1000.0 / Math.Max(1, commitsDuring);
        Volatile.Write(ref stop, 1);
        await Task.WhenAll(tasks).ConfigureAwait(false);

        double Ms(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;
        var appends = latencies.TotalCount;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"durability={mode,-11} appends/s={appends / elapsed,10:N0}  p50={Ms(latencies.GetValueAtPercentile(50)):F3} ms  p99={Ms(latencies.GetValueAtPercentile(99)):F3} ms  max={Ms(latencies.GetMaxValue()):F3} ms  commits/s={commitsDuring / elapsed,8:N0}  mean batch={(double)appends / Math.Max(1, commitsDuring):F1}  mean rocksdb_write={meanWriteMs:F3} ms  wal fsyncs/s={walSyncsDuring / elapsed:N0}  mean wal fsync={meanSyncMs:F3} ms  cpu={cpu / elapsed:F2} cores, {cpu * 1e6 / Math.Max(1, appends):F1} µs/append"));
    }

    /// <summary>The machine's fsync latency right now (the disk is shared): with C closed-loop callers
    /// and one fsync per commit, throughput cannot exceed C / fsync latency.</summary>
    private static double ProbeFsyncMs(string root)
    {
        Directory.CreateDirectory(root);
        var file = Path.Combine(root, "fsync-probe");
        var samples = new double[200];
        var block = new byte[4096];
        using (var stream = new FileStream(file, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.None))
        {
            for (var i = 0; i < samples.Length; i++)
            {
                var started = Stopwatch.GetTimestamp();
                stream.Write(block);
                stream.Flush(flushToDisk: true);
                samples[i] = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            }
        }

        File.Delete(file);
        Array.Sort(samples);
        return samples[samples.Length / 2];
    }

    internal static int Option(string[] args, string name, int fallback)
    {
        var i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : fallback;
    }

    internal static string OptionText(string[] args, string name, string fallback)
    {
        var i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
    }
}
