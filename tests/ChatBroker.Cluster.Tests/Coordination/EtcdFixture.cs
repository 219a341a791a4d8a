using System.Diagnostics;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>
/// A real single-member etcd for one test class, started by <c>scripts/etcd.sh</c> on free loopback ports
/// with a temporary data dir (the script installs Debian's etcd-server when it is missing), stopped by pid.
/// If etcd cannot be installed or started the tests fail with the script's reason: nothing is skipped.
/// </summary>
public sealed class EtcdFixture : IAsyncLifetime
{
    private readonly string _stateDir = Path.Combine(Path.GetTempPath(), "chatbroker-etcd-test-" + Guid.NewGuid().ToString("N")[..12]);

    public string Endpoint { get; private set; } = "";

    public async Task InitializeAsync() => Endpoint = (await RunScriptAsync("start")).Trim();

    /// <summary>Stops etcd (its data and ports stay), as an outage does.</summary>
    public Task StopAsync() => RunScriptAsync("stop");

    /// <summary>Starts it again on the same ports with the same data.</summary>
    public async Task RestartAsync()
    {
        var endpoint = (await RunScriptAsync("start")).Trim();
        Assert.Equal(Endpoint, endpoint);
    }

    public async Task DisposeAsync() => await RunScriptAsync("stop", "--purge");

    /// <summary>SIGSTOP (<paramref name="resume"/> false) or SIGCONT of etcd: a member that goes silent, as behind a partition.</summary>
    public void Freeze(bool resume)
    {
        var pid = File.ReadAllText(Path.Combine(_stateDir, "pid")).Trim();
        using var kill = Process.Start(new ProcessStartInfo("kill", [resume ? "-CONT" : "-STOP", pid]) { UseShellExecute = false })
            ?? throw new InvalidOperationException("could not run kill");
        kill.WaitForExit();
        Assert.Equal(0, kill.ExitCode);
    }

    private async Task<string> RunScriptAsync(string command, string? extra = null)
    {
        var script = Path.Combine(RepositoryRoot(), "scripts", "etcd.sh");
        var info = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(script);
        info.ArgumentList.Add(command);
        info.ArgumentList.Add("--state-dir");
        info.ArgumentList.Add(_stateDir);
        if (extra is not null)
        {
            info.ArgumentList.Add(extra);
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException("could not run bash");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        // The first start may install etcd-server with apt.
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await process.WaitForExitAsync(timeout.Token);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"scripts/etcd.sh {command} failed (exit {process.ExitCode}); the cluster tests need a real etcd:\n{await stderr}");
        }

        return await stdout;
    }

    internal static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ChatBroker.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("cannot find the repository root (ChatBroker.sln) above " + AppContext.BaseDirectory);
    }
}
