using System.Diagnostics.Metrics;

namespace ChatBroker.Cluster.Coordination;

/// <summary>
/// The cluster's instruments, on the meter "ChatBroker.Cluster" (the broker's Prometheus exporter takes every
/// "ChatBroker*" meter). The gauges read the node's <see cref="ClusterView"/> at scrape time, so nothing is
/// counted on the hot path; the counters count maps taken and the membership changes this process proposed.
/// </summary>
public sealed class ClusterMetrics : IDisposable
{
    public const string MeterName = "ChatBroker.Cluster";

    private readonly Meter _meter;
    private readonly Counter<long> _mapsApplied;
    private readonly Counter<long> _changes;
    private readonly Counter<long> _conflicts;

    public ClusterMetrics(ClusterView view, string nodeName)
    {
        ArgumentNullException.ThrowIfNull(view);
        _meter = new Meter(MeterName, "1.0", [new KeyValuePair<string, object?>("node", nodeName)]);
        _meter.CreateObservableGauge("chatbroker.cluster.epoch", () => view.Epoch, "{epoch}", "Epoch of the cluster map this node acts on (0: none yet).");
        _meter.CreateObservableGauge("chatbroker.cluster.members", () => view.Map.Members.Length, "{node}", "Members listed in the cluster map this node has.");
        _meter.CreateObservableGauge("chatbroker.cluster.members.live", () => view.LiveMembers.Length, "{node}", "Nodes holding a live etcd lease, as this node last saw them.");
        _meter.CreateObservableGauge("chatbroker.cluster.etcd.connected", () => view.HasCurrentMap ? 1 : 0, null, "1 while the node's watch on etcd is connected (its map is current), else 0.");
        _meter.CreateObservableGauge("chatbroker.cluster.map.staleness", () => view.Staleness.TotalSeconds, "s", "How long the node's map may have been stale (0 while connected to etcd).");
        _meter.CreateObservableCounter("chatbroker.cluster.etcd.member_switches", () => view.MemberSwitches, "{switch}", "Times this node moved its etcd calls to the next member after one failed or did not answer in time.");
        _mapsApplied = _meter.CreateCounter<long>("chatbroker.cluster.map.applied", "{map}", "New cluster maps (epochs) this node took from etcd and acts on.");
        _changes = _meter.CreateCounter<long>("chatbroker.cluster.map.changes", "{change}", "Membership changes this node proposed, by outcome (applied, unchanged, refused, unavailable).");
        _conflicts = _meter.CreateCounter<long>("chatbroker.cluster.map.conflicts", "{attempt}", "Compare-and-set attempts of this node that lost to another change and were decided again.");
    }

    /// <summary>The node took a new map from its view.</summary>
    public void CountMapApplied() => _mapsApplied.Add(1);

    internal void CountChange(MapChangeStatus status) =>
        _changes.Add(1, new KeyValuePair<string, object?>("outcome", status switch
        {
            MapChangeStatus.Applied => "applied",
            MapChangeStatus.Unchanged => "unchanged",
            MapChangeStatus.Refused => "refused",
            _ => "unavailable",
        }));

    internal void CountConflict() => _conflicts.Add(1);

    public void Dispose() => _meter.Dispose();
}
