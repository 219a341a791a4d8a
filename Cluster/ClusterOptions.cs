using System.Net;

namespace ChatBroker.Cluster;

/// <summary>
/// What the cluster needs to know about this node; the host maps the broker's <c>cluster.*</c> settings
/// onto it. Cluster mode is on when <see cref="EtcdEndpoints"/> is not empty.
/// </summary>
public sealed class ClusterOptions
{
    /// <summary>The shortest lease etcd 3.4 grants with its default election timeout (1 s) is 1.5 s.</summary>
    public static readonly TimeSpan MinLeaseTtl = TimeSpan.FromSeconds(2);

    /// <summary>etcd client URLs, e.g. <c>http://10.77.0.1:2379</c>; empty means a single node.</summary>
    public IReadOnlyList<string> EtcdEndpoints { get; set; } = [];

    public bool Enabled => EtcdEndpoints.Count > 0;

    /// <summary>Every key of this cluster lives under this prefix, so clusters can share an etcd.</summary>
    public string EtcdPrefix { get; set; } = "/chatbroker";

    /// <summary>Deadline of one etcd request; past it the request counts as etcd being unreachable.</summary>
    public TimeSpan EtcdTimeout { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>This node's id in the map and in etcd (1 to 64 of a-z A-Z 0-9 . _ -).</summary>
    public string NodeId { get; set; } = "node1";

    /// <summary>
    /// The node's lease: it disappears from the live members this long after it stops renewing (a crash or
    /// a cut-off). Renewed every third of it.
    /// </summary>
    public TimeSpan LeaseTtl { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Where the mesh (gRPC, h2c) listens.</summary>
    public IPEndPoint MeshListen { get; set; } = new(IPAddress.Loopback, 7890);

    /// <summary>host:port the other nodes dial for the mesh; empty means <see cref="MeshListen"/>.</summary>
    public string AdvertiseMesh { get; set; } = "";

    /// <summary>host:port clients are told to connect to (redirects, node lists); the host fills it.</summary>
    public string AdvertiseClient { get; set; } = "";

    /// <summary>Virtual nodes per member on the ring, written into a new map.</summary>
    public int VirtualNodes { get; set; } = 128;

    /// <summary>Copies of each range, written into a new map (issue 16).</summary>
    public int ReplicationFactor { get; set; } = 1;

    /// <summary>Clock for leases and staleness; tests may replace it.</summary>
    public TimeProvider Time { get; set; } = TimeProvider.System;

    public string ResolvedAdvertiseMesh => AdvertiseMesh.Length > 0 ? AdvertiseMesh : MeshListen.ToString();

    /// <summary>Why these options cannot run a cluster node, or null when they can.</summary>
    public string? Validate()
    {
        if (!Coordination.NodeRegistration.IsValidNodeId(NodeId))
        {
            return $"cluster node id \"{NodeId}\" is not valid (1 to 64 of a-z A-Z 0-9 . _ -)";
        }

        if (LeaseTtl < MinLeaseTtl)
        {
            return $"cluster lease TTL must be at least {MinLeaseTtl.TotalSeconds} s, got {LeaseTtl.TotalSeconds} s";
        }

        if (EtcdTimeout <= TimeSpan.Zero)
        {
            return "cluster etcd timeout must be positive";
        }

        if (!EtcdPrefix.StartsWith('/') || EtcdPrefix.EndsWith('/'))
        {
            return $"cluster etcd prefix must start with / and not end with it, got \"{EtcdPrefix}\"";
        }

        foreach (var e in EtcdEndpoints)
        {
            if (EndpointError(e) is { } error)
            {
                return error;
            }
        }

        return null;
    }

    /// <summary>
    /// Reads <c>cluster.etcd_endpoints</c>: comma-separated http:// or https:// URLs; empty gives an empty list
    /// (cluster mode off).
    /// </summary>
    public static bool TryParseEtcdEndpoints(string text, out IReadOnlyList<string> endpoints, out string? error)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        foreach (var e in parts)
        {
            if (EndpointError(e) is { } invalid)
            {
                (endpoints, error) = ([], invalid);
                return false;
            }
        }

        (endpoints, error) = (parts, null);
        return true;
    }

    private static string? EndpointError(string endpoint) =>
        Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) && (uri.Scheme == "http" || uri.Scheme == "https")
            ? null
            : $"etcd endpoint \"{endpoint}\" is not an http:// or https:// URL";

    /// <summary>The etcd keys of this cluster (see docs/cluster.md).</summary>
    internal string MapKey => EtcdPrefix + "/map";

    internal string NodesPrefix => EtcdPrefix + "/nodes/";

    internal string NodeKey(string nodeId) => NodesPrefix + nodeId;
}
