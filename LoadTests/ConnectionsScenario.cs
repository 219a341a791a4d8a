using System.Diagnostics;

namespace ChatBroker.LoadTests;

/// <summary>
/// `connections`: C idle authenticated connections, spread over --processes child processes (each under
/// 19,000 open files) and --sources client addresses. Measures the connect rate (GO to the last CONNACK, tokens
/// minted beforehand) and the broker's resident memory per connection: (RSS with C open − RSS before) / C,
/// each read from the broker's /metrics after it has been quiet for a while.
/// </summary>
public sealed class ConnectionsScenario(RunOptions options)
{
    public const int MaxPerProcess = 19_000;
    private const int WarmupRounds = 4;
    private static readonly TimeSpan WarmupPause = TimeSpan.FromMilliseconds(500);

    private string? DumpPath(string name) =>
        options.GcDumpDirectory is null ? null : Path.Combine(options.GcDumpDirectory, $"broker-{name}.gcdump");

    public async Task<RunResult> RunAsync()
    {
        await using var broker = await options.OpenBrokerAsync().ConfigureAwait(false);
        var result = new RunResult
        {
            Scenario = "connections",
            Parameters = options.Describe("connections", "processes", "sources"),
            Broker = options.DescribeBroker(broker),
            ThroughputUnit = "connections",
        };
        var processes = Math.Max(options.Processes, (int)Math.Ceiling(options.Connections / (double)MaxPerProcess));
        var perProcess = (options.Connections + processes - 1) / processes;
        var runId = Guid.NewGuid().ToString("N")[..8];

        if (options.Warmup > 0)
        {
            // In rounds with pauses between them: the tiered JIT starts counting calls only after 100 ms without
            // new tier-0 compilations and recompiles a hot method twice (instrumented, then optimized), so one
            // continuous burst left the connect path to be recompiled during the measurement (perf: ~20 % of
            // the broker's CPU then in its ".NET Tiered Compilation" thread).
            Console.WriteLine($"warm-up: {options.Warmup:N0} connect/disconnect cycles in {WarmupRounds} rounds ...");
            for (var round = 0; round < WarmupRounds; round++)
            {
                await Warmup.ConnectCyclesAsync(broker, options, options.Warmup / WarmupRounds, 64).ConfigureAwait(false);
                await Task.Delay(WarmupPause).ConfigureAwait(false);
            }
        }

        var before = await Metrics.SettledAsync(broker, waitForSessions: 0, gcDumpPath: DumpPath("before")).ConfigureAwait(false);
        Console.WriteLine($"broker RSS before: {before?.ResidentBytes / 1048576.0:0.0} MB; starting {processes} client processes ...");
        var children = new List<ClientProcess>();
        try
        {
            for (var p = 0; p < processes; p++)
            {
                var first = (long)p * perProcess;
                var count = Math.Min(perProcess, options.Connections - first);
                children.Add(ClientProcess.Start(broker, $"conn-{runId}-", first, count, options.Sources, 32));
            }

            await Task.WhenAll(children.Select(c => c.Ready)).WaitAsync(TimeSpan.FromSeconds(120)).ConfigureAwait(false);
            var stats = new LoadStats();
            var cpuBefore = await broker.ScrapeAsync().ConfigureAwait(false);
            var clock = Stopwatch.StartNew();
            foreach (var c in children)
            {
                c.Go();
            }

            var connected = Task.WhenAll(children.Select(c => c.Connected));
            using var sampling = new CancellationTokenSource();
            var sampler = Task.Run(async () =>
            {
                while (!sampling.IsCancellationRequested)
                {
                    Volatile.Write(ref stats.Completed, children.Sum(c => c.Progress));
                    await Task.Delay(100, sampling.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                }
            });
            var progress = new LiveProgress("connections", "conns", stats);
            await progress.RunAsync(connected.WaitAsync(TimeSpan.FromSeconds(120))).ConfigureAwait(false);
            var outcomes = await connected.ConfigureAwait(false);
            var elapsed = clock.Elapsed;
            var cpuAfter = await broker.ScrapeAsync().ConfigureAwait(false);
            await sampling.CancelAsync().ConfigureAwait(false);
            await sampler.ConfigureAwait(false);

            long ok = 0, failed = 0;
            double clientCpuMs = 0;
            foreach (var (o, f, _, cpuMs) in outcomes)
            {
                ok += o;
                failed += f;
                clientCpuMs += cpuMs;
            }

            result.Figures["client_cpu_cores_while_connecting"] = Math.Round(clientCpuMs / 1000 / elapsed.TotalSeconds, 2);
            result.Figures["client_cpu_us_per_connect"] = Math.Round(clientCpuMs * 1000 / Math.Max(1, ok), 1);

            Volatile.Write(ref stats.Completed, ok);
            result.Series = progress.Series;
            result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
            result.Delivered = ok;
            result.Errors = failed;
            result.ThroughputPerS = Math.Round(ok / elapsed.TotalSeconds, 1);
            result.Figures["connections_open"] = ok;
            result.Figures["connect_rate_per_s"] = result.ThroughputPerS;
            if (cpuBefore is not null && cpuAfter is not null)
            {
                var cpu = cpuAfter.CpuSeconds - cpuBefore.CpuSeconds;
                result.Figures["broker_cpu_cores_while_connecting"] = Math.Round(cpu / elapsed.TotalSeconds, 2);
                result.Figures["broker_cpu_us_per_connect"] = Math.Round(cpu * 1e6 / Math.Max(1, ok), 1);
            }

            // Quiet for longer than tcp.connect_timeout (10 s): each session's handshake timer has fired and gone.
            var after = await Metrics.SettledAsync(broker, gcDumpPath: DumpPath("with-connections"), quietSeconds: 12).ConfigureAwait(false);
            if (before is not null && after is not null)
            {
                var perConnection = (after.ResidentBytes - before.ResidentBytes) / Math.Max(1, ok);
                result.Figures["broker_rss_mb_before"] = Math.Round(before.ResidentBytes / 1048576.0, 1);
                result.Figures["broker_rss_mb_with_connections"] = Math.Round(after.ResidentBytes / 1048576.0, 1);
                result.Figures["broker_bytes_per_connection"] = Math.Round(perConnection, 0);
                result.Figures["broker_gc_heap_bytes_per_connection"] = Math.Round((after.GcHeapBytes - before.GcHeapBytes) / Math.Max(1, ok), 0);
                result.Figures["broker_sessions"] = after.Sessions;
                result.AddTarget("broker memory per idle connection (bytes)", perConnection, "<=", 2.5 * 1024);
                if (after.Sessions < ok)
                {
                    result.Notes.Add($"the broker reports {after.Sessions} sessions for {ok} logged-in connections");
                }
            }

            if (options.GcDumpDirectory is not null)
            {
                result.Notes.Add($"memory read right after dotnet-gcdump (a full GC) of the broker; dumps in {options.GcDumpDirectory} (dotnet-gcdump report <file>)");
            }

            result.AddTarget("connect rate (connections/s)", result.ThroughputPerS, ">=", 10_000);
            result.AddTarget("connections held", ok, ">=", options.Connections);
            result.Notes.Add($"the broker was warmed up with {options.Warmup:N0} connect/disconnect cycles in {WarmupRounds} rounds {WarmupPause.TotalMilliseconds:0} ms apart before the measurement (--warmup)");
            result.Notes.Add("connect rate: from GO (tokens already minted, processes started) to the last CONNACK, over all client processes");
            result.Notes.Add("memory: process_memory_resident_bytes from /metrics, read after the broker was quiet for 3 s (before) and 12 s (with the connections: longer than the 10 s handshake timeout), twice 1 s apart (the second counts); the kernel's socket buffers are not in RSS");

            foreach (var c in children)
            {
                await c.CloseAsync().ConfigureAwait(false);
            }

            var closed = await Metrics.SettledAsync(broker, waitForSessions: 0).ConfigureAwait(false);
            if (closed is not null)
            {
                result.Figures["broker_rss_mb_after_close"] = Math.Round(closed.ResidentBytes / 1048576.0, 1);
                result.Figures["broker_sessions_after_close"] = closed.Sessions;
            }
        }
        finally
        {
            foreach (var c in children)
            {
                await c.DisposeAsync().ConfigureAwait(false);
            }
        }

        return result;
    }
}

/// <summary>Reads broker metrics once the broker has settled.</summary>
public static class Metrics
{
    /// <summary>
    /// Waits until the broker reports <paramref name="waitForSessions"/> sessions (when given, up to 20 s), lets it
    /// be quiet for <paramref name="quietSeconds"/>, takes a heap dump when asked (a full GC), then scrapes twice
    /// 1 s apart and returns the second.
    /// </summary>
    public static async Task<BrokerMetricsSample?> SettledAsync(BrokerLauncher broker, double? waitForSessions = null, string? gcDumpPath = null, int quietSeconds = 3)
    {
        if (broker.AdminUri is null)
        {
            return null;
        }

        if (waitForSessions is { } sessions)
        {
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < TimeSpan.FromSeconds(20) && (await broker.ScrapeAsync().ConfigureAwait(false))!.Sessions != sessions)
            {
                await Task.Delay(200).ConfigureAwait(false);
            }
        }

        await Task.Delay(TimeSpan.FromSeconds(quietSeconds)).ConfigureAwait(false);
        if (gcDumpPath is not null && broker.Pid is { } pid && !await GcDump.CollectAsync(pid, gcDumpPath).ConfigureAwait(false))
        {
            Console.Error.WriteLine("dotnet-gcdump failed or is not installed: memory includes uncollected garbage");
        }

        await broker.ScrapeAsync().ConfigureAwait(false);
        await Task.Delay(1000).ConfigureAwait(false);
        return await broker.ScrapeAsync().ConfigureAwait(false);
    }
}
