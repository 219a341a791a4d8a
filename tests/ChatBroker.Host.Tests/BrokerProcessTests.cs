using System.Net.Http;
using System.Net.Sockets;
using ChatBroker.Host.Tests.Infrastructure;

namespace ChatBroker.Host.Tests;

/// <summary>The real broker process: admin endpoint, native listener, secret handling, graceful shutdown.</summary>
public sealed class BrokerProcessTests
{
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    [Fact]
    public async Task Serve_with_no_configuration_answers_healthz_readyz_and_metrics()
    {
        await using var broker = await BrokerProcess.StartAsync();
        var admin = $"http://{broker.AdminEndPoint}";

        Assert.Equal("ok\n", await Http.GetStringAsync(admin + "/healthz"));
        Assert.Equal("ready\n", await Http.GetStringAsync(admin + "/readyz"));

        var metrics = await Http.GetStringAsync(admin + "/metrics");
        Assert.Contains("# TYPE chatbroker_uptime_seconds gauge", metrics, StringComparison.Ordinal);
        Assert.Contains("process_memory_resident_bytes{node=\"node1\"}", metrics, StringComparison.Ordinal);
        Assert.Contains("dotnet_gc_collections_total", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_admin_endpoint_answers_its_own_warm_up_requests_right_after_it_starts()
    {
        // The first request compiles Kestrel's pipeline and the exporter (the broker runs without tiered compilation):
        // the broker makes it itself, at start, so that no scrape under load pays for it.
        await using var broker = await BrokerProcess.StartAsync(null, "--set", "log.level=debug");

        await broker.WaitForLineAsync(new System.Text.RegularExpressions.Regex(@"Admin endpoint warm-up: /metrics answered in \d+ ms")).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.DoesNotContain("Admin endpoint warm-up failed", broker.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_broker_watches_no_files()
    {
        // A configuration file watcher would put an inotify watch on every directory under the working
        // directory and wake for every file RocksDB writes when the data directory is beneath it.
        await using var broker = await BrokerProcess.StartAsync();
        Assert.Equal("ready\n", await Http.GetStringAsync($"http://{broker.AdminEndPoint}/readyz"));

        var watchers = Directory.GetFiles($"/proc/{broker.Pid}/fd")
            .Select(fd => new FileInfo(fd).LinkTarget)
            .Where(target => target is not null && target.Contains("inotify", StringComparison.Ordinal))
            .ToList();
        Assert.Empty(watchers);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Tcp_inline_completions_decides_how_many_socket_event_threads_run(bool inline)
    {
        // The runtime runs one socket event thread per core when continuations run inline on them (so they
        // cannot become the bottleneck), and far fewer otherwise.
        await using var broker = await BrokerProcess.StartAsync(null, "--set", $"tcp.inline_completions={(inline ? "true" : "false")}");
        Assert.Equal("ready\n", await Http.GetStringAsync($"http://{broker.AdminEndPoint}/readyz"));

        var eventThreads = Directory.GetDirectories($"/proc/{broker.Pid}/task")
            .Count(task => File.ReadAllText(Path.Combine(task, "comm")).TrimEnd() == ".NET Sockets");
        // Without inline completions the runtime runs one event thread per 30 cores on x64, per 12 on Arm.
        var coresPerThread = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture is
            System.Runtime.InteropServices.Architecture.Arm64 or System.Runtime.InteropServices.Architecture.Arm ? 12.0 : 30.0;
        Assert.Equal(inline ? Environment.ProcessorCount : Math.Max(1, (int)Math.Round(Environment.ProcessorCount / coresPerThread)), eventThreads);
    }

    [Fact]
    public async Task Open_connections_are_counted_in_metrics()
    {
        await using var broker = await BrokerProcess.StartAsync();
        var admin = $"http://{broker.AdminEndPoint}";
        using var client = new TcpClient();
        await client.ConnectAsync(broker.TcpEndPoint);

        // The accept is asynchronous to our connect: poll the scrape (a signal, not a sleep) until it shows.
        string metrics;
        var deadline = DateTime.UtcNow.AddSeconds(10);
        do
        {
            metrics = await Http.GetStringAsync(admin + "/metrics");
        }
        while (!metrics.Contains("chatbroker_connections_open{node=\"node1\"} 1", StringComparison.Ordinal) && DateTime.UtcNow < deadline);

        Assert.Contains("chatbroker_connections_open{node=\"node1\"} 1", metrics, StringComparison.Ordinal);
        Assert.Contains("chatbroker_connections_accepted_total{node=\"node1\"} 1", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task First_start_generates_a_0600_secret_and_later_starts_reuse_it()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-test-" + Guid.NewGuid().ToString("N"));
        var secretPath = Path.Combine(dataDir, "token.secret");
        try
        {
            string first;
            await using (var broker = await BrokerProcess.StartAsync(dataDir))
            {
                Assert.True(File.Exists(secretPath));
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(secretPath));
                first = await File.ReadAllTextAsync(secretPath);
                Assert.Contains("Generated a new token secret", broker.Output, StringComparison.Ordinal);
                broker.SendSignal(BrokerProcess.SigTerm);
                Assert.Equal(0, await broker.WaitForExitAsync(TimeSpan.FromSeconds(30)));
            }

            await using (var broker = await BrokerProcess.StartAsync(dataDir))
            {
                Assert.DoesNotContain("Generated a new token secret", broker.Output, StringComparison.Ordinal);
                Assert.Equal(first, await File.ReadAllTextAsync(secretPath));
            }
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }

    [Theory]
    [InlineData(BrokerProcess.SigTerm)]
    [InlineData(BrokerProcess.SigInt)]
    public async Task Sigterm_and_ctrl_c_shut_down_gracefully_with_exit_code_0(int signal)
    {
        await using var broker = await BrokerProcess.StartAsync();
        using var client = new TcpClient();
        await client.ConnectAsync(broker.TcpEndPoint);

        broker.SendSignal(signal);

        Assert.Equal(0, await broker.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("Stopped", broker.Output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})", "SIGHUP, SIGTERM")]
    [InlineData("signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGHUP, signal.SIG_IGN)", "SIGHUP (ignored)")]
    public async Task A_broker_started_with_its_signals_blocked_or_ignored_restores_them_and_still_stops_on_sigterm(string parent, string restored)
    {
        // A signal mask and an ignored disposition survive fork and exec: a parent that blocks SIGTERM (here a python
        // wrapper that does so, then execs the broker in its place, same pid) leaves it pending in the broker for ever, one
        // that ignores it (nohup does so for SIGHUP) has it discarded, unless the broker restores them.
        // The wrapper starts from a clean state, whatever the test run inherited (a CI run under nohup ignores SIGHUP).
        var wrapper = $"import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, set()); signal.signal(signal.SIGHUP, signal.SIG_DFL); {parent}; os.execvp(sys.argv[1], sys.argv[1:])";
        await using var broker = await BrokerProcess.LaunchAsync(new BrokerLaunch { Wrapper = ["python3", "-c", wrapper] });
        Assert.Contains($"Signals {restored} were blocked or ignored by the process that started the broker; restored", broker.Output, StringComparison.Ordinal);

        broker.SendSignal(BrokerProcess.SigTerm);

        Assert.Equal(0, await broker.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("Stopped", broker.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_port_already_in_use_fails_start_with_a_clear_message()
    {
        using var blocker = new TcpListener(System.Net.IPAddress.Loopback, 0);
        blocker.Start();
        var port = ((System.Net.IPEndPoint)blocker.LocalEndpoint).Port;
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-test-" + Guid.NewGuid().ToString("N"));

        var (exit, _, stderr) = await BrokerProcess.RunCliAsync(
            ["serve", "--set", "node.data_dir=" + dataDir, "--set", $"tcp.listen=127.0.0.1:{port}", "--set", "admin.listen=127.0.0.1:0"]);

        Assert.Equal(1, exit);
        Assert.Contains($"Cannot listen on 127.0.0.1:{port} (tcp.listen)", stderr, StringComparison.Ordinal);
        Directory.Delete(dataDir, recursive: true);
    }
}
