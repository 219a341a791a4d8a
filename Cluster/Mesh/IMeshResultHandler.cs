using ChatBroker.Cluster.Mesh.Wire;

namespace ChatBroker.Cluster.Mesh;

/// <summary>A result of one sent message, as the receiver recorded it (see <see cref="MeshInboundBatch"/>).</summary>
public readonly struct MeshResultView(ulong id, MeshStatus status, ReadOnlyMemory<byte> reply, ulong epoch, string owner, uint reason)
{
    /// <summary>The id <see cref="MeshPeer.TrySend"/> returned for the message this answers.</summary>
    public ulong Id { get; } = id;

    public MeshStatus Status { get; } = status;

    /// <summary>The response payload of a request (valid during the handler's call only).</summary>
    public ReadOnlyMemory<byte> Reply { get; } = reply;

    /// <summary><see cref="MeshStatus.StaleEpoch"/>: the receiver's epoch.</summary>
    public ulong Epoch { get; } = epoch;

    /// <summary><see cref="MeshStatus.StaleEpoch"/>: the owner in the receiver's map.</summary>
    public string Owner { get; } = owner;

    /// <summary><see cref="MeshStatus.Rejected"/>: the reason code.</summary>
    public uint Reason { get; } = reason;
}

/// <summary>
/// Told by a <see cref="MeshPeer"/> what the receiver answered. Called on the peer's ack-reading loop,
/// one call at a time per peer, never under the peer's lock; keep it short (hand work off).
/// </summary>
public interface IMeshResultHandler
{
    /// <summary>A message got a reply or was refused. Comes before the <see cref="OnAcked"/> that covers it,
    /// and at most once per message (a result lost with its ack comes with the resend's ack).</summary>
    void OnResult(MeshPeer peer, in MeshResultView result);

    /// <summary>Every message up to <paramref name="ackedThrough"/> was handled by the receiver, whose epoch
    /// was <paramref name="receiverEpoch"/> when it acked.</summary>
    void OnAcked(MeshPeer peer, ulong ackedThrough, ulong receiverEpoch);

    /// <summary>A batch of <paramref name="messages"/> was acked <paramref name="latency"/> after it was written.</summary>
    void OnBatchAcked(MeshPeer peer, int messages, TimeSpan latency);
}
