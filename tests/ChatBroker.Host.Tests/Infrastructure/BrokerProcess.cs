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
    private string? _workingDirectory;

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
    public static Task<BrokerProcess> StartAsync(string? dataDir = null, params string[] extraArgs) =>
        LaunchAsync(new BrokerLaunch { DataDir = dataDir }, extraArgs);

    /// <summary>Starts `chatbroker serve` as <paramref name="launch"/> says, with ports 0, and waits for "Ready".</summary>
    public static async Task<BrokerProcess> LaunchAsync(BrokerLaunch launch, params string[] extraArgs)
    {
        RestoreDefaultSigInt();
        var owns = launch.DataDir is null;
        var dataDir = launch.DataDir ?? Path.Combine(Path.GetTempPath(), "chatbroker-test-" + Guid.NewGuid().ToString("N"));
        var args = new List<string> { "serve" };
        if (!launch.DefaultDataDir)
        {
            args.AddRange(["--set", "node.data_dir=" + dataDir]);
        }

        args.AddRange(["--set", "tcp.listen=127.0.0.1:0", "--set", "admin.listen=127.0.0.1:0"]);
        args.AddRange(extraArgs);
        var process = launch.Wrapper is { Count: > 0 } wrapper
            ? StartProcess(wrapper[0], [.. wrapper.Skip(1), .. launch.Executable is null ? ["dotnet", BrokerDll] : new[] { launch.Executable }, .. args], out var workingDirectory, launch.Environment)
            : launch.Executable is null
            ? StartDotnet(BrokerDll, args, out workingDirectory, launch.Environment)
            : StartProcess(launch.Executable, args, out workingDirectory, launch.Environment);
        if (launch.DefaultDataDir)
        {
            dataDir = Path.Combine(workingDirectory, "data");
        }

        var broker = new BrokerProcess(process, dataDir, owns) { _workingDirectory = workingDirectory };
        broker.Attach();
        var tcp = broker.WaitForLineAsync(TcpLine());
        var admin = broker.WaitForLineAsync(AdminLine());
        try
        {
            await broker.WaitForLineAsync(ReadyLine()).WaitAsync(launch.ReadyTimeout);
        }
        catch (TimeoutException e)
        {
            var output = broker.Output;
            await broker.DisposeAsync();
            throw new TimeoutException($"The broker was not ready within {launch.ReadyTimeout}. Its output:{Environment.NewLine}{output}", e);
        }

        broker.TcpEndPoint = IPEndPoint.Parse((await tcp).Groups[1].Value);
        broker.AdminEndPoint = IPEndPoint.Parse((await admin).Groups[1].Value);
        return broker;
    }

    /// <summary>Starts `dotnet chatbroker.dll args…` with redirected output, in a working directory of its own.</summary>
    public static Process StartDotnet(string dll, IEnumerable<string> args, out string workingDirectory, IDictionary<string, string>? environment = null) =>
        StartProcess("dotnet", args.Prepend(dll), out workingDirectory, environment);

    /// <summary>
    /// Starts <paramref name="fileName"/> with redirected output, in a new empty working directory, without the
    /// parent's CHATBROKER__ settings or service-manager variables (a test run under systemd would hand its
    /// NOTIFY_SOCKET to every broker): only <paramref name="environment"/> adds them.
    /// </summary>
    public static Process StartProcess(string fileName, IEnumerable<string> args, out string workingDirectory, IDictionary<string, string>? environment = null)
    {
        workingDirectory = Path.Combine(Path.GetTempPath(), "chatbroker-cwd-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(workingDirectory);
        var info = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        foreach (var key in info.Environment.Keys.ToList())
        {
            if (key.StartsWith("CHATBROKER__", StringComparison.OrdinalIgnoreCase) || ServiceManagerVariables.Contains(key))
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

    private static readonly string[] ServiceManagerVariables = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID", "LISTEN_PID", "LISTEN_FDS"];

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

    /// <summary>Lines written so far: a mark for <see cref="WaitForLineAsync(Regex, int)"/>.</summary>
    public int LineCount
    {
        get
        {
            lock (_outputLock)
            {
                return _output.Count;
            }
        }
    }

    /// <summary>Completes when a line matching <paramref name="pattern"/> has been written (including earlier lines).</summary>
    public Task<Match> WaitForLineAsync(Regex pattern) => WaitForLineAsync(pattern, 0);

    /// <summary>Completes when a line from number <paramref name="fromLine"/> on (a <see cref="LineCount"/> taken
    /// before) matches <paramref name="pattern"/>.</summary>
    public Task<Match> WaitForLineAsync(Regex pattern, int fromLine)
    {
        lock (_outputLock)
        {
            for (var i = fromLine; i < _output.Count; i++)
            {
                var m = pattern.Match(_output[i]);
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
        if (_ownsDataDir)
        {
            DeleteDirectory(DataDir);
        }

        if (_workingDirectory is not null)
        {
            DeleteDirectory(_workingDirectory);
        }
    }

    private static void DeleteDirectory(string path)
    {
        try
        {
            Directory.Delete(path, recursive: true);
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

/// <summary>How <see cref="BrokerProcess.LaunchAsync"/> starts the broker.</summary>
public sealed record BrokerLaunch
{
    /// <summary>A program to run directly (the published single file); null runs `dotnet chatbroker.dll`.</summary>
    public string? Executable { get; init; }

    /// <summary>A command that runs the broker command line (e.g. <c>ip netns exec NS</c>, which execs it: the
    /// process is still the broker's, for signals and kill -9); null runs it directly.</summary>
    public IReadOnlyList<string>? Wrapper { get; init; }

    /// <summary>Variables added to the broker's environment.</summary>
    public IDictionary<string, string>? Environment { get; init; }

    /// <summary>The data directory (the caller's); null: a fresh one deleted on dispose.</summary>
    public string? DataDir { get; init; }

    /// <summary>Sets no node.data_dir: the broker keeps its data in ./data of its (new, empty) working directory.</summary>
    public bool DefaultDataDir { get; init; }

    public TimeSpan ReadyTimeout { get; init; } = TimeSpan.FromSeconds(30);
}
