using System.Diagnostics;

namespace ChatBroker.LoadTests;

/// <summary>
/// Counters shared by every connection of a run (updated with Interlocked by receive loops) and the
/// end-to-end latency histogram. "Completed" is what the run's rate counts: deliveries for message
/// scenarios, CONNACKs for connection scenarios.
/// </summary>
public sealed class LoadStats
{
    public Histogram Latency { get; } = new();

    public long Sent;
    public long Acked;
    public long Completed;
    public long Errors;
    public long Gaps;
    public long Duplicates;

    /// <summary>SENTs of one conversation whose seq is not the previous SENT's + 1 (docs/protocol.md §5: SENTs come back in SEND order).</summary>
    public long SentOutOfOrder;

    /// <summary>Set by paced runs: every delivery later than its threshold is kept for the stall report.</summary>
    public StallRecorder? Stalls;

    public static long Now() => Stopwatch.GetTimestamp();

    /// <summary>Stopwatch ticks to nanoseconds (ticks are nanoseconds on Linux).</summary>
    public static long TicksToNanoseconds(long ticks) =>
        Stopwatch.Frequency == 1_000_000_000 ? ticks : (long)(ticks * (1e9 / Stopwatch.Frequency));

    /// <summary>Records one delivery of a body stamped at <paramref name="stamp"/>.</summary>
    public void RecordDelivery(long stamp, long now)
    {
        var ns = TicksToNanoseconds(now - stamp);
        Latency.Record(ns);
        Stalls?.Observe(stamp, now, ns);
        Interlocked.Increment(ref Completed);
    }
}

/// <summary>One second of a run.</summary>
public sealed record SeriesPoint(double T, double Rate, double P50Ms, double P99Ms, double MaxMs, long Errors);
