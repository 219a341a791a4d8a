using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace ChatBroker.Host.Tests.Infrastructure;

/// <summary>
/// Runs the real broker (chatbroker.dll, the Host project's output, copied beside the tests by the project
/// reference) as a child process with its own data directory and ports chosen by the OS (port 0), and
/// learns the bound ports from its log lines. Waits on output lines, never on sleeps.
/// </summary>
public sealed partial class BrokerProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly List<string> _output = [];
    private readonly Lock _outputLock = new();
    private readonly List<(Regex Pattern, TaskCompletionSource<Match> Signal)> _waiters = [];

    private readonly bool _ownsDataDir;

    private BrokerProcess(Process process, string dataDir, bool ownsDataDir)
    {
        _process = process;
        DataDir = dataDir;
        _ownsDataDir = ownsDataDir;
    }

    public string DataDir { get; }
    public IPEndPoint TcpEndPoint { get; private set; } = null!;
    public IPEndPoint AdminEndPoint { get; private set; } = null!;
    public int Pid => _process.Id;

    public string Output
    {
        get
        {
            lock (_outputLock)
            {
                return string.Join('\n', _output);
            }
        }
    }

    public static string BrokerDll => Path.Combine(AppContext.BaseDirectory, "chatbroker.dll");

    /// <summary>
    /// Starts `chatbroker serve` with ports 0 and waits for "Ready". Without <paramref name="dataDir"/> it uses
    /// a fresh directory and deletes it on dispose; a given directory belongs to the caller.
    /// </summary>
    public static async Task<BrokerProcess> StartAsync(string? dataDir = null, params string[] extraArgs)
    {
        RestoreDefaultSigInt();
        var owns = dataDir is null;
        dataDir ??= Path.Combine(Path.GetTempPath(), "chatbroker-test-" + Guid.NewGuid().ToString("N"));
        var args = new List<string>
        {
            "serve",
            "--set", "node.data_dir=" + dataDir,
            "--set", "tcp.listen=127.0.0.1:0",
            "--set", "admin.listen=127.0.0.1:0",
        };
        args.AddRange(extraArgs);
        var broker = new BrokerProcess(StartDotnet(BrokerDll, args, out _), dataDir, owns);
        broker.Attach();
        var tcp = broker.WaitForLineAsync(TcpLine());
        var admin = broker.WaitForLineAsync(AdminLine());
        await broker.WaitForLineAsync(ReadyLine()).WaitAsync(TimeSpan.FromSeconds(30));
        broker.TcpEndPoint = IPEndPoint.Parse((await tcp).Groups[1].Value);
        broker.AdminEndPoint = IPEndPoint.Parse((await admin).Groups[1].Value);
        return broker;
    }

    /// <summary>Starts `dotnet chatbroker.dll args…` with redirected output, in a working directory of its own.</summary>
    public static Process StartDotnet(string dll, IEnumerable<string> args, out string workingDirectory, IDictionary<string, string>? environment = null)
    {
        workingDirectory = Path.Combine(Path.GetTempPath(), "chatbroker-cwd-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(workingDirectory);
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        info.ArgumentList.Add(dll);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        foreach (var key in info.Environment.Keys.ToList())
        {
            if (key.StartsWith("CHATBROKER__", StringComparison.OrdinalIgnoreCase))
            {
                info.Environment.Remove(key);
            }
        }

        if (environment is not null)
        {
            foreach (var (k, v) in environment)
            {
                info.Environment[k] = v;
            }
        }

        return Process.Start(info)!;
    }

    /// <summary>Runs `dotnet chatbroker.dll args…` to completion and returns exit code and output.</summary>
    public static async Task<(int ExitCode, string StdOut, string StdErr)> RunCliAsync(string[] args, IDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        using var process = StartDotnet(BrokerDll, args, out var cwd, environment);
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        _ = workingDirectory;
        try
        {
            Directory.Delete(cwd, recursive: true);
        }
        catch (IOException)
        {
        }

        return (process.ExitCode, await stdout, await stderr);
    }

    private void Attach()
    {
        _process.OutputDataReceived += (_, e) => OnLine(e.Data);
        _process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_outputLock)
        {
            _output.Add(line);
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                var m = _waiters[i].Pattern.Match(line);
                if (m.Success)
                {
                    _waiters[i].Signal.TrySetResult(m);
                    _waiters.RemoveAt(i);
                }
            }
        }
    }

    /// <summary>Completes when a line matching <paramref name="pattern"/> has been written (including earlier lines).</summary>
    public Task<Match> WaitForLineAsync(Regex pattern)
    {
        lock (_outputLock)
        {
            foreach (var line in _output)
            {
                var m = pattern.Match(line);
                if (m.Success)
                {
                    return Task.FromResult(m);
                }
            }

            var tcs = new TaskCompletionSource<Match>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((pattern, tcs));
            return tcs.Task;
        }
    }

    public void SendSignal(int signal)
    {
        if (Kill(_process.Id, signal) != 0)
        {
            throw new InvalidOperationException($"kill({_process.Id}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>SIGKILL: no shutdown code runs, as in a crash.</summary>
    public async Task KillAsync()
    {
        _process.Kill(entireProcessTree: true);
        await _process.WaitForExitAsync();
    }

    public const int SigTerm = 15;
    public const int SigInt = 2;

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        try
        {
            await _process.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException e)
        {
            // Say what the broker was doing: its log ends where shutdown got stuck.
            throw new TimeoutException($"The broker did not exit within {timeout}. Its output:{Environment.NewLine}{Output}", e);
        }

        return _process.ExitCode;
    }

    public bool HasExited => _process.HasExited;

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        _process.Dispose();
        if (!_ownsDataDir)
        {
            return;
        }

        try
        {
            Directory.Delete(DataDir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "signal")]
    private static partial nint Signal(int signal, nint handler);

    /// <summary>
    /// A test run started in the background by a non-interactive shell (<c>./test.sh &amp;</c>) inherits SIGINT
    /// ignored, and so would every broker it starts: .NET, like any Unix program, leaves an inherited ignored
    /// SIGINT alone, and the Ctrl-C test would wait in vain. Restore the default in this process (only when
    /// it is ignored) so the brokers it starts get Ctrl-C as a terminal would deliver it.
    /// </summary>
    private static void RestoreDefaultSigInt()
    {
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        if (line is not null && (Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16) & (1UL << (SigInt - 1))) != 0)
        {
            Signal(SigInt, 0 /* SIG_DFL */);
        }
    }

    [GeneratedRegex(@"Native protocol listening on (\S+)")]
    private static partial Regex TcpLine();

    [GeneratedRegex(@"Admin endpoint on http://(\S+) ")]
    private static partial Regex AdminLine();

    [GeneratedRegex(@"\bReady\b")]
    public static partial Regex ReadyLine();
}
