using System.Globalization;

namespace ChatBroker.LoadTests;

/// <summary>
/// Keeps the whole output of the brokers the harness starts when <see cref="Directory"/> is set
/// ($CHATBROKER_LOAD_LOGS, or a checker run's log directory): one file per node name (node.name=…, else
/// "broker"), appended across restarts, each line stamped with the harness's clock. Without it the harness keeps only
/// the first lines of a start, for its error message.
/// </summary>
public static class BrokerLog
{
    private static readonly Lock Gate = new();
    private static readonly Dictionary<string, StreamWriter> Writers = [];

    public static string? Directory { get; set; } = Environment.GetEnvironmentVariable("CHATBROKER_LOAD_LOGS") is { Length: > 0 } d ? d : null;

    /// <summary>The log file of a broker started with <paramref name="arguments"/>, or null when logs are not kept.</summary>
    public static string? PathFor(IEnumerable<string> arguments)
    {
        if (Directory is not { } dir)
        {
            return null;
        }

        var name = "broker";
        foreach (var a in arguments)
        {
            if (a.StartsWith("node.name=", StringComparison.Ordinal))
            {
                name = a["node.name=".Length..];
            }
        }

        return Path.Combine(dir, name + ".log");
    }

    public static void Append(string? path, string line)
    {
        if (path is null)
        {
            return;
        }

        lock (Gate)
        {
            if (!Writers.TryGetValue(path, out var writer))
            {
                System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                Writers[path] = writer = new StreamWriter(path, append: true) { AutoFlush = true };
            }

            writer.Write(DateTime.UtcNow.ToString("HH:mm:ss.fff", CultureInfo.InvariantCulture));
            writer.Write(' ');
            writer.WriteLine(line);
        }
    }
}
