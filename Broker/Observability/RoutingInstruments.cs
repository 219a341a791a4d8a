using System.Diagnostics.Metrics;
using ChatBroker.Broker.Cluster;
using ChatBroker.Cluster.Mesh;

namespace ChatBroker.Broker.Observability;

/// <summary>
/// A cluster node's routing and mesh counters on the meter "ChatBroker.Routing" (cluster mode only): the node's
/// <see cref="RoutingMetrics"/>, the sending ends of its mesh links (<see cref="ClusterNode.MeshMetrics"/>) and the
/// receiving end (<see cref="MeshReceiver.Metrics"/>). They are plain Interlocked fields on the hot path; these
/// observable instruments read them only when /metrics is scraped.
/// </summary>
public sealed class RoutingInstruments : IDisposable
{
    public const string MeterName = "ChatBroker.Routing";

    private readonly Meter _meter;

    public RoutingInstruments(ClusterNode node, MeshReceiver receiver, string nodeName)
    {
        ArgumentNullException.ThrowIfNull(node);
        ArgumentNullException.ThrowIfNull(receiver);
        _meter = new Meter(MeterName, "1.0", [new KeyValuePair<string, object?>("node", nodeName)]);
        var routing = node.Metrics;
        Counter("chatbroker.cluster.sends.forwarded", "{message}", "SENDs this node forwarded to their conversation's owner.", () => routing.Snapshot().SendsForwarded);
        Counter("chatbroker.cluster.sends.unavailable", "{message}", "Forwarded SENDs answered SERVER_UNAVAILABLE (owner not live, unreachable in time, no map, full link).", () => routing.Snapshot().SendsAnsweredUnavailable);
        Counter("chatbroker.cluster.sends.rerouted", "{message}", "Forwarded SENDs routed again without waiting for the old owner's answer: a new map gave the conversation to another node (a failover).", () => routing.Snapshot().SendsRerouted);
        Counter("chatbroker.cluster.sends.stale_epoch_retries", "{message}", "Forwarded SENDs refused with STALE_EPOCH and routed again after a newer map.", () => routing.Snapshot().StaleEpochRetries);
        Counter("chatbroker.cluster.direct_id_probes", "{probe}", "Direct conversation id candidates skipped because another pair holds them.", () => routing.Snapshot().DirectIdProbes);
        Counter("chatbroker.cluster.link_queue_full", "{operation}", "Operations not queued because a mesh link's queue was full (cluster.mesh_max_queue_*).", () => routing.Snapshot().LinkQueueFull);
        Counter("chatbroker.cluster.inbox.forwarded", "{entry}", "Forward-queue entries (inbox entries for users of other home nodes) the homes acknowledged.", () => routing.Snapshot().InboxEntriesForwarded);
        _meter.CreateObservableGauge("chatbroker.cluster.inbox.forward_backlog", () => (long)node.TotalForwardBacklog(), "{entry}", "Inbox entries for users of other home nodes not yet acknowledged by their homes (every forward queue of this node).");
        Counter("chatbroker.cluster.inbox.forward_waits_abandoned", "{round}", "Forward rounds that stopped waiting for a home's ack (cluster.forward_timeout, or a new map) and sent their entries again to whoever serves the users then.", () => routing.Snapshot().InboxForwardWaitsAbandoned);
        Counter("chatbroker.cluster.inbox.rejected", "{entry}", "Forward-queue entries a home rejected and that were skipped.", () => routing.Snapshot().InboxEntriesRejected);
        Counter("chatbroker.cluster.copies.stored", "{message}", "Messages of other owners stored here with their inbox entries (this node is the home).", () => routing.Snapshot().CopiesStored);
        Counter("chatbroker.cluster.copies.duplicate", "{message}", "Forwarded messages this home already had (a resend).", () => routing.Snapshot().CopiesDuplicate);
        Counter("chatbroker.cluster.delivers.posted", "{message}", "Live deliveries posted to the nodes holding remote devices' connections.", () => routing.Snapshot().DeliversPosted);
        Counter("chatbroker.cluster.delivers.dropped", "{message}", "Live deliveries dropped at a full link (the device catches up at its next message).", () => routing.Snapshot().DeliversDropped);
        Counter("chatbroker.cluster.reads.remote", "{read}", "Pages read from other nodes (inbox catch-up at remote homes, history at remote owners).", () => routing.Snapshot().RemoteReads);
        Counter("chatbroker.cluster.logins.stale", "{login}", "Device registrations of a login older than the device's newest (it moved on meanwhile); the older session was closed.", () => routing.Snapshot().StaleLogins);
        Counter("chatbroker.cluster.reads.failed", "{read}", "Of those, failed (answered or closed with SERVER_UNAVAILABLE).", () => routing.Snapshot().RemoteReadFailures);
        Counter("chatbroker.cluster.devices.reattached", "{session}", "Sessions registered again with their home and caught up from it (the home restarted, or the ring moved the user).", () => routing.Snapshot().DevicesReattached);
        Counter("chatbroker.cluster.newer_map_waits", "{batch}", "Inbound mesh batches that waited for the sender's newer map before being judged.", () => routing.Snapshot().NewerMapWaits);
        Counter("chatbroker.cluster.mesh_slow_batches", "{batch}", "Inbound mesh batches whose handling took longer than a quarter of cluster.forward_timeout (the node pair's stream waited meanwhile).", () => routing.Snapshot().SlowInboundBatches);
        Counter("chatbroker.cluster.inbox.without_message", "{entry}", "Forward-queue entries skipped because their message is no longer in the log (retention).", () => routing.Snapshot().InboxEntriesWithoutMessage);
        Counter("chatbroker.cluster.inbox.forward_held_for_log", "{round}", "Forward rounds that stopped at an entry whose message this node's reads do not show yet (its batch waits for replicas); the entry waits.", () => routing.Snapshot().InboxForwardHeldForLog);
        Counter("chatbroker.cluster.devices.forgotten", "{device}", "Devices registered here through a node whose lease went; counted offline from then on.", () => routing.Snapshot().DevicesForgotten);

        var failover = node.Failover;
        Counter("chatbroker.cluster.failover.marked_failed", "{member}", "Members whose lease was gone that this node marked Failed in the map (their ranges went to in-sync replicas).", () => Interlocked.Read(ref failover.MarkedFailed));
        Counter("chatbroker.cluster.failover.removed", "{member}", "Failed members this node removed from the ring after cluster.failed_node_timeout.", () => Interlocked.Read(ref failover.Removed));
        Counter("chatbroker.cluster.failover.proposals_not_applied", "{proposal}", "Failover or removal proposals that did not apply (another node's change won, etcd unreachable, not allowed yet).", () => Interlocked.Read(ref failover.ProposalsNotApplied));
        Counter("chatbroker.cluster.failover.fenced", "{write}", "Writes refused (retryable SERVER_UNAVAILABLE) because this node's lease was not certain for cluster.lease_margin more.", () => Interlocked.Read(ref failover.Fenced));
        Counter("chatbroker.cluster.failover.reforwarded", "{entry}", "Inbox entries sent again to homes after this node took over a failed member's ranges.", () => Interlocked.Read(ref failover.EntriesReforwarded));
        Counter("chatbroker.cluster.failover.commits_refused_failed_self", "{write}", "Commits refused (retryable) because this node is Failed in the cluster map and sequences nothing.", () => Interlocked.Read(ref failover.CommitsRefusedFailedSelf));
        Counter("chatbroker.cluster.failover.commits_waiting", "{write}", "Commits refused (retryable) while their range was being re-forwarded after a take-over.", () => Interlocked.Read(ref failover.CommitsRefusedReforwarding));

        var sent = node.MeshMetrics;
        Counter("chatbroker.mesh.sent.messages", "{message}", "Mesh messages written to other nodes (resends included).", () => sent.Snapshot().MessagesSent);
        Counter("chatbroker.mesh.sent.batches", "{batch}", "Mesh writes to other nodes (one batch of up to cluster.mesh_max_batch_messages each).", () => sent.Snapshot().BatchesSent);
        Counter("chatbroker.mesh.sent.payload", "By", "Mesh payload bytes written to other nodes.", () => sent.Snapshot().BytesSent);
        Counter("chatbroker.mesh.sent.acked", "{message}", "Mesh messages other nodes acknowledged.", () => sent.Snapshot().MessagesAcked);
        Counter("chatbroker.mesh.sent.resent", "{message}", "Mesh messages written again after a reconnect.", () => sent.Snapshot().MessagesResent);
        Counter("chatbroker.mesh.sent.reconnects", "{stream}", "Mesh streams opened again after the first one to a node.", () => sent.Snapshot().Reconnects);
        Counter("chatbroker.mesh.sent.backpressure_waits", "{message}", "Mesh sends that waited because a node's queue was full.", () => sent.Snapshot().BackpressureWaits);
        Counter("chatbroker.mesh.sent.results", "{result}", "Answers (replies, refusals) received with acknowledgements.", () => sent.Snapshot().ResultsReceived);
        Counter("chatbroker.mesh.sent.protocol_errors", "{ack}", "Acknowledgements from other nodes that broke the protocol (the stream was reset).", () => sent.Snapshot().ProtocolErrorsSent);
        _meter.CreateObservableGauge("chatbroker.mesh.queued", () => sent.Snapshot().QueuedBytes, "By", "Mesh payload bytes held for other nodes now (queued plus unacknowledged).");
        _meter.CreateObservableGauge("chatbroker.mesh.queued.high_water", () => sent.Snapshot().QueuedBytesHighWater, "By", "The most mesh payload bytes held for other nodes at once since start.");

        var received = receiver.Metrics;
        Counter("chatbroker.mesh.received.messages", "{message}", "Mesh messages from other nodes handed to this node (each once).", () => received.Snapshot().MessagesReceived);
        Counter("chatbroker.mesh.received.batches", "{batch}", "Mesh batches read from other nodes.", () => received.Snapshot().BatchesReceived);
        Counter("chatbroker.mesh.received.duplicates", "{message}", "Mesh messages received again after a resend and not handled twice.", () => received.Snapshot().Duplicates);
        Counter("chatbroker.mesh.received.stale_epoch", "{message}", "Mesh messages refused because the sender's cluster map is older and gives this node nothing to do with them.", () => received.Snapshot().StaleEpochRefusals);
        Counter("chatbroker.mesh.received.rejected", "{message}", "Mesh messages rejected for another reason (malformed, a field refused).", () => received.Snapshot().Rejections);
        Counter("chatbroker.mesh.received.protocol_errors", "{stream}", "Mesh streams failed for a bad batch (gap in ids, too many messages, too large, no header).", () => received.Snapshot().ProtocolErrors);
        Counter("chatbroker.mesh.received.links_refused", "{stream}", "Mesh streams refused because cluster.mesh_max_links links exist.", () => received.Snapshot().LinksRefused);
        Counter("chatbroker.mesh.received.results_dropped", "{result}", "Answers dropped from a link's cache at cluster.mesh_max_cached_results.", () => received.Snapshot().ResultsDropped);
        _meter.CreateObservableGauge("chatbroker.mesh.links", () => receiver.LinkCount, "{stream}", "Mesh streams from other nodes this node keeps state for.");

        // ---- replication (docs/cluster.md, "Replication") ----
        var replication = node.Replication;
        _meter.CreateObservableGauge("chatbroker.replication.lag", () => node.ReplicationLagSeconds, "s", "How long the oldest committed batch has waited for its in-sync replicas (0 when none waits).");
        _meter.CreateObservableGauge("chatbroker.replication.pending", () => node.ReplicationPendingBatches, "{batch}", "Committed batches waiting for replicas now.");
        Counter("chatbroker.replication.batches.shipped", "{batch}", "Messages of committed records sent to replicas (one per batch and replica).", () => Interlocked.Read(ref replication.BatchesShipped));
        Counter("chatbroker.replication.records.shipped", "{record}", "Records sent to replicas.", () => Interlocked.Read(ref replication.RecordsShipped));
        Counter("chatbroker.replication.batches.completed", "{batch}", "Committed batches answered after every replica they waited for had them.", () => Interlocked.Read(ref replication.BatchesCompleted));
        Counter("chatbroker.replication.batches.failed", "{batch}", "Committed batches not acknowledged because this node was failed over while they waited.", () => Interlocked.Read(ref replication.BatchesFailed));
        Counter("chatbroker.replication.batches.held", "{batch}", "Committed batches whose members' inbox entries waited for the conversation's replicas before going to the members' replicas (a local append: one more round trip).", () => Interlocked.Read(ref replication.BatchesHeld));
        Counter("chatbroker.replication.in_sync.removals_refused", "{proposal}", "In-sync removals this node proposed that the map refused (this node is Failed in the stored map, or the replica is the last live in-sync replica of a Failed member's ranges, which stays however it lags).", () => Interlocked.Read(ref replication.InSyncRemovalsRefused));
        Counter("chatbroker.replication.in_sync.removals", "{replica}", "Replicas this node took out of an in-sync set (compare-and-set applied) because they fell behind.", () => Interlocked.Read(ref replication.InSyncRemovals));
        Counter("chatbroker.replication.in_sync.adds", "{replica}", "Replicas this node added to its in-sync set after their catch-up (compare-and-set applied).", () => Interlocked.Read(ref replication.InSyncAdds));
        Counter("chatbroker.replication.catchups.completed", "{catchup}", "Catch-ups of a replica that completed.", () => Interlocked.Read(ref replication.CatchUpsCompleted));
        Counter("chatbroker.replication.catchups.failed", "{catchup}", "Catch-ups of a replica that stopped (retried later).", () => Interlocked.Read(ref replication.CatchUpsFailed));
        Counter("chatbroker.replication.catchup", "By", "Record bytes copied to replicas catching up.", () => Interlocked.Read(ref replication.CatchUpBytes));
        Counter("chatbroker.replication.applied.batches", "{batch}", "As a replica: batches of other nodes' records written here.", () => Interlocked.Read(ref replication.BatchesApplied));
        Counter("chatbroker.replication.applied.records", "{record}", "As a replica: records written here.", () => Interlocked.Read(ref replication.RecordsApplied));
        Counter("chatbroker.replication.resets", "{catchup}", "As a replica: catch-ups begun here; what this node held of the primary's ranges (but the logs) was deleted before the copy.", () => Interlocked.Read(ref replication.Resets));
        Counter("chatbroker.replication.refused", "{batch}", "As a replica: batches refused because their sender is Failed or not a member in this node's map.", () => Interlocked.Read(ref replication.BatchesRefused));
    }

    public void Dispose() => _meter.Dispose();

    private void Counter(string name, string unit, string description, Func<long> observe) =>
        _meter.CreateObservableCounter(name, observe, unit, description);
}
