using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace ChatBroker.LoadTests;

/// <summary>Writes a run's result: a summary on the console, JSON, and a self-contained HTML chart (inline SVG, no scripts).</summary>
public static class ReportWriter
{
    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static async Task WriteAsync(RunResult result, string? jsonPath, string? htmlPath)
    {
        PrintSummary(result);
        if (jsonPath is not null)
        {
            await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(result, Json)).ConfigureAwait(false);
            Console.WriteLine($"JSON result: {jsonPath}");
        }

        if (htmlPath is not null)
        {
            await File.WriteAllTextAsync(htmlPath, Html(result)).ConfigureAwait(false);
            Console.WriteLine($"HTML chart: {htmlPath}");
        }
    }

    private static void PrintSummary(RunResult r)
    {
        var lines = new List<string>
        {
            $"scenario {r.Scenario}  ({string.Join(", ", r.Parameters.Select(p => p.Key + "=" + p.Value))})",
            $"machine  {r.Machine.Cores} cores, {r.Machine.Cpu}, {r.Machine.Os}, {r.Machine.Dotnet}",
            $"broker   {r.Broker}",
            F($"{r.ThroughputUnit}: {r.ThroughputPerS:N0}/s over {r.DurationS:0.0} s"),
            F($"sent {r.Sent:N0}  SENT {r.SentAcked:N0}  delivered {r.Delivered:N0}  lost {r.Lost}  errors {r.Errors}  gaps {r.Gaps}  duplicates {r.Duplicates}"),
        };
        if (r.LatencyMs is { Count: > 0 } l)
        {
            lines.Add(F($"latency ms (n={l.Count:N0}): p50 {l.P50Ms:0.###}  p90 {l.P90Ms:0.###}  p99 {l.P99Ms:0.###}  p99.9 {l.P999Ms:0.###}  max {l.MaxMs:0.###}"));
        }

        foreach (var (k, v) in r.Figures)
        {
            lines.Add(F($"{k}: {v:N2}"));
        }

        lines.AddRange(StallReport.Describe(r));
        foreach (var t in r.Targets)
        {
            lines.Add(F($"target {t.Name}: {t.Measured:N3} {t.Comparison} {t.Target:N3} -> {(t.Met ? "MET" : "NOT MET")} (ratio {t.Ratio:0.###})"));
        }

        foreach (var n in r.Notes)
        {
            lines.Add("note: " + n);
        }

        lines.Add(r.Passed ? "RESULT: PASS" : "RESULT: FAIL");
        foreach (var line in lines)
        {
            if (LiveProgress.Interactive)
            {
                AnsiConsole.MarkupLine(line.StartsWith("RESULT: PASS", StringComparison.Ordinal) ? "[green]" + Markup.Escape(line) + "[/]"
                    : line.StartsWith("RESULT", StringComparison.Ordinal) || line.Contains("NOT MET", StringComparison.Ordinal) ? "[red]" + Markup.Escape(line) + "[/]"
                    : Markup.Escape(line));
            }
            else
            {
                Console.WriteLine(line);
            }
        }
    }

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    /// <summary>Two stacked charts over time: rate, and p50/p99 latency. Plain SVG so the file opens anywhere offline.</summary>
    public static string Html(RunResult r)
    {
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>ChatBroker load: ")
            .Append(WebUtility.HtmlEncode(r.Scenario))
            .Append("</title><style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f4f4f4}.met{color:#080}.miss{color:#c00}</style></head><body>");
        sb.Append("<h1>").Append(WebUtility.HtmlEncode(r.Scenario)).Append("</h1><p><code>")
            .Append(WebUtility.HtmlEncode(r.Command)).Append("</code></p><p>")
            .Append(WebUtility.HtmlEncode(F($"{r.StartedUtc:u} · {r.Machine.Cores} cores {r.Machine.Cpu} · {r.Machine.Dotnet} · broker {r.Broker}")))
            .Append("</p>");
        sb.Append("<table><tr><th>").Append(WebUtility.HtmlEncode(r.ThroughputUnit)).Append("/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>lost</th><th>gaps</th><th>dups</th><th>errors</th></tr><tr>");
        var l = r.LatencyMs;
        foreach (var v in new[] { r.ThroughputPerS, l?.P50Ms ?? 0, l?.P90Ms ?? 0, l?.P99Ms ?? 0, l?.P999Ms ?? 0, l?.MaxMs ?? 0, r.Lost, r.Gaps, r.Duplicates, r.Errors })
        {
            sb.Append("<td>").Append(v.ToString("#,0.###", CultureInfo.InvariantCulture)).Append("</td>");
        }

        sb.Append("</tr></table>");
        if (r.Targets.Count > 0)
        {
            sb.Append("<h2>Targets</h2><table><tr><th>target</th><th>measured</th><th>ratio</th><th></th></tr>");
            foreach (var t in r.Targets)
            {
                sb.Append(F($"<tr><td style=\"text-align:left\">{WebUtility.HtmlEncode(t.Name)} {WebUtility.HtmlEncode(t.Comparison)} {t.Target:#,0.###}</td><td>{t.Measured:#,0.###}</td><td>{t.Ratio:0.###}</td><td class=\"{(t.Met ? "met" : "miss")}\">{(t.Met ? "met" : "not met")}</td></tr>"));
            }

            sb.Append("</table>");
        }

        sb.Append("<h2>").Append(WebUtility.HtmlEncode(r.ThroughputUnit)).Append(" per second</h2>");
        sb.Append(Chart(r.Series, [("rate", p => p.Rate, "#1f77b4")], "/s"));
        sb.Append("<h2>Latency per second (ms)</h2>");
        sb.Append(Chart(r.Series, [("p50", p => p.P50Ms, "#2ca02c"), ("p99", p => p.P99Ms, "#d62728")], " ms"));
        sb.Append("</body></html>\n");
        return sb.ToString();
    }

    private static string Chart(IReadOnlyList<SeriesPoint> series, (string Name, Func<SeriesPoint, double> Value, string Color)[] lines, string unit)
    {
        const double width = 800, height = 260, left = 70, right = 20, top = 10, bottom = 30;
        var sb = new StringBuilder();
        sb.Append(F($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" style=\"border:1px solid #ddd\">"));
        if (series.Count == 0)
        {
            return sb.Append("<text x=\"20\" y=\"40\">no samples</text></svg>").ToString();
        }

        var maxT = Math.Max(1, series[^1].T);
        var maxY = 0.0;
        foreach (var p in series)
        {
            foreach (var line in lines)
            {
                maxY = Math.Max(maxY, line.Value(p));
            }
        }

        maxY = NiceCeiling(maxY);
        double X(double t) => left + ((width - left - right) * t / maxT);
        double Y(double v) => height - bottom - ((height - top - bottom) * v / maxY);
        for (var i = 0; i <= 4; i++)
        {
            var v = maxY * i / 4;
            sb.Append(F($"<line x1=\"{left}\" y1=\"{Y(v):0.#}\" x2=\"{width - right}\" y2=\"{Y(v):0.#}\" stroke=\"#eee\"/>"));
            sb.Append(F($"<text x=\"{left - 5}\" y=\"{Y(v) + 4:0.#}\" font-size=\"11\" text-anchor=\"end\">{v:#,0.###}</text>"));
        }

        for (var i = 0; i <= 5; i++)
        {
            var t = maxT * i / 5;
            sb.Append(F($"<text x=\"{X(t):0.#}\" y=\"{height - 10}\" font-size=\"11\" text-anchor=\"middle\">{t:0.#} s</text>"));
        }

        var legendX = left + 10;
        foreach (var line in lines)
        {
            sb.Append("<polyline fill=\"none\" stroke-width=\"2\" stroke=\"").Append(line.Color).Append("\" points=\"");
            foreach (var p in series)
            {
                sb.Append(F($"{X(p.T):0.#},{Y(line.Value(p)):0.#} "));
            }

            sb.Append("\"/>");
            sb.Append(F($"<text x=\"{legendX}\" y=\"{top + 14}\" font-size=\"12\" fill=\"{line.Color}\">{line.Name}{unit}</text>"));
            legendX += 90;
        }

        return sb.Append("</svg>").ToString();
    }

    private static double NiceCeiling(double v)
    {
        if (v <= 0)
        {
            return 1;
        }

        var magnitude = Math.Pow(10, Math.Floor(Math.Log10(v)));
        foreach (var step in new[] { 1, 2, 2.5, 5, 10 })
        {
            if (step * magnitude >= v)
            {
                return step * magnitude;
            }
        }

        return 10 * magnitude;
    }
}
