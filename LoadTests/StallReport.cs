using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace ChatBroker.LoadTests;

/// <summary>
/// Stalls of a paced run (issue 21): every delivery slower than --stall-ms is kept (stamp, arrival), and at the end
/// overlapping ones are merged into episodes: when (seconds into the measurement and UTC), how long (first stamp of
/// a late message to the last late arrival), how many messages, the worst latency. Each episode is printed with what
/// the broker did in the seconds around it, so its cause can be found after the fact: GC collections and pause time,
/// thread-pool threads, queue and work items (from /metrics, sampled once a second by <see cref="BrokerSampler"/>),
/// and the RocksDB LOG lines of that time (flushes, memtable switches, WAL files, compactions).
/// </summary>
public sealed class StallRecorder(double thresholdMs)
{
    /// <summary>Late deliveries kept at most (a run that is late all the time needs no more to show it).</summary>
    public const int MaxKept = 200_000;

    private readonly long _thresholdNs = (long)(thresholdMs * 1e6);
    private readonly Lock _lock = new();
    private readonly List<(long Stamp, long Arrival)> _late = [];
    private long _dropped;

    public double ThresholdMs => thresholdMs;

    /// <summary>Called for every measured delivery (cheap when on time).</summary>
    public void Observe(long stamp, long now, long latencyNs)
    {
        if (latencyNs <= _thresholdNs)
        {
            return;
        }

        lock (_lock)
        {
            if (_late.Count < MaxKept)
            {
                _late.Add((stamp, now));
            }
            else
            {
                _dropped++;
            }
        }
    }

    /// <summary>Late deliveries merged into episodes (overlapping or less than 1 ms apart), in time order.</summary>
    public List<StallEpisode> Episodes(long measureStart, DateTime measureStartUtc)
    {
        List<(long Stamp, long Arrival)> late;
        lock (_lock)
        {
            late = [.. _late];
        }

        late.Sort((a, b) => a.Stamp.CompareTo(b.Stamp));
        var episodes = new List<StallEpisode>();
        var gap = Stopwatch.Frequency / 1000;
        var i = 0;
        while (i < late.Count)
        {
            var start = late[i].Stamp;
            var end = late[i].Arrival;
            var worst = late[i].Arrival - late[i].Stamp;
            var n = 1;
            i++;
            while (i < late.Count && late[i].Stamp <= end + gap)
            {
                end = Math.Max(end, late[i].Arrival);
                worst = Math.Max(worst, late[i].Arrival - late[i].Stamp);
                n++;
                i++;
            }

            if (start < measureStart)
            {
                continue; // sent during the warm-up
            }

            var at = (start - measureStart) / (double)Stopwatch.Frequency;
            episodes.Add(new StallEpisode(
                Math.Round(at, 3),
                measureStartUtc.AddSeconds(at),
                Math.Round((end - start) * 1000.0 / Stopwatch.Frequency, 2),
                n,
                Math.Round(worst * 1000.0 / Stopwatch.Frequency, 2),
                null,
                []));
        }

        return episodes;
    }

    public long Dropped => _dropped;
}

/// <summary>One stall: <see cref="AtS"/> seconds into the measurement, <see cref="DurationMs"/> from the first late message's send to the last one's arrival.</summary>
public sealed record StallEpisode(double AtS, DateTime AtUtc, double DurationMs, int Messages, double WorstMs, BrokerSecond? Broker, List<string> StorageLog);

/// <summary>What the broker did in the second around a stall (differences of two /metrics samples, or the later sample's gauge).</summary>
public sealed record BrokerSecond(double FromS, double ToS, double Gen0, double Gen1, double Gen2, double GcPauseMs, double PoolThreads, double PoolQueue, double PoolWorkItems, double CpuMs, double AllocatedMb, double LockContentions,
    double Commits, double SlowestCommitMsAtMost, double WalSyncs, double SlowestWalSyncMsAtMost, double WriteStallDelays = 0, double WriteStallStops = 0);

/// <summary>Scrapes the broker's /metrics once a second during the measurement (the evidence for <see cref="StallRecorder"/>).</summary>
public sealed class BrokerSampler
{
    private const string WriteStalls = "chatbroker_storage_rocksdb_write_stalls_total{";
    private readonly List<(long At, BrokerMetricsSample Sample)> _samples = [];

    public IReadOnlyList<(long At, BrokerMetricsSample Sample)> Samples => _samples;

