using System.Globalization;
using System.Net;
using ChatBroker.LoadTests.Cluster;

namespace ChatBroker.LoadTests;

/// <summary>The options every scenario shares (not every scenario uses each).</summary>
public sealed class RunOptions
{
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(20);
    public long Count { get; init; }
    public int Pairs { get; init; } = 100;
    public double Rate { get; init; }
    public int Window { get; init; } = 16;
    public int BodySize { get; init; } = 256;
    public string Durability { get; init; } = "sync";
    public string? Target { get; init; }
    public string? Admin { get; init; }
    public string? SecretFile { get; init; }
    public string? TokenSecret { get; init; }
    public int Connections { get; init; } = 15_000;
    public int Members { get; init; } = 1024;
    public int Processes { get; init; } = 2;
    public int Sources { get; init; } = 16;
    public string[] BrokerSettings { get; init; } = [];
    public string? JsonPath { get; init; }
    public string? HtmlPath { get; init; }
    public string? MetricsPath { get; init; }
    public string? GcDumpDirectory { get; init; }
    public int Warmup { get; init; } = 5000;
    public int WarmupSeconds { get; init; } = 3;

    /// <summary>Paced pairs: a delivery later than this (ms) is part of a stall (<see cref="StallReport"/>).</summary>
    public double StallMs { get; init; } = 10;

    /// <summary>With --target: the target broker's pid on this machine, for its CPU from /proc (0 = unknown).</summary>
    public int PeerPid { get; init; }

    /// <summary>0: one broker (started, or --target). N ≥ 1: a cluster of N nodes and an etcd the harness starts on 127.0.0.1.</summary>
    public int Cluster { get; init; }

    /// <summary>pairs: the transports to run over, in turn against one started broker (--transport tcp|tls|ws or a list).</summary>
    public ClientTransport[] Transports { get; init; } = [ClientTransport.Tcp];

    /// <summary>Client source address number <paramref name="i"/>: 127.0.0.2 … 127.0.0.(1+Sources), round robin (only for a loopback target).</summary>
    public IPAddress? SourceAddress(IPEndPoint target, long i)
    {
        if (Sources <= 0 || !IPAddress.IsLoopback(target.Address) || target.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            return null;
        }

        return new IPAddress(new byte[] { 127, 0, 0, (byte)(2 + (i % Sources)) });
    }

    public Dictionary<string, string> Describe(params string[] keys)
    {
        var all = new Dictionary<string, string>
        {
            ["duration_s"] = Duration.TotalSeconds.ToString(CultureInfo.InvariantCulture),
            ["count"] = Count.ToString(CultureInfo.InvariantCulture),
            ["pairs"] = Pairs.ToString(CultureInfo.InvariantCulture),
            ["rate"] = Rate.ToString(CultureInfo.InvariantCulture),
            ["window"] = Window.ToString(CultureInfo.InvariantCulture),
            ["body_size"] = BodySize.ToString(CultureInfo.InvariantCulture),
            ["durability"] = Target is null ? Durability : "(target's)",
            ["connections"] = Connections.ToString(CultureInfo.InvariantCulture),
            ["members"] = Members.ToString(CultureInfo.InvariantCulture),
            ["processes"] = Processes.ToString(CultureInfo.InvariantCulture),
            ["sources"] = Sources.ToString(CultureInfo.InvariantCulture),
            ["cluster"] = Cluster.ToString(CultureInfo.InvariantCulture),
        };
        var chosen = new Dictionary<string, string>();
        foreach (var k in keys)
        {
            chosen[k] = all[k];
        }

        if (Cluster > 0)
        {
            chosen["cluster"] = all["cluster"];
        }

        if (BrokerSettings.Length > 0)
        {
            chosen["broker_settings"] = string.Join(' ', BrokerSettings);
        }

        return chosen;
    }

    /// <summary>The broker of this run: started as a child process, or the one at --target.</summary>
    public async Task<BrokerLauncher> OpenBrokerAsync()
    {
        if (Target is not null)
        {
            return BrokerLauncher.Target(Target, Admin, SecretFile, TokenSecret);
        }

        Console.WriteLine($"starting broker (durability {Durability}) ...");
        var broker = await BrokerLauncher.StartAsync(Durability, BrokerSettings).ConfigureAwait(false);
        Console.WriteLine($"broker pid {broker.Pid} on {broker.TcpEndPoint}, admin {broker.AdminUri}");
        return broker;
    }

    /// <summary>The brokers of this run: one (see <see cref="OpenBrokerAsync"/>) or, with <see cref="Cluster"/>, a cluster the harness starts.</summary>
    public async Task<BrokerNodes> OpenBrokersAsync()
    {
        if (Cluster <= 0)
        {
            return new BrokerNodes(await OpenBrokerAsync().ConfigureAwait(false));
        }

        Console.WriteLine($"starting a cluster of {Cluster} nodes and etcd (durability {Durability}) ...");
        return new BrokerNodes(await ClusterLauncher.StartAsync(Cluster, Durability, BrokerSettings, Console.Out, NetnsLayout.FromEnvironment()).ConfigureAwait(false));
    }

    public string DescribeBroker(BrokerLauncher broker) => Target is null
        ? $"child process pid {broker.Pid} at {broker.TcpEndPoint}, durability {Durability}"
        : $"target {broker.TcpEndPoint}";
}
