using System.Runtime.InteropServices;

namespace ChatBroker.LoadTests;

/// <summary>Everything one run reports; written as JSON by <see cref="ReportWriter"/>.</summary>
public sealed class RunResult
{
    public required string Scenario { get; init; }
    public string Command { get; init; } = Environment.CommandLine;
    public DateTimeOffset StartedUtc { get; init; } = DateTimeOffset.UtcNow;
    public double DurationS { get; set; }
    public Dictionary<string, string> Parameters { get; init; } = [];
    public MachineInfo Machine { get; init; } = MachineInfo.Current();
    public string Broker { get; set; } = "";

    public long Sent { get; set; }
    public long SentAcked { get; set; }
    public long Delivered { get; set; }
    public long Lost { get; set; }
    public long Errors { get; set; }
    public long Gaps { get; set; }
    public long Duplicates { get; set; }

    /// <summary>Deliveries (or connections, drained messages…) per second over the measured interval.</summary>
    public double ThroughputPerS { get; set; }
    public string ThroughputUnit { get; set; } = "messages delivered";
    public LatencySummary? LatencyMs { get; set; }

    public Dictionary<string, double> Figures { get; init; } = [];
    public List<TargetCheck> Targets { get; init; } = [];
    public List<string> Notes { get; init; } = [];
    public IReadOnlyList<SeriesPoint> Series { get; set; } = [];

    /// <summary>Paced runs: deliveries later than --stall-ms merged into episodes, with the broker's evidence (<see cref="StallReport"/>).</summary>
    public List<StallEpisode>? Stalls { get; set; }

    /// <summary>Zero loss, gaps, duplicates and errors, and every target met.</summary>
    public bool Passed => Lost == 0 && Gaps == 0 && Duplicates == 0 && Errors == 0 && Targets.TrueForAll(t => t.Met);

    public void AddTarget(string name, double measured, string comparison, double target)
    {
        var met = comparison == ">=" ? measured >= target : measured <= target;
        Targets.Add(new TargetCheck(name, comparison, target, Math.Round(measured, 4), met, target == 0 ? 0 : Math.Round(measured / target, 3)));
    }
}

/// <summary>A figure from the "done when" list: ratio = measured / target.</summary>
public sealed record TargetCheck(string Name, string Comparison, double Target, double Measured, bool Met, double Ratio);

public sealed record MachineInfo(int Cores, string Cpu, string Os, string Dotnet, long MemoryMb, string Host)
{
    public static MachineInfo Current()
    {
        var cpu = "unknown";
        long memoryMb = 0;
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
            {
                if (line.StartsWith("model name", StringComparison.Ordinal))
                {
                    cpu = line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
                    break;
                }
            }

            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                {
                    memoryMb = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / 1024;
                    break;
                }
            }
        }
        catch (IOException)
        {
        }

        return new MachineInfo(Environment.ProcessorCount, cpu, RuntimeInformation.OSDescription,
            RuntimeInformation.FrameworkDescription, memoryMb, Environment.MachineName);
    }
}
