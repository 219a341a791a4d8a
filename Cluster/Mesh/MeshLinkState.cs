using ChatBroker.Cluster.Mesh.Wire;
using Google.Protobuf.Collections;

namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// The receiver's state of one (origin, stream): the sender's session, the high-water mark of ids
/// handed to the sink, and the results the origin may not have seen yet. Guarded by <see cref="Gate"/>.
/// </summary>
internal sealed class MeshLinkState(string origin, uint stream)
{
    private ulong _session;

    /// <summary>One batch of the link at a time (a stale and a new stream of the same link may overlap).</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);

    public string Origin { get; } = origin;

    public uint Stream { get; } = stream;

    /// <summary>The sender instance whose ids <see cref="HighWater"/> counts (valid when <see cref="HasSession"/>).</summary>
    public ulong Session
    {
        get => _session;
        set
        {
            _session = value;
            HasSession = true;
        }
    }

    public bool HasSession { get; private set; }

    /// <summary>The highest id handed to the sink in <see cref="Session"/>.</summary>
    public ulong HighWater { get; set; }

    /// <summary>Results in id order, kept until the origin reports (ack_seen) that it has their ack.</summary>
    public Queue<MeshResult> Results { get; } = new();

    public void PruneResults(ulong ackSeen)
    {
        while (Results.Count > 0 && Results.Peek().Id <= ackSeen)
        {
            Results.Dequeue();
        }
    }

    /// <summary>Keeps a result for a resend; false if the oldest had to be dropped to stay in the bound.</summary>
    public bool CacheResult(MeshResult result, int max)
    {
        var kept = true;
        while (Results.Count >= max)
        {
            Results.Dequeue();
            kept = false;
        }

        Results.Enqueue(result);
        return kept;
    }

    /// <summary>Adds the cached results of ids <paramref name="from"/> … <paramref name="to"/>.</summary>
    public void CopyResults(ulong from, ulong to, RepeatedField<MeshResult> destination)
    {
        foreach (var result in Results)
        {
            if (result.Id > to)
            {
                break;
            }

            if (result.Id >= from)
            {
                destination.Add(result);
            }
        }
    }
}
