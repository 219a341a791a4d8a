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
    private readonly string[] _memberArguments;

    private EtcdProcess(string stateDir, string endpoint, string[] memberArguments)
    {
        _stateDir = stateDir;
        Endpoint = endpoint;
        _memberArguments = memberArguments;
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

    /// <summary>
    /// Starts the member: on 127.0.0.1 with free ports, or with <paramref name="netns"/> in cbload-1 at
    /// 10.77.0.1:2379 (the script then runs inside that namespace). Returns once etcd reports itself healthy.
    /// </summary>
    public static async Task<EtcdProcess> StartAsync(NetnsLayout? netns = null)
    {
        var stateDir = Path.Combine(Path.GetTempPath(), "chatbroker-load-etcd-" + Guid.NewGuid().ToString("N")[..8]);
        string[] member = netns is null ? []
            : ["--name", "e1", "--ip", NetnsLayout.Address(1), "--initial-cluster", "e1=http://" + NetnsLayout.Address(1) + ":2380"];
        try
        {
            var endpoint = (await RunScriptAsync(["start", "--state-dir", stateDir, .. member], netns is not null).ConfigureAwait(false)).Trim();
            var etcd = new EtcdProcess(stateDir, endpoint, member);
            await etcd.WaitHealthyAsync().ConfigureAwait(false);
            return etcd;
        }
        catch
        {
            await RunScriptAsync(["stop", "--state-dir", stateDir, "--purge"], netns is not null).ConfigureAwait(false);
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
    public async Task RestartAsync()
    {
        await RunMemberScriptAsync(["start", "--state-dir", _stateDir, .. _memberArguments]).ConfigureAwait(false);
        await WaitHealthyAsync().ConfigureAwait(false);
    }

    /// <summary>Until /health says true: a member started with --initial-cluster is only listening, not yet leader.</summary>
    private async Task WaitHealthyAsync()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                if ((await http.GetStringAsync(new Uri(new Uri(Endpoint), "/health")).ConfigureAwait(false)).Contains("\"health\":\"true\"", StringComparison.Ordinal))
                {
                    return;
                }
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
            }

            if (clock.Elapsed > TimeSpan.FromSeconds(20))
            {
                throw new TimeoutException($"etcd at {Endpoint} did not report healthy within 20 s; see {_stateDir}/etcd.log");
            }

            await Task.Delay(50).ConfigureAwait(false); // polling a child process, not a test's wait
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await RunMemberScriptAsync(["stop", "--state-dir", _stateDir, "--purge"]).ConfigureAwait(false);
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

    private Task<string> RunMemberScriptAsync(string[] arguments) => RunScriptAsync(arguments, _memberArguments.Length > 0);

    private static async Task<string> RunScriptAsync(string[] arguments, bool inNetns = false)
    {
        // In --netns mode etcd lives in cbload-1 (the script starts it where the script runs).
        var path = Path.Combine(ScriptsDirectory, "etcd.sh");
        var info = new ProcessStartInfo(inNetns ? "ip" : path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (inNetns)
        {
            foreach (var a in NetnsLayout.Prefix(1).Skip(1))
            {
                info.ArgumentList.Add(a);
            }

            info.ArgumentList.Add(path);
        }

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
