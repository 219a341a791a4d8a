using System.Diagnostics;
using System.Globalization;

namespace ChatBroker.Storage.Tests;

/// <summary>Runs tests/ChatBroker.Storage.CrashChild (built alongside this project) and reads its stdout.</summary>
internal sealed class CrashChildProcess : IDisposable
{
    private static readonly TimeSpan LineTimeout = TimeSpan.FromSeconds(30);
    private readonly Process _process;

    private CrashChildProcess(Process process) => _process = process;

    public static CrashChildProcess Start(string path, int seed, int round, int conversations, int callers)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(ChildAssembly());
        foreach (var arg in new object[] { path, seed, round, conversations, callers })
        {
            info.ArgumentList.Add(Convert.ToString(arg, CultureInfo.InvariantCulture)!);
        }

        return new CrashChildProcess(Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start."));
    }

    /// <summary>The next complete line, or null at end of output. Lines end in " ." when complete: a
    /// line cut short by the kill is skipped.</summary>
    public async Task<string?> ReadLineAsync()
    {
        using var timeout = new CancellationTokenSource(LineTimeout);
        while (true)
        {
            string? line;
            try
            {
                line = await _process.StandardOutput.ReadLineAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException("The crash child printed nothing for 30 s. stderr: " + ReadErrorIfExited());
            }

            if (line is null || line.EndsWith(" .", StringComparison.Ordinal))
            {
                return line;
            }
        }
    }

    public async Task WaitForLineAsync(Func<string, bool> predicate)
    {
        while (await ReadLineAsync() is { } line)
        {
            if (predicate(line))
            {
                return;
            }
        }

        throw new InvalidOperationException("The crash child exited early. stderr: " + await _process.StandardError.ReadToEndAsync());
    }

    /// <summary>SIGKILL (Process.Kill sends SIGKILL on Unix) and wait for the process to be gone.</summary>
    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }

        _process.WaitForExit();
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }

    private string ReadErrorIfExited() => _process.HasExited ? _process.StandardError.ReadToEnd() : "(still running)";

    private static string ChildAssembly()
    {
        // tests/ChatBroker.Storage.Tests/bin/<Configuration>/<tfm>/ → tests/ChatBroker.Storage.CrashChild/bin/<Configuration>/<tfm>/
        var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        var tfm = here.Name;
        var configuration = here.Parent!.Name;
        var tests = here.Parent.Parent!.Parent!.Parent!.FullName;
        var path = Path.Combine(tests, "ChatBroker.Storage.CrashChild", "bin", configuration, tfm, "ChatBroker.Storage.CrashChild.dll");
        return File.Exists(path)
            ? path
            : throw new FileNotFoundException("Build tests/ChatBroker.Storage.CrashChild first (the test project references it).", path);
    }
}
