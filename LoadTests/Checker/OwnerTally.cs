using HashRing = ChatBroker.Cluster.Ring.HashRing;

namespace ChatBroker.LoadTests.Checker;

/// <summary>What happened to the SENDs of the conversations one node owned (by the ring of the map in force at each SEND).</summary>
public sealed record OwnerCounts(string Node, long Sends, long Acked, long Refused, long Failed, long Interrupted, bool Faulted)
{
    /// <summary>Refusals (retryable or definite): the operations on this node's ranges that failed.</summary>
    public long Failures => Refused + Failed;
}

/// <summary>The sessions one node served as gateway: how many ended, and how many SENDs they left without an outcome.</summary>
public sealed record GatewayCounts(string Node, long Disconnects, long Interrupted);

/// <summary>The per-node part of a cluster run's report.</summary>
public sealed record OwnerReport(IReadOnlyList<OwnerCounts> Owners, IReadOnlyList<GatewayCounts> Gateways, long OtherOwnerFailures, bool RingChanged)
{
    public static readonly OwnerReport None = new([], [], 0, false);

    /// <summary>
    /// A nemesis cut the network (a partition, a node cut off) or killed an etcd member: then an untouched owner's
    /// ranges may be refused for reasons outside it — its clients' gateway cut off from it, or its lease lapsing while
    /// its etcd client moves from an unreachable member to another — so other_owner_failures is reported, not judged.
    /// </summary>
    public bool NetworkFaults { get; init; }

    /// <summary>Whether other_owner_failures counts against the run: only while the ring stays and no network fault happened.</summary>
    public bool OtherOwnersJudged => !RingChanged && !NetworkFaults;

    /// <summary>The first few judged failures (time, client, owner, gateway, reason), to start looking from.</summary>
    public IReadOnlyList<string> Samples { get; init; } = [];
}

/// <summary>
/// Failures per owner node (issue 15: "kill -9 of one node of three: operations on other nodes' ranges never
/// failed"). Pure, from the history: the MAP events give the ring at each moment (HashRing of the Active members,
/// as every node builds it), a client's conversation comes from its SENDs and SENTs, and each SEND is charged to
/// the owner of its conversation then. A SEND_REFUSED or SEND_FAILED is a failure of that owner's range; a SEND
/// left without an outcome by the end of its session is "interrupted" and charged to its gateway too (a killed
/// gateway interrupts sends of every range: that is the gateway's fault, not the owner's). Nodes named by a
/// NEMESIS event are "faulted"; <see cref="OwnerReport.OtherOwnerFailures"/> counts the failures of the others.
/// It is judged only while the ring stays the same: during a join or leave, ranges move and a retryable error on a
/// moving range is allowed.
/// </summary>
public static class OwnerTally
{
    private sealed class Tally
    {
        public long Sends;
        public long Acked;
        public long Refused;
        public long Failed;
        public long Interrupted;
        public long Disconnects;
        public long GatewayInterrupted;
    }

