using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Reflection;
using System.Text.RegularExpressions;
using ChatBroker.Tokens;

namespace ChatBroker.LoadTests;

/// <summary>
/// The broker under test: either a child process this harness starts (chatbroker.dll, the Host project's
/// build output; see <see cref="BrokerDll"/>) with its own data directory and OS-chosen ports, or a broker at a
/// given address whose token secret the caller supplies. Either way it can mint tokens and read metrics.
/// </summary>
public sealed partial class BrokerLauncher : IAsyncDisposable
{
    private Process? _process; // replaced by RestartAsync (BrokerLauncher.Faults.cs)
    private readonly string? _dataDir;
    private readonly List<string> _output = [];
    private readonly Lock _outputLock = new();
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(10) };

    private BrokerLauncher(Process? process, string? dataDir, IPEndPoint tcp, Uri? admin, string secretBase64)
    {
        _process = process;
        _dataDir = dataDir;
        TcpEndPoint = tcp;
        AdminUri = admin;
        SecretBase64 = secretBase64;
        Secret = TokenSecret.FromBase64(secretBase64);
    }

    public IPEndPoint TcpEndPoint { get; }

    /// <summary>Base address of the admin endpoint (/metrics); null when targeting a broker without one given.</summary>
    public Uri? AdminUri { get; }

    public TokenSecret Secret { get; }

    public int? Pid => _process?.Id;

    /// <summary>The started broker's data directory (its RocksDB LOG is read for stall reports); null for a target.</summary>
    public string? DataDirectory => _dataDir;

    /// <summary>
    /// The broker's build output: $CHATBROKER_DLL, else Host/bin/&lt;configuration&gt;/net10.0/chatbroker.dll of the
    /// checkout this harness was built from (recorded at build time; the harness does not reference Host).
    /// </summary>
    public static string BrokerDll =>
        Environment.GetEnvironmentVariable("CHATBROKER_DLL") is { Length: > 0 } path ? path
        : typeof(BrokerLauncher).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "ChatBrokerDll").Value!;

    /// <summary>
    /// Starts `dotnet chatbroker.dll serve` with the load-run settings and waits for "Ready". With
    /// <paramref name="secretBase64"/> the node signs with that secret (the nodes of a cluster share one; it goes in
    /// the environment, not the command line), else it generates its own.
    /// </summary>
    public static async Task<BrokerLauncher> StartAsync(string durability, IEnumerable<string> extraSettings, string? secretBase64 = null, IReadOnlyList<string>? commandPrefix = null)
    {
        if (!File.Exists(BrokerDll))
        {
            throw new FileNotFoundException($"no broker at {BrokerDll}: build it first (dotnet build Host -c Release) or set CHATBROKER_DLL", BrokerDll);
        }

        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-load-" + Guid.NewGuid().ToString("N"));

        // A prefix runs the broker through another program that execs it, keeping the pid (e.g. `ip netns exec NS`).
        var info = new ProcessStartInfo(commandPrefix is { Count: > 0 } ? commandPrefix[0] : "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (commandPrefix is { Count: > 0 })
        {
            for (var i = 1; i < commandPrefix.Count; i++)
            {
                info.ArgumentList.Add(commandPrefix[i]);
            }

            info.ArgumentList.Add("dotnet");
        }

        info.ArgumentList.Add(BrokerDll);
        info.ArgumentList.Add("serve");
        var settings = new List<string>
        {
            "node.data_dir=" + dataDir,
            "tcp.listen=127.0.0.1:0",
            "admin.listen=127.0.0.1:0",
            "storage.durability=" + durability,
            // A load run measures the broker, not its abuse limits.
            "limits.sends_per_second=1000000",
            "limits.bytes_per_second=1073741824",
            "limits.key_fetches_per_second=100000",
            // Issue 18's per-user hourly limits off (0): a load user starts thousands of conversations an hour.
            "abuse.new_conversations_per_hour=0",
            "abuse.group_creations_per_hour=0",
            "abuse.membership_changes_per_hour=0",
            "abuse.prekey_fetches_per_hour=0",
        };
        settings.AddRange(extraSettings);
        foreach (var s in settings)
        {
            info.ArgumentList.Add("--set");
            info.ArgumentList.Add(s);
        }

        info.Environment.Remove(Program.InlineCompletionsVariable); // the harness's own tuning, not the broker's
        foreach (var key in info.Environment.Keys.ToList())
        {
            if (key.StartsWith("CHATBROKER__", StringComparison.OrdinalIgnoreCase))
            {
                info.Environment.Remove(key);
            }
        }

        if (secretBase64 is not null)
        {
            info.Environment["CHATBROKER__AUTH__SECRET"] = secretBase64;
        }

        var logPath = BrokerLog.PathFor(info.ArgumentList);
        var process = Process.Start(info) ?? throw new InvalidOperationException("could not start dotnet");
        var tcp = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var admin = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var lines = new List<string>();
        var linesLock = new Lock();
        void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            BrokerLog.Append(logPath, line);
            lock (linesLock)
            {
                if (lines.Count < 200)
                {
                    lines.Add(line);
                }
            }

            if (TcpLine().Match(line) is { Success: true } t)
            {
                tcp.TrySetResult(t.Groups[1].Value);
            }
            else if (AdminLine().Match(line) is { Success: true } a)
            {
                admin.TrySetResult(a.Groups[1].Value);
            }
            else if (ReadyLine().IsMatch(line))
            {
                ready.TrySetResult();
            }
        }

        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await Task.WhenAny(ready.Task, process.WaitForExitAsync()).WaitAsync(TimeSpan.FromSeconds(60));
            if (!ready.Task.IsCompleted)
            {
                throw new InvalidOperationException("the broker exited before it was ready:\n" + string.Join('\n', lines));
            }
        }
        catch
        {
            Kill(process);
            TryDelete(dataDir);
            throw;
        }

        // The broker created the secret on its first start; child processes of the harness get it as base64.
        var secret = secretBase64 ?? (await File.ReadAllTextAsync(Path.Combine(dataDir, "token.secret"))).Trim();
        var launcher = new BrokerLauncher(process, dataDir, IPEndPoint.Parse(await tcp.Task), new Uri("http://" + await admin.Task), secret);
        // One scrape now, before any load: the harness runs without tiered compilation, so its first scrape compiles
        // HttpClient's stack and the parser (tens of ms of CPU). Left to the scrape at the end of the warm-up, that
        // fell on the first measured second of a paced run, on the same 2 cores as the broker.
        await launcher.ScrapeAsync().ConfigureAwait(false);
        return launcher;
    }

    /// <summary>A broker that is already running; the caller provides its token secret.</summary>
    public static BrokerLauncher Target(string address, string? adminAddress, string? secretFile, string? secretBase64)
    {
        string secret;
        if (!string.IsNullOrEmpty(secretBase64))
        {
            secret = secretBase64;
        }
        else if (!string.IsNullOrEmpty(secretFile))
        {
            secret = File.ReadAllText(secretFile).Trim();
        }
        else
        {
            throw new InvalidOperationException("--target needs --secret-file or --token-secret to mint tokens");
        }

        return new BrokerLauncher(null, null, ResolveEndPoint(address), adminAddress is null ? null : new Uri("http://" + adminAddress), secret);
    }

    public static IPEndPoint ResolveEndPoint(string address)
    {
        if (IPEndPoint.TryParse(address, out var ep) && ep.Port != 0)
        {
            return ep;
        }

        var colon = address.LastIndexOf(':');
        var host = address[..colon];
        var port = int.Parse(address[(colon + 1)..], CultureInfo.InvariantCulture);
        var ip = Dns.GetHostAddresses(host).First(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork);
        return new IPEndPoint(ip, port);
    }

    public string Token(string user, string device) =>
        AccessToken.Issue(Secret, user, device, TimeSpan.FromHours(2), DateTimeOffset.UtcNow);

    /// <summary>The token secret as base64, for the harness's child processes.</summary>
    public string SecretBase64 { get; }

    /// <summary>The text of the last scrape, for --metrics-out.</summary>
    public string? LastMetricsText { get; private set; }

    /// <summary>The broker's Prometheus metrics; null without an admin address.</summary>
    public async Task<BrokerMetricsSample?> ScrapeAsync()
    {
        if (AdminUri is null)
        {
            return null;
        }

        var text = await _http.GetStringAsync(new Uri(AdminUri, "/metrics")).ConfigureAwait(false);
        LastMetricsText = text;
        return BrokerMetricsSample.Parse(text);
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        if (_process is not null)
        {
            if (!_process.HasExited)
            {
                // SIGTERM first so RocksDB closes cleanly, then make sure.
                try
                {
                    _process.StandardInput.Close();
                    SendSigTerm(_process.Id);
                    await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(15)).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    Kill(_process);
                }
            }

            _process.Dispose();
        }

        if (_dataDir is not null)
        {
            TryDelete(_dataDir);
        }
    }

    private static void SendSigTerm(int pid)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-TERM", pid.ToString(CultureInfo.InvariantCulture)]) { UseShellExecute = false });
        kill?.WaitForExit();
    }

    private static void Kill(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static void TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    [GeneratedRegex(@"Native protocol listening on (\S+)")]
    private static partial Regex TcpLine();

    [GeneratedRegex(@"Admin endpoint on http://(\S+) ")]
    private static partial Regex AdminLine();

    [GeneratedRegex(@"\bReady\b")]
    private static partial Regex ReadyLine();
}

