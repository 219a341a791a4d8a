namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Counters of a node's routing (the mesh has its own, <c>MeshMetrics</c>): each bound or refusal of the cluster
/// layer moves one. Updated with <see cref="Interlocked"/>; read with <see cref="Snapshot"/> (status, exporter).
/// </summary>
public sealed class RoutingMetrics
{
    internal long SendsForwarded;
    internal long SendsAnsweredUnavailable;
    internal long StaleEpochRetries;
    internal long DirectIdProbes;
    internal long LinkQueueFull;
    internal long InboxEntriesForwarded;
    internal long InboxEntriesRejected;
    internal long CopiesStored;
    internal long CopiesDuplicate;
    internal long DeliversPosted;
    internal long DeliversDropped;
    internal long RemoteReads;
    internal long RemoteReadFailures;
    internal long StaleLogins;
    internal long DevicesReattached;
    internal long NewerMapWaits;
    internal long DevicesForgotten;
    internal long InboxForwardWaitsAbandoned;
    internal long SendsRerouted;
    internal long SlowInboundBatches;
    internal long InboxEntriesWithoutMessage;
    internal long InboxForwardHeldForLog;

    public RoutingMetricsSnapshot Snapshot() => new(
        Volatile.Read(ref SendsForwarded),
        Volatile.Read(ref SendsAnsweredUnavailable),
        Volatile.Read(ref StaleEpochRetries),
        Volatile.Read(ref DirectIdProbes),
        Volatile.Read(ref LinkQueueFull),
        Volatile.Read(ref InboxEntriesForwarded),
        Volatile.Read(ref InboxEntriesRejected),
        Volatile.Read(ref CopiesStored),
        Volatile.Read(ref CopiesDuplicate),
        Volatile.Read(ref DeliversPosted),
        Volatile.Read(ref DeliversDropped),
        Volatile.Read(ref RemoteReads),
        Volatile.Read(ref RemoteReadFailures),
        Volatile.Read(ref StaleLogins),
        Volatile.Read(ref DevicesReattached),
        Volatile.Read(ref NewerMapWaits),
        Volatile.Read(ref DevicesForgotten),
        Volatile.Read(ref InboxForwardWaitsAbandoned),
        Volatile.Read(ref SendsRerouted),
        Volatile.Read(ref SlowInboundBatches),
        Volatile.Read(ref InboxEntriesWithoutMessage),
        Volatile.Read(ref InboxForwardHeldForLog));
}

/// <param name="SendsForwarded">SENDs this gateway forwarded to their conversation's owner.</param>
/// <param name="SendsAnsweredUnavailable">Of those, answered SERVER_UNAVAILABLE (owner unreachable in time, no map, full link).</param>
/// <param name="StaleEpochRetries">Forwards refused with STALE_EPOCH and routed again after a newer map.</param>
/// <param name="DirectIdProbes">Direct conversation candidates skipped because another pair holds them.</param>
/// <param name="LinkQueueFull">Operations not queued because a link's queue was full (mesh max_queue_*).</param>
/// <param name="InboxEntriesForwarded">Forward-queue entries the homes acked (owner side).</param>
/// <param name="InboxEntriesRejected">Forward-queue entries a home rejected and that were skipped.</param>
/// <param name="CopiesStored">Forwarded messages stored with their inbox entries (home side).</param>
/// <param name="CopiesDuplicate">Forwarded messages the home already had (a resend).</param>
/// <param name="DeliversPosted">Live deliveries posted to the gateways of remote devices.</param>
/// <param name="DeliversDropped">Live deliveries dropped (full link; the device catches up at its next message).</param>
/// <param name="RemoteReads">Pages read from other nodes: inboxes of remote homes (catch-up) and history of remote owners.</param>
/// <param name="RemoteReadFailures">Of those, failed (the session was closed with SERVER_UNAVAILABLE).</param>
/// <param name="StaleLogins">Home: device registrations of a login older than the device's newest, whose session was closed instead.</param>
/// <param name="DevicesReattached">Gateway: sessions registered again with their home and caught up from it (the home restarted, or the ring gave the user a new home).</param>
/// <param name="DevicesForgotten">Home: devices registered through a gateway whose lease went, counted offline from then on.</param>
/// <param name="InboxForwardWaitsAbandoned">Owner: forward rounds that stopped waiting for a home's ack (cluster.forward_timeout, or a new map) and were sent again.</param>
/// <param name="SendsRerouted">Forwarded SENDs routed again, without waiting for the old owner's answer, because a new map gave their conversation to another node (a failover).</param>
/// <param name="NewerMapWaits">Inbound mesh batches that waited for the map of their sender's newer epoch before being judged.</param>
/// <param name="SlowInboundBatches">Inbound mesh batches whose handling took longer than a quarter of cluster.forward_timeout (logged with where
/// the time went): the stream of that node pair waited meanwhile, and a forwarded SEND behind four of them times out.</param>
/// <param name="InboxEntriesWithoutMessage">Owner: forward-queue entries skipped because their message is no longer in the log (retention).</param>
/// <param name="InboxForwardHeldForLog">Owner: forward rounds that stopped at an entry whose message this node's reads do not show yet (its batch
/// waits for replicas): the entry waits, it is not skipped.</param>
public readonly record struct RoutingMetricsSnapshot(
    long SendsForwarded,
    long SendsAnsweredUnavailable,
    long StaleEpochRetries,
    long DirectIdProbes,
    long LinkQueueFull,
    long InboxEntriesForwarded,
    long InboxEntriesRejected,
    long CopiesStored,
    long CopiesDuplicate,
    long DeliversPosted,
    long DeliversDropped,
    long RemoteReads,
    long RemoteReadFailures,
    long StaleLogins,
    long DevicesReattached,
    long NewerMapWaits,
    long DevicesForgotten,
    long InboxForwardWaitsAbandoned,
    long SendsRerouted,
    long SlowInboundBatches,
    long InboxEntriesWithoutMessage,
    long InboxForwardHeldForLog);
