using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Host;

/// <summary>
/// The cluster map and the live members as an operator reads them: JSON for the admin endpoint's
/// <c>/cluster</c> and <c>chatbroker cluster status --json</c> (one shape, so tools read both), and a table
/// for <c>chatbroker cluster status</c>.
/// <code>
/// {"node_id":"n1","has_map":true,"has_current_map":true,"disconnected_since":null,"staleness_seconds":0,
///  "last_error":null,                                   (the node fields: /cluster only)
///  "epoch":12,"vnodes":128,"replication_factor":3,
///  "members":[{"id":"n1","mesh":"10.0.0.1:7890","client":"10.0.0.1:7883","state":"Active","live":true}],
///  "replica_sets":[{"primary":"n1","replicas":["n2","n3"],"in_sync":["n2"]}],
///  "live_members":[{"id":"n1","mesh":"10.0.0.1:7890","client":"10.0.0.1:7883"}]}
/// </code>
/// </summary>
internal static class ClusterStatus
{
    /// <summary>The node's cached view (no etcd round trip): what <c>/cluster</c> answers.</summary>
    public static byte[] NodeJson(string nodeId, ClusterView view)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("node_id", nodeId);
            json.WriteBoolean("has_map", view.HasMap);
            json.WriteBoolean("has_current_map", view.HasCurrentMap);
            if (view.DisconnectedSince is { } since)
            {
                json.WriteString("disconnected_since", since);
            }
            else
            {
                json.WriteNull("disconnected_since");
            }

            json.WriteNumber("staleness_seconds", Math.Round(view.Staleness.TotalSeconds, 3));
            json.WriteString("last_error", view.LastError);
            WriteMap(json, view.Map, view.LiveMembers);
            json.WriteEndObject();
        }

        return buffer.ToArray();
    }

    /// <summary>The map and live members as read from etcd: what <c>cluster status --json</c> prints.</summary>
    public static string MapJson(ClusterMap map, ImmutableArray<NodeRegistration> live)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            WriteMap(json, map, live);
            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>The table <c>cluster status</c> prints.</summary>
    public static string Table(ClusterMap map, ImmutableArray<NodeRegistration> live, string source)
    {
        var text = new StringBuilder();
        if (map.Epoch == 0)
        {
            text.Append(CultureInfo.InvariantCulture, $"no cluster map yet in {source}: the first node started with cluster.auto_join (or `cluster join`) writes it\n");
        }
        else
        {
            text.Append(CultureInfo.InvariantCulture,
                $"cluster map epoch {map.Epoch} ({source}): {map.Members.Length} members, {CountLive(map, live)} live; vnodes {map.VirtualNodes}, replication factor {map.ReplicationFactor}\n");
        }

        if (!map.Members.IsEmpty)
        {
            var rows = new List<string[]> { new[] { "NODE", "STATE", "LIVE", "MESH", "CLIENT" } };
            foreach (var m in map.Members)
            {
                rows.Add([m.NodeId, m.State.ToString(), IsLive(live, m.NodeId) ? "yes" : "no", m.MeshAddress, m.ClientAddress]);
            }

            var widths = new int[5];
            foreach (var row in rows)
            {
                for (var i = 0; i < row.Length; i++)
                {
                    widths[i] = Math.Max(widths[i], row[i].Length);
                }
            }

            foreach (var row in rows)
            {
                for (var i = 0; i < row.Length; i++)
                {
                    text.Append(i < row.Length - 1 ? row[i].PadRight(widths[i] + 2) : row[i]);
                }

                text.Append('\n');
            }
        }

        foreach (var set in map.ReplicaSets)
        {
            // Replication (docs/cluster.md): a replica not in sync is being caught up (or waits for its node).
            var replicas = new List<string>(set.Replicas.Length);
            foreach (var r in set.Replicas)
            {
                replicas.Add(set.InSync.Contains(r) ? r + " (in sync)" : r + " (not in sync)");
            }

            text.Append(CultureInfo.InvariantCulture, $"replicas of {set.Primary}: {(replicas.Count == 0 ? "none" : string.Join(", ", replicas))}\n");
        }

        foreach (var node in live)
        {
            if (map.FindMember(node.NodeId) is null)
            {
                text.Append(CultureInfo.InvariantCulture,
                    $"live, not in the map: {node.NodeId} (mesh {node.MeshAddress}, client {node.ClientAddress}); `chatbroker cluster join --node {node.NodeId}` adds it\n");
            }
        }

        return text.ToString();
    }

    private static void WriteMap(Utf8JsonWriter json, ClusterMap map, ImmutableArray<NodeRegistration> live)
    {
        json.WriteNumber("epoch", map.Epoch);
        json.WriteNumber("vnodes", map.VirtualNodes);
        json.WriteNumber("replication_factor", map.ReplicationFactor);
        json.WriteStartArray("members");
        foreach (var m in map.Members)
        {
            json.WriteStartObject();
            json.WriteString("id", m.NodeId);
            json.WriteString("mesh", m.MeshAddress);
            json.WriteString("client", m.ClientAddress);
            json.WriteString("state", m.State.ToString());
            json.WriteBoolean("live", IsLive(live, m.NodeId));
            json.WriteEndObject();
        }

        json.WriteEndArray();
        json.WriteStartArray("replica_sets");
        foreach (var set in map.ReplicaSets)
        {
            json.WriteStartObject();
            json.WriteString("primary", set.Primary);
            json.WriteStartArray("replicas");
            foreach (var r in set.Replicas)
            {
                json.WriteStringValue(r);
            }

            json.WriteEndArray();
            json.WriteStartArray("in_sync");
            foreach (var r in set.InSync)
            {
                json.WriteStringValue(r);
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        json.WriteEndArray();
        json.WriteStartArray("live_members");
        foreach (var n in live)
        {
            json.WriteStartObject();
            json.WriteString("id", n.NodeId);
            json.WriteString("mesh", n.MeshAddress);
            json.WriteString("client", n.ClientAddress);
            json.WriteEndObject();
        }

        json.WriteEndArray();
    }

    private static bool IsLive(ImmutableArray<NodeRegistration> live, string nodeId)
    {
        foreach (var n in live)
        {
            if (n.NodeId == nodeId)
            {
                return true;
            }
        }

        return false;
    }

    private static int CountLive(ClusterMap map, ImmutableArray<NodeRegistration> live)
    {
        var count = 0;
        foreach (var m in map.Members)
        {
            count += IsLive(live, m.NodeId) ? 1 : 0;
        }

        return count;
    }
}
