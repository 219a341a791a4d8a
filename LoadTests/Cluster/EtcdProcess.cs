using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace ChatBroker.LoadTests.Cluster;

/// <summary>
/// A single-member etcd on 127.0.0.1 for a cluster run, started by scripts/etcd.sh (which installs Debian's
/// etcd-server when missing and picks free ports) in a state directory of its own. The harness knows its pid:
/// the etcd nemesis kills it with SIGKILL and starts it again on the same ports and data, and
/// <see cref="DisposeAsync"/> stops it by pid and removes the directory.
/// </summary>
public sealed class EtcdProcess : IAsyncDisposable
{
    private readonly string _stateDir;

    private EtcdProcess(string stateDir, string endpoint)
    {
        _stateDir = stateDir;
        Endpoint = endpoint;
    }

    /// <summary>The client URL (http://127.0.0.1:PORT).</summary>
    public string Endpoint { get; }

    /// <summary>The pid scripts/etcd.sh recorded for the running member; null when it is down.</summary>
    public int? Pid => File.Exists(Path.Combine(_stateDir, "pid"))
        && int.TryParse(File.ReadAllText(Path.Combine(_stateDir, "pid")).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
        && Directory.Exists("/proc/" + pid.ToString(CultureInfo.InvariantCulture)) ? pid : null;

    /// <summary>$CHATBROKER_SCRIPTS, else the scripts/ directory of the checkout this harness was built from.</summary>
    public static string ScriptsDirectory =>
        Environment.GetEnvironmentVariable("CHATBROKER_SCRIPTS") is { Length: > 0 } path ? path
        : typeof(EtcdProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "ChatBrokerScripts").Value!;

    public static async Task<EtcdProcess> StartAsync()
    {
        var stateDir = Path.Combine(Path.GetTempPath(), "chatbroker-load-etcd-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var endpoint = (await RunScriptAsync("start", "--state-dir", stateDir).ConfigureAwait(false)).Trim();
            return new EtcdProcess(stateDir, endpoint);
        }
        catch
        {
            await RunScriptAsync("stop", "--state-dir", stateDir, "--purge").ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>SIGKILL, no shutdown: waits until the process is gone (bounded).</summary>
    public async Task KillHardAsync()
    {
        if (Pid is not { } pid)
        {
            return;
        }

        using (var victim = Process.GetProcessById(pid))
        {
            victim.Kill();
        }

        var gone = Stopwatch.StartNew();
        while (Directory.Exists("/proc/" + pid.ToString(CultureInfo.InvariantCulture)) && gone.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    /// <summary>Starts it again on the same ports and data directory (the state dir keeps both); waits until healthy.</summary>
    public Task RestartAsync() => RunScriptAsync("start", "--state-dir", _stateDir);

    public async ValueTask DisposeAsync()
    {
        try
        {
            await RunScriptAsync("stop", "--state-dir", _stateDir, "--purge").ConfigureAwait(false);
        }
        finally
        {
            // The script stops it by pid; if the script itself failed, do it here.
            if (Pid is { } pid)
            {
                using var left = Process.GetProcessById(pid);
                left.Kill();
            }
        }
    }

    private static async Task<string> RunScriptAsync(params string[] arguments)
    {
        var info = new ProcessStartInfo(Path.Combine(ScriptsDirectory, "etcd.sh"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        using var script = Process.Start(info) ?? throw new InvalidOperationException("could not run scripts/etcd.sh");
        var stdout = script.StandardOutput.ReadToEndAsync();
        var stderr = script.StandardError.ReadToEndAsync();
        try
        {
            // Installing etcd-server with apt on first use can take a while; a start is normally under a second.
            await script.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            script.Kill(entireProcessTree: true);
            throw new InvalidOperationException("scripts/etcd.sh " + string.Join(' ', arguments) + " did not finish within 5 minutes");
        }

        if (script.ExitCode != 0)
        {
            throw new InvalidOperationException($"scripts/etcd.sh {string.Join(' ', arguments)} failed (exit {script.ExitCode}): {(await stderr.ConfigureAwait(false)).Trim()}");
        }

        return await stdout.ConfigureAwait(false);
    }
}
