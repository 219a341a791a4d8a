using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>The CLI's first request (<see cref="EtcdCoordinator.ReadMapPatientlyAsync"/>): retried for a few request
/// timeouts, as a node's start is, before it reports etcd unreachable.</summary>
public sealed class EtcdPatientReadTests(EtcdFixture etcd) : IClassFixture<EtcdFixture>
{
    private static ClusterOptions Options(string endpoint, TimeSpan timeout) => new()
    {
        EtcdEndpoints = [endpoint],
        EtcdPrefix = "/patient-" + Guid.NewGuid().ToString("N")[..8],
        NodeId = "cli",
        EtcdTimeout = timeout,
    };

    [Fact]
    public async Task Reads_the_map_from_a_reachable_etcd()
    {
        await using var cli = new EtcdCoordinator(Options(etcd.Endpoint, TimeSpan.FromSeconds(2)));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));

        var map = await cli.ReadMapPatientlyAsync(timeout.Token);

        Assert.Equal(ClusterMap.Empty.Epoch, map.Epoch);
        Assert.Empty(map.Members);
    }

    [Fact]
    public async Task An_unreachable_etcd_is_reported_only_after_the_requests_of_five_timeouts()
    {
        // A port nothing listens on: every request fails at once (connection refused, Unavailable).
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        var port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        var requestTimeout = TimeSpan.FromMilliseconds(200);
        await using var once = new EtcdCoordinator(Options($"http://127.0.0.1:{port}", requestTimeout));
        await using var patient = new EtcdCoordinator(Options($"http://127.0.0.1:{port}", requestTimeout));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));

        var single = await Assert.ThrowsAsync<ClusterCoordinationException>(() => once.ReadMapAsync(timeout.Token));
        var watch = Stopwatch.StartNew();
        var repeated = await Assert.ThrowsAsync<ClusterCoordinationException>(() => patient.ReadMapPatientlyAsync(timeout.Token));
        watch.Stop();

        Assert.Contains("is unreachable", single.Message, StringComparison.Ordinal);
        Assert.Contains("is unreachable", repeated.Message, StringComparison.Ordinal);
        // It gave up only when the window of five request timeouts had passed, not at the first refusal.
        Assert.True(watch.Elapsed >= requestTimeout * 5, $"gave up after {watch.Elapsed.TotalMilliseconds:F0} ms");
    }
}
