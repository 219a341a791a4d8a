using System.Numerics;

namespace ChatBroker.LoadTests;

/// <summary>
/// A log-linear latency histogram in the style of HdrHistogram, for nanoseconds: values below 128 have a
/// bucket each; above, every power of two is split into 64 linear sub-buckets, so a recorded value is
/// known to within 1/64 (1.6 %, i.e. two significant digits) up to 2^63. Recording is one
/// <see cref="Interlocked.Increment(ref long)"/> on a fixed array: many receiver threads share one
/// instance, and a reporter takes the per-second histogram as the difference of two snapshots.
/// <code>
///   value:   0..127 | 128..255 (step 2) | 256..511 (step 4) | ... | 2^k..2^(k+1)-1 (step 2^(k-6))
///   bucket:  0..127 | 128..191          | 192..255          | ... | 128 + (k-7)*64 + ...
/// </code>
/// </summary>
public sealed class Histogram
{
    private const int LinearBuckets = 128;
    private const int SubBuckets = 64;
    private const int SubBucketBits = 6;
    private const int BucketCount = LinearBuckets + (64 - 7) * SubBuckets;

    private readonly long[] _counts = new long[BucketCount];
    private long _max;
    private long _total;

    public long TotalCount => Volatile.Read(ref _total);

    public long Max => Volatile.Read(ref _max);

    public void Record(long value)
    {
        if (value < 0)
        {
            value = 0;
        }

        Interlocked.Increment(ref _counts[IndexOf(value)]);
        Interlocked.Increment(ref _total);
        var max = Volatile.Read(ref _max);
        while (value > max)
        {
            var seen = Interlocked.CompareExchange(ref _max, value, max);
            if (seen == max)
            {
                break;
            }

            max = seen;
        }
    }

    /// <summary>A copy of the counts (not atomic as a whole; each bucket is read atomically).</summary>
    public HistogramSnapshot Snapshot()
    {
        var copy = new long[BucketCount];
        long total = 0;
        for (var i = 0; i < BucketCount; i++)
        {
            copy[i] = Volatile.Read(ref _counts[i]);
            total += copy[i];
        }

        return new HistogramSnapshot(copy, total, Max);
    }

    internal static int IndexOf(long value)
    {
        if (value < LinearBuckets)
        {
            return (int)value;
        }

        var msb = 63 - BitOperations.LeadingZeroCount((ulong)value);
        var shift = msb - SubBucketBits;
        var sub = (int)(value >> shift) - SubBuckets;
        return LinearBuckets + ((shift - 1) * SubBuckets) + sub;
    }

    /// <summary>The largest value that falls in <paramref name="index"/> (percentiles report the upper edge, as HdrHistogram does).</summary>
    internal static long HighestOf(int index)
    {
        if (index < LinearBuckets)
        {
            return index;
        }

        var shift = ((index - LinearBuckets) / SubBuckets) + 1;
        var sub = ((index - LinearBuckets) % SubBuckets) + SubBuckets;
        return (((long)sub + 1) << shift) - 1;
    }
}

/// <summary>Counts of a <see cref="Histogram"/> at one moment, or the difference of two such moments.</summary>
public sealed class HistogramSnapshot(long[] counts, long total, long max)
{
    public long TotalCount => total;

    public long Max => max;

    /// <summary>The counts recorded after <paramref name="earlier"/> was taken; max is the largest non-empty bucket's edge.</summary>
    public HistogramSnapshot Minus(HistogramSnapshot earlier)
    {
        var diff = new long[counts.Length];
        long sum = 0;
        long highest = 0;
        for (var i = 0; i < counts.Length; i++)
        {
            diff[i] = counts[i] - earlier.Counts[i];
            sum += diff[i];
            if (diff[i] > 0)
            {
                highest = Histogram.HighestOf(i);
            }
        }

        return new HistogramSnapshot(diff, sum, Math.Min(highest, max));
    }

    internal long[] Counts => counts;

    /// <summary>The value at or below which <paramref name="percentile"/> % of the recorded values lie (0 when empty).</summary>
    public long ValueAt(double percentile)
    {
        if (total == 0)
        {
            return 0;
        }

        var rank = (long)Math.Ceiling(percentile / 100.0 * total);
        rank = Math.Clamp(rank, 1, total);
        long seen = 0;
        for (var i = 0; i < counts.Length; i++)
        {
            seen += counts[i];
            if (seen >= rank)
            {
                return Math.Min(Histogram.HighestOf(i), max);
            }
        }

        return max;
    }

    public LatencySummary Summarize() => new(
        TotalCount,
        ToMs(ValueAt(50)),
        ToMs(ValueAt(90)),
        ToMs(ValueAt(99)),
        ToMs(ValueAt(99.9)),
        ToMs(max));

    private static double ToMs(long nanoseconds) => Math.Round(nanoseconds / 1e6, 4);
}

/// <summary>Latency percentiles in milliseconds.</summary>
public sealed record LatencySummary(long Count, double P50Ms, double P90Ms, double P99Ms, double P999Ms, double MaxMs);