    public async Task RunAsync(Func<Task<BrokerMetricsSample?>> scrape, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                var s = await scrape().ConfigureAwait(false);
                if (s is not null)
                {
                    lock (_samples)
                    {
                        _samples.Add((Stopwatch.GetTimestamp(), s));
                    }
                }

                await Task.Delay(1000, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (HttpRequestException)
            {
                return;
            }
        }
    }

    /// <summary>The sampled interval that contains <paramref name="at"/> (Stopwatch ticks), relative to <paramref name="measureStart"/>.</summary>
    public BrokerSecond? Around(long at, long measureStart)
    {
        lock (_samples)
        {
            for (var i = 1; i < _samples.Count; i++)
            {
                if (_samples[i].At >= at)
                {
                    var (t0, a) = _samples[i - 1];
                    var (t1, b) = _samples[i];
                    double D(string name) => b.Get(name) - a.Get(name);
                    return new BrokerSecond(
                        Math.Round((t0 - measureStart) / (double)Stopwatch.Frequency, 2),
                        Math.Round((t1 - measureStart) / (double)Stopwatch.Frequency, 2),
                        Gen(b, "gen0") - Gen(a, "gen0"),
                        Gen(b, "gen1") - Gen(a, "gen1"),
                        Gen(b, "gen2") - Gen(a, "gen2"),
                        Math.Round(D("dotnet_gc_pause_time_seconds_total") * 1000, 2),
                        b.Get("dotnet_thread_pool_thread_count_total"),
                        b.Get("dotnet_thread_pool_queue_length_total"),
                        D("dotnet_thread_pool_work_item_count_total"),
                        Math.Round(D("process_cpu_time_seconds_total") * 1000, 1),
                        Math.Round(D("dotnet_gc_heap_total_allocated_bytes_total") / 1048576.0, 1),
                        D("dotnet_monitor_lock_contentions_total"),
                        D("chatbroker_storage_commits_total"),
                        b.SlowestSince(a, "chatbroker_storage_commit_latency_milliseconds"),
                        D("chatbroker_storage_wal_syncs_total"),
                        b.SlowestSince(a, "chatbroker_storage_wal_sync_latency_milliseconds"),
                        b.Find(WriteStalls, "kind=\"delay\"}") - a.Find(WriteStalls, "kind=\"delay\"}"),
                        b.Find(WriteStalls, "kind=\"stop\"}") - a.Find(WriteStalls, "kind=\"stop\"}"));
                }
            }
        }

        return null;
    }

    private static double Gen(BrokerMetricsSample s, string generation) =>
        s.Series("dotnet_gc_collections_total{gc_heap_generation=\"" + generation + "\"}");
}

/// <summary>RocksDB's LOG lines (flushes, memtable switches, new WAL files, compactions) with their time, from a broker's data directory.</summary>
public static partial class RocksDbLog
{
    public static List<(DateTime At, string Line)> Read(string? dataDir)
    {
        var lines = new List<(DateTime, string)>();
        if (dataDir is null || !Directory.Exists(dataDir))
        {
            return lines;
        }

        foreach (var file in Directory.EnumerateFiles(dataDir, "LOG", SearchOption.AllDirectories))
        {
            try
            {
                using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                using var reader = new StreamReader(stream);
                while (reader.ReadLine() is { } line)
                {
                    var m = Stamp().Match(line);
                    if (!m.Success || !Interesting().IsMatch(line))
                    {
                        continue;
                    }

                    // RocksDB writes local time.
                    var at = DateTime.ParseExact(m.Groups[1].Value, "yyyy/MM/dd-HH:mm:ss.ffffff", CultureInfo.InvariantCulture, DateTimeStyles.AssumeLocal).ToUniversalTime();
                    lines.Add((at, line.Length > 240 ? line[..240] : line));
                }
            }
            catch (IOException)
            {
            }
        }

        lines.Sort((a, b) => a.Item1.CompareTo(b.Item1));
        return lines;
    }

    [GeneratedRegex(@"^(\d{4}/\d{2}/\d{2}-\d{2}:\d{2}:\d{2}\.\d{6})")]
    private static partial Regex Stamp();

    [GeneratedRegex(@"flush|memtable|log file|compaction|stall|Stall|table_file|write_buffer", RegexOptions.IgnoreCase)]
    private static partial Regex Interesting();
}

