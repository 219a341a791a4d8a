using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace ChatBroker.LoadTests.Cluster;

/// <summary>
/// One etcd member of a cluster run, started by scripts/etcd.sh (which installs Debian's etcd-server when
/// missing): the single member on 127.0.0.1 with free ports, or member i of <see cref="NetnsLayout.EtcdMembers"/>
/// in a network namespace of its own (<see cref="EtcdCluster"/> holds them), each in a state directory of its own. The harness knows its pid:
/// the etcd nemesis kills it with SIGKILL and starts it again on the same ports and data, and
/// <see cref="DisposeAsync"/> stops it by pid and removes the directory.
/// </summary>
public sealed class EtcdProcess : IAsyncDisposable
{
    private readonly string _stateDir;
    private readonly string[] _memberArguments;
    private readonly int? _namespace;

    private EtcdProcess(string stateDir, string endpoint, string[] memberArguments, int? netnsIndex, string name)
    {
        _stateDir = stateDir;
        Endpoint = endpoint;
        _memberArguments = memberArguments;
        _namespace = netnsIndex;
        Name = name;
    }

    /// <summary>The client URL (http://127.0.0.1:PORT, or http://10.77.0.x:2379 in a namespace).</summary>
    public string Endpoint { get; }

    /// <summary>The member's name ("e1", …; "etcd" for the loopback single member).</summary>
    public string Name { get; }

    /// <summary>The namespace the member runs in (cbload-i), or null on 127.0.0.1.</summary>
    public int? Namespace => _namespace;

    /// <summary>The pid scripts/etcd.sh recorded for the running member; null when it is down.</summary>
    public int? Pid => File.Exists(Path.Combine(_stateDir, "pid"))
        && int.TryParse(File.ReadAllText(Path.Combine(_stateDir, "pid")).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
        && Directory.Exists("/proc/" + pid.ToString(CultureInfo.InvariantCulture)) ? pid : null;

    /// <summary>$CHATBROKER_SCRIPTS, else the scripts/ directory of the checkout this harness was built from.</summary>
    public static string ScriptsDirectory =>
        Environment.GetEnvironmentVariable("CHATBROKER_SCRIPTS") is { Length: > 0 } path ? path
        : typeof(EtcdProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "ChatBrokerScripts").Value!;

    /// <summary>A single member on 127.0.0.1 with free ports. Returns once etcd reports itself healthy.</summary>
    public static async Task<EtcdProcess> StartAsync()
    {
        var etcd = await StartMemberAsync([], null, "etcd").ConfigureAwait(false);
        try
        {
            await etcd.WaitHealthyAsync().ConfigureAwait(false);
            return etcd;
        }
        catch
        {
            await etcd.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// The members of an etcd cluster, member i in its namespace <paramref name="netns"/>.EtcdNamespace(i) at
    /// that namespace's address, port 2379 (peers 2380). Returns once every member reports itself healthy (a
    /// member started with --initial-cluster only listens until a quorum has formed).
    /// </summary>
    public static async Task<IReadOnlyList<EtcdProcess>> StartMembersAsync(NetnsLayout netns)
    {
        var initial = string.Join(',', Enumerable.Range(1, netns.EtcdMembers).Select(i => $"e{i}=http://{NetnsLayout.Address(netns.EtcdNamespace(i))}:2380"));
        var members = new List<EtcdProcess>();
        // Installed (when missing) from the host's namespace first: inside a cluster namespace apt reaches no mirror.
        await RunScriptAsync(["install"], null).ConfigureAwait(false);
        try
        {
            for (var i = 1; i <= netns.EtcdMembers; i++)
            {
                var ns = netns.EtcdNamespace(i);
                var name = "e" + i.ToString(CultureInfo.InvariantCulture);
                members.Add(await StartMemberAsync(["--name", name, "--ip", NetnsLayout.Address(ns), "--initial-cluster", initial], ns, name).ConfigureAwait(false));
            }

            foreach (var m in members)
            {
                await m.WaitHealthyAsync().ConfigureAwait(false);
            }

            return members;
        }
        catch
        {
            foreach (var m in members)
            {
                await m.DisposeAsync().ConfigureAwait(false);
            }

            throw;
        }
    }

    private static async Task<EtcdProcess> StartMemberAsync(string[] member, int? netnsIndex, string name)
    {
        var stateDir = Path.Combine(Path.GetTempPath(), "chatbroker-load-etcd-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var endpoint = (await RunScriptAsync(["start", "--state-dir", stateDir, .. member], netnsIndex).ConfigureAwait(false)).Trim();
            return new EtcdProcess(stateDir, endpoint, member, netnsIndex, name);
        }
        catch
        {
            await RunScriptAsync(["stop", "--state-dir", stateDir, "--purge"], netnsIndex).ConfigureAwait(false);
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

    private Task<string> RunMemberScriptAsync(string[] arguments) => RunScriptAsync(arguments, _namespace);

    private static async Task<string> RunScriptAsync(string[] arguments, int? netnsIndex)
    {
        // In --netns mode each member lives in its own namespace (the script starts it where the script runs).
        var inNetns = netnsIndex is not null;
        var path = Path.Combine(ScriptsDirectory, "etcd.sh");
        var info = new ProcessStartInfo(inNetns ? "ip" : path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (inNetns)
        {
            foreach (var a in NetnsLayout.Prefix(netnsIndex!.Value).Skip(1))
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
