using HdrHistogram;

namespace ChatBroker.LoadTests;

/// <summary>
/// End-to-end latencies in nanoseconds, on HdrHistogram: every receive loop records into one wait-free
/// <see cref="Recorder"/> (three significant digits, up to ten minutes); the reporter takes the values of
/// each second with <see cref="TakeInterval"/>, which also adds them to the whole run's histogram.
/// The recorder's histograms are <see cref="LongConcurrentHistogram"/>s: many receive loops record at once, and a
/// plain <see cref="LongHistogram"/> loses increments under concurrent writers (its total then disagrees with its
/// buckets, and reading its maximum threw ArgumentOutOfRangeException in a 70k deliveries/s fan-out run).
/// </summary>
public sealed class Histogram
{
    private const long Highest = 600_000_000_000; // 10 min in ns: anything slower is recorded as 10 min
    private const int SignificantDigits = 3;

    private readonly Recorder _recorder = new(1, Highest, SignificantDigits, (id, lowest, highest, digits) => new LongConcurrentHistogram(id, lowest, highest, digits));
    private readonly LongHistogram _run = new(1, Highest, SignificantDigits);
    private readonly Lock _gate = new();

    public void Record(long nanoseconds) => _recorder.RecordValue(Math.Clamp(nanoseconds, 0, Highest));

    /// <summary>What was recorded since the previous call (or since the start).</summary>
    public HistogramSnapshot TakeInterval()
    {
        lock (_gate)
        {
            var interval = _recorder.GetIntervalHistogram();
            _run.Add(interval);
            return new HistogramSnapshot(interval);
        }
    }

    /// <summary>Everything recorded so far.</summary>
    public HistogramSnapshot Total()
    {
        lock (_gate)
        {
            _run.Add(_recorder.GetIntervalHistogram());
            return new HistogramSnapshot(_run.Copy());
        }
    }
}

/// <summary>A histogram that no longer changes: one interval of a run, or the whole run.</summary>
public sealed class HistogramSnapshot(HistogramBase histogram)
{
    public long TotalCount => histogram.TotalCount;

    public long Max => histogram.TotalCount == 0 ? 0 : histogram.GetMaxValue();

    /// <summary>The value at or below which <paramref name="percentile"/> % of the recorded values lie (0 when empty).</summary>
    public long ValueAt(double percentile) => histogram.TotalCount == 0 ? 0 : histogram.GetValueAtPercentile(percentile);

    public LatencySummary Summarize() => new(
        TotalCount,
        ToMs(ValueAt(50)),
        ToMs(ValueAt(90)),
        ToMs(ValueAt(99)),
        ToMs(ValueAt(99.9)),
        ToMs(Max));

    private static double ToMs(long nanoseconds) => Math.Round(nanoseconds / 1e6, 4);
}

/// <summary>Latency percentiles in milliseconds.</summary>
public sealed record LatencySummary(long Count, double P50Ms, double P90Ms, double P99Ms, double P999Ms, double MaxMs);