/// <summary>Puts the evidence next to each stall and adds it to the result (printed, and in the JSON).</summary>
public static class StallReport
{
    public static void Complete(RunResult result, StallRecorder recorder, long measureStart, DateTime measureStartUtc, BrokerSampler? sampler, string? dataDir)
    {
        var episodes = recorder.Episodes(measureStart, measureStartUtc);
        var log = RocksDbLog.Read(dataDir);
        var withEvidence = new List<StallEpisode>(episodes.Count);
        foreach (var e in episodes)
        {
            var at = measureStart + (long)(e.AtS * Stopwatch.Frequency);
            var end = at + (long)(e.DurationMs / 1000 * Stopwatch.Frequency);
            var broker = sampler?.Around(end, measureStart);
            var from = e.AtUtc.AddMilliseconds(-200);
            var to = e.AtUtc.AddMilliseconds(e.DurationMs + 50);
            var storage = new List<string>();
            foreach (var (t, line) in log)
            {
                if (t >= from && t <= to && storage.Count < 12)
                {
                    storage.Add(line);
                }
            }

            withEvidence.Add(e with { Broker = broker, StorageLog = storage });
        }

        result.Stalls = withEvidence;
        result.Figures["stall_threshold_ms"] = recorder.ThresholdMs;
        result.Figures["stalls"] = withEvidence.Count;
        double worstSecond = 0;
        var secondsOver = 0;
        foreach (var p in result.Series)
        {
            worstSecond = Math.Max(worstSecond, p.MaxMs);
            if (p.MaxMs > recorder.ThresholdMs)
            {
                secondsOver++;
            }
        }

        result.Figures["worst_second_max_ms"] = Math.Round(worstSecond, 3);
        result.Figures["seconds_over_stall_threshold"] = secondsOver;
        if (sampler is not null && sampler.Samples.Count >= 2)
        {
            var a = sampler.Samples[0].Sample;
            var b = sampler.Samples[^1].Sample;
            result.Figures["broker_gc_pause_ms"] = Math.Round((b.Get("dotnet_gc_pause_time_seconds_total") - a.Get("dotnet_gc_pause_time_seconds_total")) * 1000, 2);
            result.Figures["broker_gc_collections"] = b.Get("dotnet_gc_collections_total") - a.Get("dotnet_gc_collections_total");
            foreach (var generation in new[] { "gen1", "gen2" })
            {
                var series = "dotnet_gc_collections_total{gc_heap_generation=\"" + generation + "\"}";
                result.Figures[$"broker_{generation}_collections"] = b.Series(series) - a.Series(series);
            }
            // Per message and per second, as the closed loops report them (messages in the sampled interval at the run's rate).
            var seconds = (sampler.Samples[^1].At - sampler.Samples[0].At) / (double)Stopwatch.Frequency;
            BrokerMetricsSample.AddGcFigures(result.Figures, a, b, result.Delivered > 0 ? (long)Math.Round(result.ThroughputPerS * seconds) : 0, seconds);
        }
    }

    /// <summary>The lines printed for the stalls of a run (also part of the summary).</summary>
    public static IEnumerable<string> Describe(RunResult r)
    {
        if (r.Stalls is null)
        {
            yield break;
        }

        var threshold = r.Figures.GetValueOrDefault("stall_threshold_ms");
        yield return FormattableString.Invariant($"stalls (deliveries over {threshold:0.#} ms, merged when they overlap): {r.Stalls.Count}");
        foreach (var e in r.Stalls.Take(50))
        {
            yield return FormattableString.Invariant($"  stall at +{e.AtS:0.000} s ({e.AtUtc:HH:mm:ss.fff} UTC), {e.DurationMs:0.0} ms long: {e.Messages} messages late, worst {e.WorstMs:0.0} ms");
            if (e.Broker is { } b)
            {
                yield return FormattableString.Invariant($"    broker from +{b.FromS:0.00} to +{b.ToS:0.00} s: GC gen0 {b.Gen0} gen1 {b.Gen1} gen2 {b.Gen2}, pause {b.GcPauseMs:0.00} ms, allocated {b.AllocatedMb:0.0} MB; pool threads {b.PoolThreads}, queue {b.PoolQueue}, work items {b.PoolWorkItems}; CPU {b.CpuMs:0} ms; lock contentions {b.LockContentions}; commits {b.Commits} (slowest ≤ {b.SlowestCommitMsAtMost} ms), WAL fsyncs {b.WalSyncs} (slowest ≤ {b.SlowestWalSyncMsAtMost} ms); RocksDB write stalls {b.WriteStallDelays} delayed, {b.WriteStallStops} stopped");
            }

            foreach (var line in e.StorageLog)
            {
                yield return "    rocksdb: " + line;
            }
        }

        if (r.Stalls.Count > 50)
        {
            yield return $"  ... {r.Stalls.Count - 50} more in the JSON";
        }
    }
}
