using System.Diagnostics;
using System.Globalization;
using Spectre.Console;

namespace ChatBroker.LoadTests;

/// <summary>
/// Samples a run's <see cref="LoadStats"/> once a second, keeps the per-second series for the report, and
/// shows it: a Spectre.Console live table in a terminal, one plain line per second when output is
/// redirected (CI, a log file), so the run reads the same in both.
/// </summary>
public sealed class LiveProgress(string title, string rateLabel, LoadStats stats, Func<string>? extra = null)
{
    private readonly List<SeriesPoint> _series = [];

    public IReadOnlyList<SeriesPoint> Series => _series;

    public static bool Interactive => !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;

    /// <summary>Samples until <paramref name="until"/> completes; the last partial second is included.</summary>
    public async Task RunAsync(Task until)
    {
        if (Interactive)
        {
            var table = NewTable();
            await AnsiConsole.Live(table).AutoClear(false).StartAsync(async ctx =>
            {
                await SampleLoopAsync(until, point =>
                {
                    table.AddRow(Cells(point));
                    while (table.Rows.Count > 15)
                    {
                        table.Rows.RemoveAt(0);
                    }

                    ctx.Refresh();
                }).ConfigureAwait(false);
            }).ConfigureAwait(false);
        }
        else
        {
            Console.WriteLine($"{title}: t(s) {rateLabel}/s p50(ms) p99(ms) max(ms) errors");
            await SampleLoopAsync(until, point => Console.WriteLine($"{title}: {string.Join(' ', Cells(point))}")).ConfigureAwait(false);
        }
    }

    private Table NewTable()
    {
        var table = new Table().Title(title).Border(TableBorder.Rounded);
        table.AddColumn("t (s)");
        table.AddColumn(rateLabel + "/s");
        table.AddColumn("p50 ms");
        table.AddColumn("p99 ms");
        table.AddColumn("max ms");
        table.AddColumn("errors");
        table.AddColumn("total");
        table.AddColumn("");
        return table;
    }

    private string[] Cells(SeriesPoint p) =>
    [
        p.T.ToString("0.0", CultureInfo.InvariantCulture),
        p.Rate.ToString("N0", CultureInfo.InvariantCulture),
        p.P50Ms.ToString("0.###", CultureInfo.InvariantCulture),
        p.P99Ms.ToString("0.###", CultureInfo.InvariantCulture),
        p.MaxMs.ToString("0.###", CultureInfo.InvariantCulture),
        p.Errors.ToString(CultureInfo.InvariantCulture),
        Volatile.Read(ref stats.Completed).ToString("N0", CultureInfo.InvariantCulture),
        Markup.Escape(extra?.Invoke() ?? ""),
    ];

    private async Task SampleLoopAsync(Task until, Action<SeriesPoint> show)
    {
        var clock = Stopwatch.StartNew();
        _ = stats.Latency.TakeInterval(); // the first second starts now (what came before stays in the run's total)
        var lastCompleted = Volatile.Read(ref stats.Completed);
        var lastT = 0.0;
        while (true)
        {
            var finished = await Task.WhenAny(until, Task.Delay(1000)).ConfigureAwait(false) == until;
            var t = clock.Elapsed.TotalSeconds;
            var interval = stats.Latency.TakeInterval();
            var completed = Volatile.Read(ref stats.Completed);
            var dt = t - lastT;
            if (dt > 0.05)
            {
                var point = new SeriesPoint(
                    Math.Round(t, 2),
                    Math.Round((completed - lastCompleted) / dt, 1),
                    interval.ValueAt(50) / 1e6,
                    interval.ValueAt(99) / 1e6,
                    interval.Max / 1e6,
                    Volatile.Read(ref stats.Errors));
                _series.Add(point);
                show(point);
            }

            lastCompleted = completed;
            lastT = t;
            if (finished)
            {
                return;
            }
        }
    }
}
