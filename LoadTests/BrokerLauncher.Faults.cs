using System.Diagnostics;
using System.Globalization;

namespace ChatBroker.LoadTests;

/// <summary>
/// Faults for the checker's nemesis on a broker this harness started: kill -9 and restart on the same data
/// directory and ports, SIGSTOP/SIGCONT. A target broker (no process of ours) has none of these.
/// </summary>
public sealed partial class BrokerLauncher
{
    public bool CanInjectFaults => _process is not null;

    /// <summary>SIGKILL: no shutdown, no flush; what the broker acknowledged must survive it.</summary>
    public async Task KillHardAsync()
    {
        var process = _process ?? throw new InvalidOperationException("not a broker this harness started");
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: false); // SIGKILL on Unix
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }
    }

    /// <summary>Starts the broker again with the arguments of the last start, its data directory and the ports it had; waits for "Ready".</summary>
    public async Task RestartAsync()
    {
        var old = _process ?? throw new InvalidOperationException("not a broker this harness started");
        if (!old.HasExited)
        {
            throw new InvalidOperationException("the broker is still running; kill it first");
        }

        var info = new ProcessStartInfo(old.StartInfo.FileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var argument in old.StartInfo.ArgumentList)
        {
            // The first start asked for port 0; the clients know the ports it got, so keep them.
            info.ArgumentList.Add(argument.StartsWith("tcp.listen=", StringComparison.Ordinal) ? "tcp.listen=" + TcpEndPoint
                : argument.StartsWith("admin.listen=", StringComparison.Ordinal) && AdminUri is not null ? "admin.listen=" + AdminUri.Authority
                : argument);
        }

        info.Environment.Clear();
        foreach (var (key, value) in old.StartInfo.Environment)
        {
            info.Environment[key] = value;
        }

        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var lines = new List<string>();
        var logPath = BrokerLog.PathFor(info.ArgumentList);
        BrokerLog.Append(logPath, "---- restarted by the harness ----");
        void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            BrokerLog.Append(logPath, line);

            lock (_outputLock)
            {
                if (lines.Count < 200)
                {
                    lines.Add(line);
                }
            }

            if (ReadyLine().IsMatch(line))
            {
                ready.TrySetResult();
            }
        }

        var process = Process.Start(info) ?? throw new InvalidOperationException("could not start dotnet");
        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;
        old.Dispose();
        await Task.WhenAny(ready.Task, process.WaitForExitAsync()).WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
        if (!ready.Task.IsCompleted)
        {
            lock (_outputLock)
            {
                throw new InvalidOperationException("the restarted broker exited before it was ready:\n" + string.Join('\n', lines));
            }
        }
    }

    /// <summary>SIGSTOP: the process freezes with its sockets open (a long GC pause, a stalled VM).</summary>
    public void Pause() => Signal("-STOP");

    /// <summary>SIGCONT after <see cref="Pause"/>.</summary>
    public void Resume() => Signal("-CONT");

    private void Signal(string signal)
    {
        var process = _process ?? throw new InvalidOperationException("not a broker this harness started");
        using var kill = Process.Start(new ProcessStartInfo("kill", [signal, process.Id.ToString(CultureInfo.InvariantCulture)]) { UseShellExecute = false })
            ?? throw new InvalidOperationException("could not run kill");
        kill.WaitForExit();
    }
}
