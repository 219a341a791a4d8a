using System.Net;

namespace ChatBroker.LoadTests.Cluster;

/// <summary>
/// What a scenario runs against: one broker (started or --target) or a cluster of N nodes the harness started
/// (--cluster N). Scenarios ask for the endpoint of node i (their <see cref="ClusterPlacement"/>), mint tokens
/// (the nodes share one secret) and scrape metrics (summed over the nodes).
/// </summary>
public sealed class BrokerNodes : IAsyncDisposable
{
    private readonly BrokerLauncher? _single;
    private readonly ClusterLauncher? _cluster;
    private readonly IPEndPoint[] _endpoints;
    private readonly Tokens.TokenSecret _secret;

    public BrokerNodes(BrokerLauncher single)
    {
        _single = single;
        _endpoints = [single.TcpEndPoint];
        _secret = single.Secret;
    }

    public BrokerNodes(ClusterLauncher cluster)
    {
        _cluster = cluster;
        _endpoints = [.. cluster.Nodes.Select(n => n.Client)];
        _secret = Tokens.TokenSecret.FromBase64(cluster.SecretBase64);
    }

    public int Count => _endpoints.Length;

    public ClusterLauncher? Cluster => _cluster;

    public IPEndPoint EndPoint(int node) => _endpoints[node];

    public string Token(string user, string device) =>
        Tokens.AccessToken.Issue(_secret, user, device, TimeSpan.FromHours(2), DateTimeOffset.UtcNow);

    /// <summary>The text of the last scrape (one node only: a cluster's scrapes are summed, with no text).</summary>
    public string? LastMetricsText => _single?.LastMetricsText;

    /// <summary>The single started broker's data directory (null for a cluster or a target).</summary>
    public string? DataDirectory => _single?.DataDirectory;

    public Task<BrokerMetricsSample?> ScrapeAsync() => _cluster is not null ? _cluster.ScrapeAsync() : _single!.ScrapeAsync();

    public string Describe(RunOptions options)
    {
        if (_cluster is null)
        {
            return options.DescribeBroker(_single!);
        }

        var nodes = string.Join(", ", _cluster.Nodes.Select(n => $"{n.Id} pid {n.Broker.Pid} at {n.Client}"));
        return $"cluster of {Count} child processes {_cluster.Placement} ({nodes}), etcd {_cluster.Etcd.Endpoint}, durability {options.Durability}";
    }

    public async ValueTask DisposeAsync()
    {
        if (_cluster is not null)
        {
            await _cluster.DisposeAsync().ConfigureAwait(false);
        }
        else
        {
            await _single!.DisposeAsync().ConfigureAwait(false);
        }
    }
}
