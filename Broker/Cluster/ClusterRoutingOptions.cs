using ChatBroker.Cluster.Mesh;

namespace ChatBroker.Broker.Cluster;

/// <summary>The bounds of routing between nodes; the host maps <c>cluster.*</c> settings onto them.</summary>
public sealed record ClusterRoutingOptions
{
    /// <summary>How long a gateway waits for a conversation's owner to answer a forwarded SEND (or for a newer map
    /// after a refusal) before it answers the device SERVER_UNAVAILABLE with <see cref="RetryAfter"/>.</summary>
    public TimeSpan ForwardTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The retry_after_ms of that refusal.</summary>
    public TimeSpan RetryAfter { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long a gateway waits for a remote home's inbox page before the session is closed with
    /// SERVER_UNAVAILABLE (the device reconnects and resumes).</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Inbox entries a home's forward queue sends per round (one mesh batch's worth).</summary>
    public int ForwardBatch { get; init; } = 64;

    /// <summary>Times a forwarded SEND is retried after STALE_EPOCH refusals (each after a newer map).</summary>
    public int MaxStaleRetries { get; init; } = 3;

    /// <summary>How long one step of a range hand-over (every member's prepare, or its export) may take before the
    /// attempt fails; while it runs, SENDs on the moving ranges are refused with a retryable SERVER_UNAVAILABLE.</summary>
    public TimeSpan HandoverStepTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Attempts of a hand-over on one map before the join or leave is aborted (the map is put back).</summary>
    public int HandoverAttempts { get; init; } = 3;

    /// <summary>Records per range chunk (one mesh message; its bytes are bounded by a third of the mesh's
    /// MaxMessageBytes).</summary>
    public int HandoverChunkRecords { get; init; } = 512;

    /// <summary>Fencing: a primary whose ranges can fail over acknowledges only while its lease is certainly alive for
    /// this much longer, on its own clock (docs/cluster.md, "Failover"). Covers the clock-rate difference between this
    /// node and etcd over one TTL and the time from the check to the client seeing SENT.</summary>
    public TimeSpan LeaseSafetyMargin { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Failover: how long a live member other than the first live Active one waits before it proposes
    /// marking a dead member Failed itself (the first may be cut off from etcd); each further one waits this much more.</summary>
    public TimeSpan FailoverBackupDelay { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>How long a member stays Failed before it is removed from the ring for good, so that its ranges get new
    /// replicas (counted from when it was marked Failed, in the map).</summary>
    public TimeSpan FailedNodeTimeout { get; init; } = TimeSpan.FromMinutes(15);

    /// <summary>Failover: the node that takes over a Failed member's ranges sends the messages of this last stretch
    /// before the failure (at most 256 per conversation) to their recipients' homes again, since the failed node's
    /// forward queues are not replicated (homes store each copy once). Also how long a forward queue waits at an entry
    /// whose message its node's reads do not show yet (a batch holding that seq waits for replicas) before it takes the
    /// message for gone (retention) and skips the entry.</summary>
    public TimeSpan ReforwardWindow { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Replication: how long a primary waits for an in-sync replica to ack a committed batch before it proposes
    /// the replica's removal from the in-sync list (a compare-and-set; the batch goes on waiting until the map without
    /// it is applied). Also what a catch-up page may take (four times this).</summary>
    public TimeSpan ReplicationTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Replication: committed batches sent to one replica and not yet acked past which the replica counts as
    /// behind (as after the timeout). The mesh link's own queue bounds (cluster.mesh_max_queue_*) hold as well.</summary>
    public int ReplicationMaxQueueBatches { get; init; } = 4096;

    /// <summary>The mesh's bounds, with replies large enough for an inbox page of catch-up.</summary>
    public MeshOptions Mesh { get; init; } = new() { MaxReplyBytes = 256 * 1024 };

    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(ForwardTimeout, TimeSpan.Zero, nameof(ForwardTimeout));
        ArgumentOutOfRangeException.ThrowIfLessThan(RetryAfter, TimeSpan.Zero, nameof(RetryAfter));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(ReadTimeout, TimeSpan.Zero, nameof(ReadTimeout));
        ArgumentOutOfRangeException.ThrowIfLessThan(ForwardBatch, 1, nameof(ForwardBatch));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(ForwardBatch, 4096, nameof(ForwardBatch));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxStaleRetries, 0, nameof(MaxStaleRetries));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(HandoverStepTimeout, TimeSpan.Zero, nameof(HandoverStepTimeout));
        ArgumentOutOfRangeException.ThrowIfLessThan(HandoverAttempts, 1, nameof(HandoverAttempts));
        ArgumentOutOfRangeException.ThrowIfLessThan(HandoverChunkRecords, 1, nameof(HandoverChunkRecords));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(HandoverChunkRecords, Storage.IRangeTransfer.MaxImportRecords / 2, nameof(HandoverChunkRecords));
        ArgumentOutOfRangeException.ThrowIfLessThan(LeaseSafetyMargin, TimeSpan.Zero, nameof(LeaseSafetyMargin));
        ArgumentOutOfRangeException.ThrowIfLessThan(FailoverBackupDelay, TimeSpan.Zero, nameof(FailoverBackupDelay));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(FailedNodeTimeout, TimeSpan.Zero, nameof(FailedNodeTimeout));
        ArgumentOutOfRangeException.ThrowIfLessThan(ReforwardWindow, TimeSpan.Zero, nameof(ReforwardWindow));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(ReplicationTimeout, TimeSpan.Zero, nameof(ReplicationTimeout));
        ArgumentOutOfRangeException.ThrowIfLessThan(ReplicationMaxQueueBatches, 1, nameof(ReplicationMaxQueueBatches));
        Mesh.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(Mesh.MaxReplyBytes, Mesh.MaxMessageBytes + 1024, "Mesh.MaxReplyBytes");
    }
}
