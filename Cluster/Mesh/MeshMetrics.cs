namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// Counters of one mesh endpoint (all peers of a node share one instance on the sending side, the
/// receiver has its own or the same). Updated with <see cref="Interlocked"/>; read with
/// <see cref="Snapshot"/> by the broker's Prometheus exporter.
/// </summary>
public sealed class MeshMetrics
{
    // Sender.
    internal long MessagesSent;
    internal long BatchesSent;
    internal long BytesSent;
    internal long MessagesAcked;
    internal long MessagesResent;
    internal long Reconnects;
    internal long BackpressureWaits;
    internal long QueuedBytes;
    internal long QueuedBytesHighWater;
    internal long ResultsReceived;
    internal long ProtocolErrorsSent;

    // Receiver.
    internal long MessagesReceived;
    internal long BatchesReceived;
    internal long Duplicates;
    internal long StaleEpochRefusals;
    internal long Rejections;
    internal long ProtocolErrors;
    internal long LinksRefused;
    internal long ResultsDropped;

    public MeshMetricsSnapshot Snapshot() => new(
        Volatile.Read(ref MessagesSent),
        Volatile.Read(ref BatchesSent),
        Volatile.Read(ref BytesSent),
        Volatile.Read(ref MessagesAcked),
        Volatile.Read(ref MessagesResent),
        Volatile.Read(ref Reconnects),
        Volatile.Read(ref BackpressureWaits),
        Volatile.Read(ref QueuedBytes),
        Volatile.Read(ref QueuedBytesHighWater),
        Volatile.Read(ref ResultsReceived),
        Volatile.Read(ref ProtocolErrorsSent),
        Volatile.Read(ref MessagesReceived),
        Volatile.Read(ref BatchesReceived),
        Volatile.Read(ref Duplicates),
        Volatile.Read(ref StaleEpochRefusals),
        Volatile.Read(ref Rejections),
        Volatile.Read(ref ProtocolErrors),
        Volatile.Read(ref LinksRefused),
        Volatile.Read(ref ResultsDropped));

    internal void AddQueuedBytes(long delta)
    {
        var now = Interlocked.Add(ref QueuedBytes, delta);
        var high = Volatile.Read(ref QueuedBytesHighWater);
        while (now > high)
        {
            var seen = Interlocked.CompareExchange(ref QueuedBytesHighWater, now, high);
            if (seen == high)
            {
                break;
            }

            high = seen;
        }
    }
}

/// <summary>The counters of <see cref="MeshMetrics"/> at one moment.</summary>
/// <param name="MessagesSent">Messages written to a stream (resends included).</param>
/// <param name="BatchesSent">Writes (each one batch of up to max_batch_messages).</param>
/// <param name="BytesSent">Payload bytes written.</param>
/// <param name="MessagesAcked">Messages released by a cumulative ack.</param>
/// <param name="MessagesResent">Messages written again after a reconnect.</param>
/// <param name="Reconnects">Streams opened after the first one of a peer.</param>
/// <param name="BackpressureWaits">Sends that had to wait because a peer's queue was full.</param>
/// <param name="QueuedBytes">Payload bytes held by peers now (queued plus unacked).</param>
/// <param name="QueuedBytesHighWater">The most that <paramref name="QueuedBytes"/> has been.</param>
/// <param name="ResultsReceived">Results (replies, refusals) received with acks.</param>
/// <param name="ProtocolErrorsSent">Acks that broke the protocol (acked an unsent id): the stream was reset.</param>
/// <param name="MessagesReceived">Messages handed to the sink (each (origin, id) once).</param>
/// <param name="BatchesReceived">Batches read.</param>
/// <param name="Duplicates">Messages received again after a resend and not handed to the sink.</param>
/// <param name="StaleEpochRefusals">Messages the sink refused because the sender's epoch is stale.</param>
/// <param name="Rejections">Messages the sink rejected for another reason.</param>
/// <param name="ProtocolErrors">Streams failed for a bad batch (gap in ids, too many messages, too large, no header).</param>
/// <param name="LinksRefused">Streams refused because max_links links exist.</param>
/// <param name="ResultsDropped">Results dropped from a link's cache at max_cached_results.</param>
public readonly record struct MeshMetricsSnapshot(
    long MessagesSent,
    long BatchesSent,
    long BytesSent,
    long MessagesAcked,
    long MessagesResent,
    long Reconnects,
    long BackpressureWaits,
    long QueuedBytes,
    long QueuedBytesHighWater,
    long ResultsReceived,
    long ProtocolErrorsSent,
    long MessagesReceived,
    long BatchesReceived,
    long Duplicates,
    long StaleEpochRefusals,
    long Rejections,
    long ProtocolErrors,
    long LinksRefused,
    long ResultsDropped);
