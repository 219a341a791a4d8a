namespace ChatBroker.LoadTests.Cluster;

/// <summary>
/// The etcd of a cluster run: one member on 127.0.0.1, or with --netns <see cref="NetnsLayout.EtcdMembers"/>
/// members, each in a namespace of its own (so a partition can cut a broker node off from etcd without cutting
/// etcd itself). <see cref="Endpoint"/> is what the nodes get as cluster.etcd_endpoints.
/// </summary>
public sealed class EtcdCluster : IAsyncDisposable
{
    private EtcdCluster(IReadOnlyList<EtcdProcess> members)
    {
        Members = members;
        Endpoint = string.Join(',', members.Select(m => m.Endpoint));
    }

    public IReadOnlyList<EtcdProcess> Members { get; }

    /// <summary>The client URLs, comma-separated.</summary>
    public string Endpoint { get; }

    /// <summary>Members that can be lost with a quorum left.</summary>
    public int Tolerates => (Members.Count - 1) / 2;

    /// <summary>For logs: "pid 123" or "e1 pid 1, e2 pid 2, …".</summary>
    public string Pids => Members.Count == 1
        ? $"pid {Members[0].Pid}"
        : string.Join(", ", Members.Select(m => $"{m.Name} pid {m.Pid}"));

    public static async Task<EtcdCluster> StartAsync(NetnsLayout? netns) =>
        new(netns is null ? [await EtcdProcess.StartAsync().ConfigureAwait(false)] : await EtcdProcess.StartMembersAsync(netns).ConfigureAwait(false));

    /// <summary>kill -9 of every member.</summary>
    public async Task KillHardAsync()
    {
        foreach (var m in Members)
        {
            await m.KillHardAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Starts every member that is down again on its ports and data; waits until each is healthy.</summary>
    public async Task RestartAsync()
    {
        var starts = new List<Task>();
        foreach (var m in Members)
        {
            if (m.Pid is null)
            {
                starts.Add(m.RestartAsync());
            }
        }

        await Task.WhenAll(starts).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var m in Members)
        {
            await m.DisposeAsync().ConfigureAwait(false);
        }
    }
}
