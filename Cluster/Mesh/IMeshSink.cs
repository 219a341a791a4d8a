namespace ChatBroker.Cluster.Mesh;

/// <summary>
/// What a node does with the messages other nodes send it over the mesh. Cluster defines it; the broker
/// implements it (forwarded SENDs, deliveries to home nodes, later replication batches).
/// </summary>
/// <remarks>
/// The receiver calls <see cref="HandleAsync"/> once per batch, in id order per stream, with only the
/// messages it has not handed over before (duplicates from a resend are dropped by (origin, stream, id)
/// first). The ack that covers a batch is sent only after the returned task completes, so "acked"
/// means "handled": a sink that persists before it returns makes an ack mean "durable", which is what
/// replication needs. Batches of one stream never overlap; different streams and origins run in
/// parallel. An exception fails the stream: the sender reconnects and resends the batch.
/// </remarks>
public interface IMeshSink
{
    /// <summary>The node's cluster epoch now; sent back in every ack.</summary>
    ulong CurrentEpoch { get; }

    /// <summary>Handles the batch: for each message, do it, or record a refusal or reply on the batch
    /// (<see cref="MeshInboundBatch.RefuseStaleEpoch"/>, <see cref="MeshInboundBatch.Reply"/>,
    /// <see cref="MeshInboundBatch.Reject"/>). Payloads are valid only until the task completes.</summary>
    ValueTask HandleAsync(MeshInboundBatch batch, CancellationToken cancellationToken);
}
