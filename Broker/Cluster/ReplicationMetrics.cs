namespace ChatBroker.Broker.Cluster;

/// <summary>Counters of replication on this node (docs/cluster.md, "Replication"); plain Interlocked fields, read by
/// <see cref="Observability.RoutingInstruments"/> when /metrics is scraped.</summary>
public sealed class ReplicationMetrics
{
    /// <summary>Mesh messages of committed records sent to replicas (one per batch and replica, more when a batch is split).</summary>
    public long BatchesShipped;

    /// <summary>Records in those messages.</summary>
    public long RecordsShipped;

    /// <summary>Committed batches completed (their callers answered) after every replica they waited for had them.</summary>
    public long BatchesCompleted;

    /// <summary>Committed batches failed instead: this node was failed over while they waited (never acknowledged).</summary>
    public long BatchesFailed;

    /// <summary>Committed batches whose local inbox entries (a member's home is this node, the primary) were held back and
    /// sent to the members' replicas only after the conversation's replicas had the messages: one more round trip.</summary>
    public long BatchesHeld;

    /// <summary>Replicas this node took out of an in-sync list (its compare-and-set applied): they fell behind.</summary>
    public long InSyncRemovals;

    /// <summary>Removals this node proposed that the map refused: this node is Failed in the stored map, or the replica is
    /// the last live in-sync replica of a Failed member's ranges (taken out, those ranges would have no server).</summary>
    public long InSyncRemovalsRefused;

    /// <summary>Replicas this node added to its in-sync list after they caught up (its compare-and-set applied).</summary>
    public long InSyncAdds;

    /// <summary>Catch-ups of a replica that completed, and that failed (retried later).</summary>
    public long CatchUpsCompleted;

    public long CatchUpsFailed;

    /// <summary>Record bytes (keys and values) copied to replicas catching up.</summary>
    public long CatchUpBytes;

    /// <summary>As a replica: batches of other nodes' records written here, and records in them.</summary>
    public long BatchesApplied;

    public long RecordsApplied;

    /// <summary>As a replica: catch-ups begun here (what it held of the primary's ranges was reset first).</summary>
    public long Resets;

    /// <summary>As a replica: batches refused because their sender is Failed (or not a member) in this node's map.</summary>
    public long BatchesRefused;
}
