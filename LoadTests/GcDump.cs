using System.Diagnostics;

namespace ChatBroker.LoadTests;

/// <summary>
/// Takes a heap dump of the broker with dotnet-gcdump (installed with `dotnet tool install -g dotnet-gcdump`).
/// The dump induces a full blocking GC in the broker, so memory read right after it counts live objects only,
/// not the garbage an idle broker has no reason to collect; and the dump shows which types hold the memory
/// (`dotnet-gcdump report file.gcdump`).
/// </summary>
public static class GcDump
{
    public static string? ToolPath
    {
        get
        {
            var home = Environment.GetEnvironmentVariable("HOME") ?? "";
            foreach (var candidate in new[] { Path.Combine(home, ".dotnet", "tools", "dotnet-gcdump"), "/usr/local/bin/dotnet-gcdump", "/usr/bin/dotnet-gcdump" })
            {
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }

            return null;
        }
    }

    /// <summary>Writes <paramref name="path"/>; false when the tool is missing or failed.</summary>
    public static async Task<bool> CollectAsync(int pid, string path)
    {
        if (ToolPath is not { } tool)
        {
            return false;
        }

        var info = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "collect", "-p", pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "-o", path })
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info);
        if (process is null)
        {
            return false;
        }

        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(120)).ConfigureAwait(false);
        await Task.WhenAll(output, errors).ConfigureAwait(false);
        return process.ExitCode == 0 && File.Exists(path);
    }
}
