using System.Collections.Immutable;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// The stored form of the map and of a registration: JSON, so an operator can read them with
/// <c>etcdctl get</c>. The epoch is not in the document: it is the key's mod revision, known only after the
/// write. A map written by a newer format than this code knows is refused rather than half read.
/// <code>
/// {"format":1,"vnodes":128,"replication_factor":1,
///  "members":[{"id":"n1","mesh":"10.77.0.1:7890","client":"10.77.0.1:7883","state":"active"}],
///  "replica_sets":[]}
/// </code>
/// </summary>
public static class ClusterMapCodec
{
    public const int Format = 1;

    public static byte[] EncodeMap(ClusterMap map)
    {
        var members = new MemberDocument[map.Members.Length];
        for (var i = 0; i < members.Length; i++)
        {
            var m = map.Members[i];
            members[i] = new MemberDocument { Id = m.NodeId, Mesh = m.MeshAddress, Client = m.ClientAddress, State = m.State, FailedAtMs = m.FailedAtMs };
        }

        var sets = new ReplicaSetDocument[map.ReplicaSets.Length];
        for (var i = 0; i < sets.Length; i++)
        {
            var r = map.ReplicaSets[i];
            sets[i] = new ReplicaSetDocument { Range = r.Range, Primary = r.Primary, Replicas = [.. r.Replicas], InSync = [.. r.InSync] };
        }

        var document = new MapDocument
        {
            Format = Format,
            VirtualNodes = map.VirtualNodes,
            ReplicationFactor = map.ReplicationFactor,
            Members = members,
            ReplicaSets = sets,
        };
        return JsonSerializer.SerializeToUtf8Bytes(document, CodecContext.Default.MapDocument);
    }

    /// <summary>Reads a stored map and gives it <paramref name="epoch"/> (the key's mod revision).</summary>
    public static ClusterMap DecodeMap(ReadOnlySpan<byte> json, long epoch)
    {
        MapDocument? document;
        try
        {
            document = JsonSerializer.Deserialize(json, CodecContext.Default.MapDocument);
        }
        catch (JsonException e)
        {
            throw new ClusterCoordinationException($"the stored cluster map (epoch {epoch}) is not valid JSON: {e.Message}", e);
        }

        if (document is null)
        {
            throw new ClusterCoordinationException($"the stored cluster map (epoch {epoch}) is empty");
        }

        if (document.Format != Format)
        {
            throw new ClusterCoordinationException(
                $"the stored cluster map (epoch {epoch}) has format {document.Format}; this node reads format {Format} (upgrade it)");
        }

        var members = ImmutableArray.CreateBuilder<ClusterMember>(document.Members.Length);
        foreach (var m in document.Members)
        {
            members.Add(new ClusterMember(m.Id, m.Mesh, m.Client, m.State, m.FailedAtMs));
        }

        members.Sort(static (a, b) => string.CompareOrdinal(a.NodeId, b.NodeId));
        var sets = ImmutableArray.CreateBuilder<ReplicaSet>(document.ReplicaSets.Length);
        foreach (var r in document.ReplicaSets)
        {
            sets.Add(new ReplicaSet(r.Range, r.Primary, [.. r.Replicas], [.. r.InSync]));
        }

        var map = new ClusterMap
        {
            Epoch = epoch,
            VirtualNodes = document.VirtualNodes,
            ReplicationFactor = document.ReplicationFactor,
            Members = members.MoveToImmutable(),
            ReplicaSets = sets.MoveToImmutable(),
        };
        return map.Validate() is { } error
            ? throw new ClusterCoordinationException($"the stored cluster map (epoch {epoch}) is not valid: {error}")
            : map;
    }

    public static byte[] EncodeRegistration(NodeRegistration registration) =>
        JsonSerializer.SerializeToUtf8Bytes(
            new RegistrationDocument { Id = registration.NodeId, Mesh = registration.MeshAddress, Client = registration.ClientAddress },
            CodecContext.Default.RegistrationDocument);

    /// <summary>A registration, or null when the value is not one (it is then left out of the members).</summary>
    public static NodeRegistration? DecodeRegistration(ReadOnlySpan<byte> json)
    {
        try
        {
            var d = JsonSerializer.Deserialize(json, CodecContext.Default.RegistrationDocument);
            return d is null || !NodeRegistration.IsValidNodeId(d.Id) ? null : new NodeRegistration(d.Id, d.Mesh, d.Client);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    internal sealed class MapDocument
    {
        [JsonPropertyName("format")] public int Format { get; set; }
        [JsonPropertyName("vnodes")] public int VirtualNodes { get; set; }
        [JsonPropertyName("replication_factor")] public int ReplicationFactor { get; set; }
        [JsonPropertyName("members")] public MemberDocument[] Members { get; set; } = [];
        [JsonPropertyName("replica_sets")] public ReplicaSetDocument[] ReplicaSets { get; set; } = [];
    }

    internal sealed class MemberDocument
    {
        [JsonPropertyName("id")] public string Id { get; set; } = "";
        [JsonPropertyName("mesh")] public string Mesh { get; set; } = "";
        [JsonPropertyName("client")] public string Client { get; set; } = "";
        [JsonPropertyName("state")] public MemberState State { get; set; }
        [JsonPropertyName("failed_at_ms")][JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] public long FailedAtMs { get; set; }
    }

    internal sealed class ReplicaSetDocument
    {
        [JsonPropertyName("range")] public string Range { get; set; } = "";
        [JsonPropertyName("primary")] public string Primary { get; set; } = "";
        [JsonPropertyName("replicas")] public string[] Replicas { get; set; } = [];
        [JsonPropertyName("in_sync")] public string[] InSync { get; set; } = [];
    }

    internal sealed class RegistrationDocument
    {
        [JsonPropertyName("id")] public string Id { get; set; } = "";
        [JsonPropertyName("mesh")] public string Mesh { get; set; } = "";
        [JsonPropertyName("client")] public string Client { get; set; } = "";
    }
}

[JsonSourceGenerationOptions(UseStringEnumConverter = true, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    RespectNullableAnnotations = true)]
[JsonSerializable(typeof(ClusterMapCodec.MapDocument))]
[JsonSerializable(typeof(ClusterMapCodec.RegistrationDocument))]
internal sealed partial class CodecContext : JsonSerializerContext;