/// <summary>
/// The broker metrics a load run reports, plus every series summed over its labels (by bare name), so a run can
/// take differences such as commits or the mean commit latency (…_sum / …_count) over its measured interval.
/// </summary>
public sealed record BrokerMetricsSample(IReadOnlyDictionary<string, double> All, IReadOnlyDictionary<string, double>? Labelled = null)
{
    /// <summary>One series by its full name with labels, e.g. <c>dotnet_gc_collections_total{gc_heap_generation="gen0"}</c>.</summary>
    /// <summary>
    /// The upper bound (le) of the highest bucket of histogram <paramref name="histogram"/> whose count grew since
    /// <paramref name="earlier"/>: the slowest observation in between was at most this (0: none).
    /// </summary>
    public double SlowestSince(BrokerMetricsSample earlier, string histogram)
    {
        if (Labelled is null)
        {
            return 0;
        }

        var prefix = histogram + "_bucket{";
        double slowest = 0;
        double previousCount = 0;
        var buckets = new List<(double Le, double Delta)>();
        foreach (var (name, value) in Labelled)
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal))
            {
                continue;
            }

            var le = name.IndexOf("le=\"", StringComparison.Ordinal);
            if (le < 0)
            {
                continue;
            }

            var bound = name[(le + 4)..name.IndexOf('"', le + 4)];
            var upper = bound == "+Inf" ? double.PositiveInfinity : double.Parse(bound, CultureInfo.InvariantCulture);
            buckets.Add((upper, value - earlier.Series(name)));
        }

        buckets.Sort((a, b) => a.Le.CompareTo(b.Le));
        foreach (var (le, cumulative) in buckets)
        {
            if (cumulative > previousCount)
            {
                slowest = le;
            }

            previousCount = cumulative;
        }

        return slowest;
    }

    public double Series(string fullName) => Labelled is not null && Labelled.TryGetValue(fullName, out var v) ? v : 0;

    public double ResidentBytes => Get("process_memory_resident_bytes");

    public double Sessions => Get("chatbroker_sessions");

    public double MessagesIn => Get("chatbroker_messages_in_total");

    public double MessagesOut => Get("chatbroker_messages_out_total");

    public double GcHeapBytes => Get("process_memory_managed_heap_bytes");

    public double CpuSeconds => Get("process_cpu_time_seconds_total");

    /// <summary>
    /// The broker's managed allocation and collections between two scrapes, per delivered message (0 when none) and per
    /// second, for closed-loop and paced runs alike: what sets how often the GC runs.
    /// </summary>
    public static void AddGcFigures(Dictionary<string, double> figures, BrokerMetricsSample before, BrokerMetricsSample after, long messages, double seconds)
    {
        var allocated = after.Get("dotnet_gc_heap_total_allocated_bytes_total") - before.Get("dotnet_gc_heap_total_allocated_bytes_total");
        figures["broker_allocated_bytes_per_message"] = messages > 0 ? Math.Round(allocated / messages, 0) : 0;
        figures["broker_gc_collections_per_s"] = Math.Round((after.Get("dotnet_gc_collections_total") - before.Get("dotnet_gc_collections_total")) / Math.Max(0.001, seconds), 1);
        figures["broker_gc_pause_ms_per_s"] = Math.Round((after.Get("dotnet_gc_pause_time_seconds_total") - before.Get("dotnet_gc_pause_time_seconds_total")) * 1000 / Math.Max(0.001, seconds), 2);
    }

    public double Get(string name) => All.TryGetValue(name, out var v) ? v : 0;

    /// <summary>Sum of all series named <paramref name="prefix"/>… ending in <paramref name="suffix"/> (e.g. a histogram's _sum).</summary>
    public double Find(string prefix, string suffix)
    {
        double total = 0;
        foreach (var (k, v) in All)
        {
            if (k.StartsWith(prefix, StringComparison.Ordinal) && k.EndsWith(suffix, StringComparison.Ordinal))
            {
                total += v;
            }
        }

        return total;
    }

    public static BrokerMetricsSample Parse(string text)
    {
        var all = new Dictionary<string, double>();
        var labelled = new Dictionary<string, double>();
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.Trim();
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }

            var space = line.LastIndexOf(' ');
            if (space < 0 || !double.TryParse(line.AsSpan(space + 1), NumberStyles.Float, CultureInfo.InvariantCulture, out var value))
            {
                continue;
            }

            var name = line[..space];
            var brace = name.IndexOf('{', StringComparison.Ordinal);
            var bare = brace < 0 ? name : name[..brace];
            labelled[name] = value;
            if (bare.EndsWith("_bucket", StringComparison.Ordinal))
            {
                continue;
            }

            all[bare] = all.GetValueOrDefault(bare) + value;
        }

        return new BrokerMetricsSample(all, labelled);
    }
}
