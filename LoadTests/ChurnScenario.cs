using System.Diagnostics;
using System.Globalization;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// `churn`: devices connect, log in and disconnect (DISCONNECT, close) at --rate per second for --duration,
/// cycling through a pool of users as phones reconnecting would. Then checks the broker returns to its
/// baseline: no session left, and resident memory within 10 % (or 8 MB) of what it was before the churn.
/// The latency recorded is connect + CONNECT → CONNACK.
/// </summary>
public sealed class ChurnScenario(RunOptions options)
{
    private const int UserPool = 1000;
    private const int MaxInFlight = 2000;

    private string? DumpPath(string name) =>
        options.GcDumpDirectory is null ? null : Path.Combine(options.GcDumpDirectory, $"broker-{name}.gcdump");

    public async Task<RunResult> RunAsync()
    {
        var rate = options.Rate > 0 ? options.Rate : 2000;
        await using var broker = await options.OpenBrokerAsync().ConfigureAwait(false);
        var result = new RunResult
        {
            Scenario = "churn",
            Parameters = options.Describe("rate", "duration_s", "sources"),
            Broker = options.DescribeBroker(broker),
            ThroughputUnit = "connect/disconnect cycles",
        };
        result.Parameters["rate"] = rate.ToString(CultureInfo.InvariantCulture);
        var runId = Guid.NewGuid().ToString("N")[..8];
        var frames = new byte[UserPool][];
        for (var i = 0; i < UserPool; i++)
        {
            var user = $"churn-{runId}-{i}";
            frames[i] = Wire.Connect(user, "d1", broker.Token(user, "d1"), 0, 1800);
        }

        // Warm up (JIT, pools) with one short round so the baseline is the broker's steady state.
        Console.WriteLine("warm-up churn (2 s) ...");
        await ChurnAsync(broker, frames, rate, TimeSpan.FromSeconds(2), new LoadStats(), 0).ConfigureAwait(false);
        var baseline = await Metrics.SettledAsync(broker, waitForSessions: 0, gcDumpPath: DumpPath("baseline")).ConfigureAwait(false);
        Console.WriteLine($"baseline RSS {baseline?.ResidentBytes / 1048576.0:0.0} MB; churning at {rate}/s for {options.Duration.TotalSeconds} s ...");

        var stats = new LoadStats();
        var run = ChurnAsync(broker, frames, rate, options.Duration, stats, 1_000_000);
        var progress = new LiveProgress("churn", "cycles", stats);
        await progress.RunAsync(run).ConfigureAwait(false);
        var elapsed = await run.ConfigureAwait(false);
        result.Series = progress.Series;
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
        result.Sent = Volatile.Read(ref stats.Sent);
        result.Delivered = Volatile.Read(ref stats.Completed);
        result.Errors = Volatile.Read(ref stats.Errors);
        result.ThroughputPerS = Math.Round(result.Delivered / elapsed.TotalSeconds, 1);
        result.LatencyMs = stats.Latency.Total().Summarize();

        var peak = await broker.ScrapeAsync().ConfigureAwait(false);
        var after = await Metrics.SettledAsync(broker, waitForSessions: 0, gcDumpPath: DumpPath("after-churn")).ConfigureAwait(false);
        if (baseline is not null && after is not null && peak is not null)
        {
            var growth = after.ResidentBytes - baseline.ResidentBytes;
            result.Figures["broker_rss_mb_baseline"] = Math.Round(baseline.ResidentBytes / 1048576.0, 1);
            result.Figures["broker_rss_mb_end_of_churn"] = Math.Round(peak.ResidentBytes / 1048576.0, 1);
            result.Figures["broker_rss_mb_settled"] = Math.Round(after.ResidentBytes / 1048576.0, 1);
            result.Figures["broker_rss_growth_mb"] = Math.Round(growth / 1048576.0, 2);
            result.Figures["broker_gc_heap_mb_baseline"] = Math.Round(baseline.GcHeapBytes / 1048576.0, 1);
            result.Figures["broker_gc_heap_mb_settled"] = Math.Round(after.GcHeapBytes / 1048576.0, 1);
            result.Figures["broker_sessions_settled"] = after.Sessions;
            result.AddTarget("sessions left after churn", after.Sessions, "<=", 0);
            result.AddTarget("RSS growth after churn (MB, allowed: 10 % of baseline or 8 MB)", growth / 1048576.0, "<=",
                Math.Round(Math.Max(0.10 * baseline.ResidentBytes, 8 * 1048576.0) / 1048576.0, 1));
        }

        result.Notes.Add($"users cycle through a pool of {UserPool}; each cycle is TCP connect, CONNECT, CONNACK, DISCONNECT, close; latency = connect start to CONNACK");
        return result;
    }

    /// <summary>Starts cycles at <paramref name="rate"/> per second (paced every millisecond) for <paramref name="duration"/>, then waits for them.</summary>
    private async Task<TimeSpan> ChurnAsync(BrokerLauncher broker, byte[][] frames, double rate, TimeSpan duration, LoadStats stats, long sourceOffset)
    {
        var clock = Stopwatch.StartNew();
        var inFlight = 0;
        long started = 0;
        var running = new List<Task>();
        while (clock.Elapsed < duration)
        {
            var due = (long)(clock.Elapsed.TotalSeconds * rate) - started;
            for (; due > 0 && Volatile.Read(ref inFlight) < MaxInFlight; due--)
            {
                var i = started++;
                Interlocked.Increment(ref inFlight);
                Interlocked.Increment(ref stats.Sent);
                running.Add(CycleAsync(broker, frames[i % frames.Length], sourceOffset + i, stats).ContinueWith(
                    _ => Interlocked.Decrement(ref inFlight), TaskScheduler.Default));
            }

            if (running.Count > 10_000)
            {
                running.RemoveAll(t => t.IsCompleted);
            }

            await Task.Delay(1).ConfigureAwait(false);
        }

        await Task.WhenAll(running).ConfigureAwait(false);
        return clock.Elapsed;
    }

    private async Task CycleAsync(BrokerLauncher broker, byte[] connect, long index, LoadStats stats)
    {
        var start = LoadStats.Now();
        try
        {
            using var c = await RawConnection.ConnectAsync(broker.TcpEndPoint, options.SourceAddress(broker.TcpEndPoint, index), 256, CancellationToken.None).ConfigureAwait(false);
            var connack = await c.LoginAsync(connect, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            if (connack.Reason != ReasonCode.Success)
            {
                if (Interlocked.Increment(ref stats.Errors) <= 5)
                {
                    Console.Error.WriteLine($"CONNACK {connack.Reason} {connack.Message}");
                }

                return;
            }

            stats.RecordDelivery(start, LoadStats.Now());
            c.Close();
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException or TimeoutException or InvalidDataException)
        {
            if (Interlocked.Increment(ref stats.Errors) <= 5)
            {
                Console.Error.WriteLine($"cycle failed: {e.Message}");
            }
        }
    }
}
