using System.Text.Json;

namespace ChatBroker.LoadTests.Cluster;

/// <summary>A member of the cluster map as a node reports it: id, client address (host:port) and state.</summary>
public sealed record ClusterMapMember(string Id, string Client, string State);

/// <summary>
/// The cluster map as the admin endpoint's <c>/cluster</c> (and <c>chatbroker cluster status --json</c>) prints it:
/// what the harness needs to know which nodes own ranges (the ring is built from the Active members).
/// </summary>
public sealed record ClusterMapSnapshot(long Epoch, int VirtualNodes, IReadOnlyList<ClusterMapMember> Members)
{
    /// <summary>The members on the ring: those Active (Joining and Leaving members own nothing yet / any more).</summary>
    public IReadOnlyList<ClusterMapMember> Active => [.. Members.Where(m => m.State == "Active")];

    public static ClusterMapSnapshot Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        var members = new List<ClusterMapMember>();
        if (root.TryGetProperty("members", out var list) && list.ValueKind == JsonValueKind.Array)
        {
            foreach (var m in list.EnumerateArray())
            {
                members.Add(new ClusterMapMember(
                    m.GetProperty("id").GetString() ?? "",
                    m.TryGetProperty("client", out var c) ? c.GetString() ?? "" : "",
                    m.TryGetProperty("state", out var s) ? s.GetString() ?? "" : ""));
            }
        }

        return new ClusterMapSnapshot(
            root.TryGetProperty("epoch", out var e) ? e.GetInt64() : 0,
            root.TryGetProperty("vnodes", out var v) ? v.GetInt32() : 0,
            members);
    }
}
