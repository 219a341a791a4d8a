namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// The bounds of the mesh, on both ends. Every bound is a setting (the broker maps <c>cluster.mesh_*</c>
/// keys onto these) and each time one is hit a counter in <see cref="MeshMetrics"/> moves.
/// </summary>
public sealed record MeshOptions
{
    /// <summary>Messages coalesced into one write (one <c>MeshBatch</c>). 64 amortizes the per-write cost
    /// of gRPC and HTTP/2 (framing, a flush, an ack) while keeping a batch small enough to ack quickly.</summary>
    public int MaxBatchMessages { get; init; } = 64;

    /// <summary>Payload bytes the sender packs into one write (a single larger message still goes alone).</summary>
    public int MaxBatchBytes { get; init; } = 512 * 1024;

    /// <summary>Largest payload of one message. A forwarded SEND carries at most one client frame
    /// (64 KiB by default) plus routing fields.</summary>
    public int MaxMessageBytes { get; init; } = 128 * 1024;

    /// <summary>Largest reply payload a sink may put into a result (a SENT is a few dozen bytes).</summary>
    public int MaxReplyBytes { get; init; } = 4 * 1024;

    /// <summary>Payload bytes a peer may hold, queued plus sent-but-unacked (they are kept for a resend).
    /// When full, <see cref="MeshPeer.SendAsync"/> waits for acks: backpressure to the senders.</summary>
    public long MaxQueueBytes { get; init; } = 8 * 1024 * 1024;

    /// <summary>Messages a peer may hold, queued plus unacked.</summary>
    public int MaxQueueMessages { get; init; } = 16 * 1024;

    /// <summary>First wait before reconnecting a broken stream; doubled per failed attempt.</summary>
    public TimeSpan ReconnectInitialDelay { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Longest wait between reconnect attempts.</summary>
    public TimeSpan ReconnectMaxDelay { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Receiver: distinct (origin, stream) links it keeps dedupe state for.</summary>
    public int MaxLinks { get; init; } = 1024;

    /// <summary>Receiver: results (replies, refusals) per link kept until the origin has seen the ack that
    /// carried them, so a resent message gets its result again. A sender never has more unacked messages
    /// than <see cref="MaxQueueMessages"/>, so that is the default.</summary>
    public int MaxCachedResults { get; init; } = 16 * 1024;

    /// <summary>Longest node id accepted in a batch header (characters).</summary>
    public int MaxNodeIdLength { get; init; } = 128;

    /// <summary>The largest gRPC message a receiver accepts: a full batch with protobuf overhead
    /// (at most ~40 bytes per message, 64 counted) and the header.</summary>
    internal int MaxBatchWireBytes => Math.Max(MaxBatchBytes, MaxMessageBytes) + (MaxBatchMessages * 64) + 1024;

    /// <summary>The largest ack: one result per message of a batch, with a reply or an owner id.</summary>
    internal int MaxAckWireBytes => (MaxBatchMessages * (MaxReplyBytes + (MaxNodeIdLength * 4) + 64)) + 1024;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxBatchMessages, 1, nameof(MaxBatchMessages));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxBatchMessages, 4096, nameof(MaxBatchMessages));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxMessageBytes, 1, nameof(MaxMessageBytes));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxMessageBytes, 16 * 1024 * 1024, nameof(MaxMessageBytes));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxBatchBytes, MaxMessageBytes, nameof(MaxBatchBytes));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxBatchBytes, 64 * 1024 * 1024, nameof(MaxBatchBytes));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxReplyBytes, 0, nameof(MaxReplyBytes));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxReplyBytes, 1024 * 1024, nameof(MaxReplyBytes));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxQueueBytes, MaxMessageBytes, nameof(MaxQueueBytes));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxQueueMessages, MaxBatchMessages, nameof(MaxQueueMessages));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxQueueMessages, 1 << 24, nameof(MaxQueueMessages));
        ArgumentOutOfRangeException.ThrowIfLessThan(ReconnectInitialDelay, TimeSpan.FromMilliseconds(1), nameof(ReconnectInitialDelay));
        ArgumentOutOfRangeException.ThrowIfLessThan(ReconnectMaxDelay, ReconnectInitialDelay, nameof(ReconnectMaxDelay));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxLinks, 1, nameof(MaxLinks));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxCachedResults, MaxBatchMessages, nameof(MaxCachedResults));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxNodeIdLength, 1, nameof(MaxNodeIdLength));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxNodeIdLength, 1024, nameof(MaxNodeIdLength));
    }
}
