using System.Net;

namespace ChatBroker.Client;

/// <summary>
/// Which broker node the client dials. The configured address comes first, then <see cref="ChatClientOptions.FallbackEndPoints"/>
/// and, in a cluster, the nodes CONNACK names (<c>cluster_nodes</c>, with <see cref="ChatClientOptions.UseClusterNodes"/>).
/// A failed attempt, and a connection lost without a reason from the server or with SERVER_UNAVAILABLE, moves on to the
/// next address; the session resumes there from <see cref="Cursor"/> (inbox positions are the user's home node's, the
/// same through every node of the cluster).
/// </summary>
public sealed partial class ChatClient
{
    private readonly List<EndPoint> _endPoints = []; // under _lock; [0] is the configured address
    private int _endPointIndex; // under _lock

    /// <summary>The address the client connects (or is connected) to now.</summary>
    public EndPoint CurrentEndPoint
    {
        get
        {
            lock (_lock)
            {
                return _endPoints[_endPointIndex];
            }
        }
    }

    /// <summary>Every address the client may connect to: the configured ones, then the cluster's from the last CONNACK.</summary>
    public IReadOnlyList<EndPoint> KnownEndPoints
    {
        get
        {
            lock (_lock)
            {
                return [.. _endPoints];
            }
        }
    }

    private void InitEndPoints()
    {
        _endPoints.Add(_options.EndPoint ?? new DnsEndPoint(_options.Host, _options.Port));
        foreach (var e in _options.FallbackEndPoints)
        {
            AddEndPoint(e);
        }
    }

    /// <summary>The next attempt goes to the next known address (wrapping around).</summary>
    private void NextEndPoint()
    {
        lock (_lock)
        {
            _endPointIndex = (_endPointIndex + 1) % _endPoints.Count;
        }
    }

    /// <summary>Adds the cluster's client addresses from CONNACK to the known ones (addresses it cannot parse are skipped).</summary>
    private void LearnClusterNodes(IReadOnlyList<string> nodes)
    {
        if (!_options.UseClusterNodes || nodes.Count == 0)
        {
            return;
        }

        lock (_lock)
        {
            foreach (var node in nodes)
            {
                if (ParseHostPort(node) is { } endPoint)
                {
                    AddEndPoint(endPoint);
                }
            }
        }
    }

    /// <summary>Under _lock (or before the client is shared).</summary>
    private void AddEndPoint(EndPoint endPoint)
    {
        foreach (var known in _endPoints)
        {
            if (SameAddress(known, endPoint))
            {
                return;
            }
        }

        _endPoints.Add(endPoint);
    }

    private static bool SameAddress(EndPoint a, EndPoint b) => (a, b) switch
    {
        (DnsEndPoint x, DnsEndPoint y) => x.Port == y.Port && string.Equals(x.Host, y.Host, StringComparison.OrdinalIgnoreCase),
        (DnsEndPoint x, IPEndPoint y) => x.Port == y.Port && IPAddress.TryParse(x.Host, out var ip) && ip.Equals(y.Address),
        (IPEndPoint x, DnsEndPoint y) => SameAddress(y, x),
        _ => a.Equals(b),
    };

    /// <summary>host:port, [v6]:port or v4:port; null when it is none of them.</summary>
    internal static EndPoint? ParseHostPort(string text)
    {
        if (IPEndPoint.TryParse(text, out var ip) && ip.Port != 0)
        {
            return ip;
        }

        var colon = text.LastIndexOf(':');
        return colon > 0 && colon < text.Length - 1 && int.TryParse(text.AsSpan(colon + 1), out var port) && port is > 0 and <= 65535
            && Uri.CheckHostName(text[..colon]) is UriHostNameType.Dns
            ? new DnsEndPoint(text[..colon], port)
            : null;
    }
}
