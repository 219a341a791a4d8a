using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace ChatBroker.LoadTests.Tests;

/// <summary>
/// LoadTests/sched_stalls.py on a scheduler record written here (no perf needed): each stall's second gets the cause the
/// docs list (docs/performance.md, "The third session of 2026-12-07"), one stall per cause.
/// </summary>
public sealed class SchedStallsScriptTests : IDisposable
{
    private const string Python = "/usr/bin/python3";
    private const double Mono = 1000.0; // CLOCK_MONOTONIC at the reading
    private const long WallSeconds = 1_800_000_000; // the wall clock at the same reading
    private readonly string _dir = Directory.CreateTempSubdirectory("sched-stalls-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task Each_second_gets_the_cause_its_record_shows()
    {
        var timehist = new StringBuilder("           time    cpu  task name                       wait time  sch delay   run time\n");
        void Switch(double t, int cpu, string task, double waitMs, double delayMs, double runMs) =>
            timehist.Append(CultureInfo.InvariantCulture, $"   {t:F6} [{cpu:D4}]  {task,-32} {waitMs,9:F3} {delayMs,9:F3} {runMs,9:F3}\n");

        // +1 s: CPU 0 sits in the idle task for 14 ms while the loop thread is queued on it for 12 ms of them.
        Switch(1001.012, 0, "<idle>", 0, 0, 14);
        Switch(1001.014, 0, "ChatBroker read[11/10]", 0.5, 12, 2);
        Switch(1001.015, 1, "<idle>", 0, 0, 15);
        // +2 s: both CPUs run the whole window.
        Switch(1002.020, 0, "ChatBroker read[11/10]", 0, 0, 20);
        Switch(1002.020, 1, ".NET Sockets[21/20]", 0, 0, 20);
        // +3 s: RocksDB's flush thread runs 30 ms of a 50 ms stall.
        Switch(1003.040, 1, "rocksdb:high[12/10]", 0, 0, 30);
        Switch(1003.050, 0, "<idle>", 0, 0, 50);
        // +4 s: both CPUs idle for 120 ms; the broker's metrics have a commit of up to 250 ms in that second.
        Switch(1004.120, 0, "<idle>", 0, 0, 120);
        Switch(1004.120, 1, "<idle>", 0, 0, 120);
        // +5 s: idle cores, nothing in the metrics.
        Switch(1005.015, 0, "<idle>", 0, 0, 15);
        Switch(1005.015, 1, "<idle>", 0, 0, 15);
        await File.WriteAllTextAsync(Path.Combine(_dir, "timehist.txt"), timehist.ToString());
        await File.WriteAllTextAsync(Path.Combine(_dir, "clock"), string.Create(CultureInfo.InvariantCulture, $"{Mono} {WallSeconds}\n"));

        var stalls = new[]
        {
            Stall(1.000, 15, worstMs: 15, slowestCommitMs: 5),
            Stall(2.000, 20, worstMs: 18, slowestCommitMs: 5),
            Stall(3.000, 50, worstMs: 40, slowestCommitMs: 5),
            Stall(4.000, 120, worstMs: 120, slowestCommitMs: 250),
            Stall(5.000, 15, worstMs: 12, slowestCommitMs: 5),
        };
        await File.WriteAllTextAsync(Path.Combine(_dir, "run.json"), JsonSerializer.Serialize(new { stalls }));

        var (exit, stdout, stderr) = await RunAsync(Path.Combine(RepositoryRoot(), "LoadTests", "sched_stalls.py"), _dir);

        Assert.True(exit == 0, stderr);
        Assert.Contains("+1.00 s  15.0 ms long, worst 15.0 ms, 3 late; CPUs 7% busy; a CPU stayed idle 12.0 ms with a thread waiting for it", stdout, StringComparison.Ordinal);
        Assert.Contains("+2.00 s  20.0 ms long, worst 18.0 ms, 3 late; CPUs 100% busy", stdout, StringComparison.Ordinal);
        Assert.Contains("  flush or memtable switch: 1 (+3 s)", stdout, StringComparison.Ordinal);
        Assert.Contains("  slow commit: 1 (+4 s)", stdout, StringComparison.Ordinal);
        Assert.Contains("  idle vCPU woke late: 1 (+1 s)", stdout, StringComparison.Ordinal);
        Assert.Contains("  cores saturated: 1 (+2 s)", stdout, StringComparison.Ordinal);
        Assert.Contains("  cores idle: 1 (+5 s)", stdout, StringComparison.Ordinal);
    }

    private static object Stall(double atS, double durationMs, double worstMs, int slowestCommitMs) => new
    {
        at_s = atS,
        at_utc = DateTimeOffset.FromUnixTimeMilliseconds((WallSeconds * 1000) + (long)Math.Round(atS * 1000))
            .ToString("yyyy-MM-dd'T'HH:mm:ss.ffffff'+00:00'", CultureInfo.InvariantCulture),
        duration_ms = durationMs,
        messages = 3,
        worst_ms = worstMs,
        broker = new { slowest_commit_ms_at_most = slowestCommitMs },
        storage_log = Array.Empty<string>(),
    };

    private static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(params string[] arguments)
    {
        Assert.True(File.Exists(Python), $"{Python} is missing: run scripts/ensure-test-deps.sh (./test.sh does).");
        var start = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, await stdout, await stderr);
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ChatBroker.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no ChatBroker.sln above {AppContext.BaseDirectory}");
    }
}