    public static OwnerReport Count(IReadOnlyList<HistoryEvent> history)
    {
        // First pass: each client's conversation (a pair's comes with its first SENT; a group SEND names it) and
        // which node id is at which client address.
        var conversationOf = new Dictionary<string, ulong>();
        var nodeAt = new Dictionary<string, string>();
        var anyMap = false;
        foreach (var e in history)
        {
            if (e.Op == HistoryEvent.Sent || (e.Op == HistoryEvent.Send && e.Conv != 0))
            {
                conversationOf.TryAdd(e.Client!, e.Conv);
            }
            else if (e.Op == HistoryEvent.Map && e.Nodes is { } nodes)
            {
                anyMap = true;
                foreach (var entry in nodes)
                {
                    var eq = entry.IndexOf('=', StringComparison.Ordinal);
                    if (eq > 0)
                    {
                        nodeAt[entry[(eq + 1)..]] = entry[..eq];
                    }
                }
            }
        }

        if (!anyMap)
        {
            return OwnerReport.None; // a single node: nothing to attribute
        }

        var tallies = new SortedDictionary<string, Tally>(StringComparer.Ordinal);
        var faulted = new HashSet<string>(StringComparer.Ordinal);
        var failures = new List<(HistoryEvent Event, string Owner)>();
        var networkFaults = false;
        var pending = new Dictionary<(string Client, int Conn), Dictionary<ulong, string>>();
        var memberSets = new HashSet<string>(StringComparer.Ordinal);
        HashRing? ring = null;

        Tally TallyOf(string node)
        {
            if (!tallies.TryGetValue(node, out var t))
            {
                tallies[node] = t = new Tally();
            }

            return t;
        }

        string? OwnerOf(string client) =>
            ring is not null && ring.NodeCount > 0 && conversationOf.TryGetValue(client, out var conv) ? ring.ConversationOwner(conv) : null;

        string GatewayOf(string? endpoint) => endpoint is not null && nodeAt.TryGetValue(endpoint, out var id) ? id : endpoint ?? "?";

        string? Resolve(HistoryEvent e)
        {
            if (pending.TryGetValue((e.Client!, e.Conn), out var open) && open.Remove(e.Cmid, out var owner))
            {
                return owner;
            }

            return OwnerOf(e.Client!);
        }

        foreach (var e in history)
        {
            switch (e.Op)
            {
                case HistoryEvent.Map:
                    var ids = Array.ConvertAll(e.Nodes ?? [], HistoryEvent.NodeIdOf);
                    Array.Sort(ids, StringComparer.Ordinal);
                    memberSets.Add(string.Join(',', ids));
                    ring = HashRing.Create(ids, Math.Max(1, e.Vnodes));
                    foreach (var id in ids)
                    {
                        TallyOf(id);
                    }

                    break;
                case HistoryEvent.Nemesis when e.Node is not null:
                    faulted.UnionWith(e.Node.Split(',', StringSplitOptions.RemoveEmptyEntries));
                    networkFaults |= e.Reason is { } r && (r.StartsWith("partition", StringComparison.Ordinal)
                        || r.Contains("cut ", StringComparison.Ordinal) || r.Contains("etcd member", StringComparison.Ordinal));
                    break;
                case HistoryEvent.Send:
                    if (OwnerOf(e.Client!) is { } sendOwner)
                    {
                        TallyOf(sendOwner).Sends++;
                        if (!pending.TryGetValue((e.Client!, e.Conn), out var open))
                        {
                            pending[(e.Client!, e.Conn)] = open = [];
                        }

                        open[e.Cmid] = sendOwner;
                    }

                    break;
                case HistoryEvent.Sent:
                    if (Resolve(e) is { } sentOwner)
                    {
                        TallyOf(sentOwner).Acked++;
                    }

                    break;
                case HistoryEvent.SendRefused:
                    if (Resolve(e) is { } refusedOwner)
                    {
                        TallyOf(refusedOwner).Refused++;
                        failures.Add((e, refusedOwner));
                    }

                    break;
                case HistoryEvent.SendFailed:
                    if (Resolve(e) is { } failedOwner)
                    {
                        TallyOf(failedOwner).Failed++;
                        failures.Add((e, failedOwner));
                    }

                    break;
                case HistoryEvent.Disconnect:
                    var gateway = TallyOf(GatewayOf(e.Node));
                    gateway.Disconnects++;
                    if (pending.Remove((e.Client!, e.Conn), out var cut))
                    {
                        foreach (var owner in cut.Values)
                        {
                            TallyOf(owner).Interrupted++;
                            gateway.GatewayInterrupted++;
                        }
                    }

                    break;
            }
        }

        var owners = new List<OwnerCounts>();
        var gateways = new List<GatewayCounts>();
        long others = 0;
        foreach (var (node, t) in tallies)
        {
            var isFaulted = faulted.Contains(node);
            owners.Add(new OwnerCounts(node, t.Sends, t.Acked, t.Refused, t.Failed, t.Interrupted, isFaulted));
            gateways.Add(new GatewayCounts(node, t.Disconnects, t.GatewayInterrupted));
            if (!isFaulted)
            {
                others += t.Refused + t.Failed;
            }
        }

        var samples = new List<string>();
        foreach (var (e, owner) in failures)
        {
            if (!faulted.Contains(owner) && samples.Count < 10)
            {
                samples.Add($"t={e.T / 1000:0.000}s {e.Op} {e.Client} cmid {e.Cmid}: owner {owner}, gateway {GatewayOf(e.Node)}, {e.Reason}");
            }
        }

        return new OwnerReport(owners, gateways, others, memberSets.Count > 1) { Samples = samples, NetworkFaults = networkFaults };
    }
}
