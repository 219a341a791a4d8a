using HashRing = ChatBroker.Cluster.Ring.HashRing;

namespace ChatBroker.LoadTests.Checker;

/// <summary>One kill -9 of a node and how long its conversations waited for their next SENT.</summary>
/// <param name="Node">The node killed.</param>
/// <param name="At">When (ms since the run started).</param>
/// <param name="DownMs">Until the nemesis restarted it (ms), or null if the history has no restart.</param>
/// <param name="Conversations">Conversations the node owned (by the ring in force) that had sends after the kill.</param>
/// <param name="Recovered">Of those, the ones that got a SENT after the kill.</param>
/// <param name="MedianMs">Median over the recovered conversations of (first SENT after the kill − kill).</param>
/// <param name="MaxMs">Maximum of the same.</param>
/// <param name="BeforeRestart">Every recovered conversation got its SENT before the node came back: served by another node (failover).</param>
/// <param name="BehindFaultedGateway">Of <paramref name="Conversations"/>, the ones whose SENTs after the kill all came through a node another
/// fault of the same time had cut off or paused (their sender could reach no one else): not counted as recovered, since their wait
/// is that fault's, not the failover's.</param>
public sealed record KillRecovery(string Node, double At, double? DownMs, int Conversations, int Recovered, double MedianMs, double MaxMs, bool BeforeRestart,
    int BehindFaultedGateway = 0);

/// <summary>
/// Issue 16: "after kill -9 of a primary under load, sends to its ranges succeed again within 5 s". For each node a
/// NEMESIS event killed, the conversations that node owned at the kill (the ring of the last MAP event, as
/// <see cref="OwnerTally"/>) and, for each of them that was sent to afterwards, the time from the kill to its first
/// SENT. A conversation recovered before the node was restarted was served by another node: that is the failover
/// time a client sees (it includes the client's own retry backoff). A SENT through a node that another fault in force at
/// the kill (a cut, a pause: the nemesis's faults until its next heal) had cut off does not count: with two faults at
/// once, a sender connected to the cut-off node waits for the heal whoever serves the conversation (checker seed 342).
/// Pure, from the history.
/// </summary>
public static class RecoveryTally
{
    public static IReadOnlyList<KillRecovery> Count(IReadOnlyList<HistoryEvent> history)
    {
        var conversationOf = new Dictionary<string, ulong>();
        foreach (var e in history)
        {
            if (e.Op == HistoryEvent.Sent || (e.Op == HistoryEvent.Send && e.Conv != 0))
            {
                conversationOf.TryAdd(e.Client!, e.Conv);
            }
        }

        var kills = new List<(string Node, double At, HashRing Ring, HashSet<string> Others)>();
        var restarts = new List<(string Node, double At)>();
        var sentTimes = new Dictionary<ulong, List<(double T, string Gateway)>>();
        var sendTimes = new Dictionary<ulong, List<double>>();
        var nodeAt = new Dictionary<string, string>(StringComparer.Ordinal);
        var faulted = new HashSet<string>(StringComparer.Ordinal); // nodes of the faults in force (until the next heal)
        HashRing? ring = null;
        foreach (var e in history)
        {
            switch (e.Op)
            {
                case HistoryEvent.Map:
                    var ids = Array.ConvertAll(e.Nodes ?? [], HistoryEvent.NodeIdOf);
                    Array.Sort(ids, StringComparer.Ordinal);
                    ring = HashRing.Create(ids, Math.Max(1, e.Vnodes));
                    foreach (var entry in e.Nodes ?? [])
                    {
                        if (entry.IndexOf('=', StringComparison.Ordinal) is var eq and > 0)
                        {
                            nodeAt[entry[(eq + 1)..]] = entry[..eq];
                        }
                    }

                    break;
                case HistoryEvent.Nemesis when e.Node is { } nodes:
                    faulted.UnionWith(nodes.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                    if (e.Killed is { } killed && ring is not null)
                    {
                        var others = new HashSet<string>(faulted, StringComparer.Ordinal);
                        others.ExceptWith(killed);
                        foreach (var k in killed)
                        {
                            kills.Add((k, e.T, ring, others));
                        }
                    }

                    break;
                case HistoryEvent.Nemesis when e.Reason is { } reason && e.Killed is null:
                    faulted.Clear(); // a heal (and the restarts with it) ends the faults in force
                    foreach (var part in reason.Split(';', StringSplitOptions.TrimEntries))
                    {
                        if (part.StartsWith("restart ", StringComparison.Ordinal))
                        {
                            foreach (var id in part["restart ".Length..].Split(',', StringSplitOptions.TrimEntries))
                            {
                                restarts.Add((id, e.T));
                            }
                        }
                    }

                    break;
                case HistoryEvent.Sent when conversationOf.TryGetValue(e.Client!, out var conv) || e.Conv != 0:
                    var gateway = e.Node is { } endpoint && nodeAt.TryGetValue(endpoint, out var nodeId) ? nodeId : e.Node ?? "";
                    AddSent(sentTimes, e.Conv != 0 ? e.Conv : conversationOf[e.Client!], (e.T, gateway));
                    break;
                case HistoryEvent.Send when e.Conv != 0 || conversationOf.ContainsKey(e.Client!):
                    Add(sendTimes, e.Conv != 0 ? e.Conv : conversationOf[e.Client!], e.T);
                    break;
            }
        }

        var result = new List<KillRecovery>();
        foreach (var (node, at, atRing, others) in kills)
        {
            double? restartAt = null;
            foreach (var (id, t) in restarts)
            {
                if (id == node && t > at)
                {
                    restartAt = t;
                    break;
                }
            }

            var waits = new List<double>();
            var owned = 0;
            var behind = 0;
            foreach (var (conv, sends) in sendTimes)
            {
                if (atRing.ConversationOwner(conv) != node || !sends.Exists(t => t > at))
                {
                    continue;
                }

                owned++;
                if (!sentTimes.TryGetValue(conv, out var sents))
                {
                    continue;
                }

                var first = sents.Find(x => x.T > at && !others.Contains(x.Gateway));
                if (first.T > at)
                {
                    waits.Add(first.T - at);
                }
                else if (sents.Exists(x => x.T > at))
                {
                    behind++;
                }
            }

            waits.Sort();
            var median = waits.Count == 0 ? 0 : waits[waits.Count / 2];
            var max = waits.Count == 0 ? 0 : waits[^1];
            result.Add(new KillRecovery(node, at, restartAt - at, owned, waits.Count, median, max,
                waits.Count > 0 && (restartAt is null || at + max < restartAt), behind));
        }

        return result;
    }

    private static void AddSent(Dictionary<ulong, List<(double T, string Gateway)>> times, ulong conv, (double T, string Gateway) sent)
    {
        if (!times.TryGetValue(conv, out var list))
        {
            times[conv] = list = [];
        }

        list.Add(sent);
    }

    private static void Add(Dictionary<ulong, List<double>> times, ulong conv, double t)
    {
        if (!times.TryGetValue(conv, out var list))
        {
            times[conv] = list = [];
        }

        list.Add(t);
    }
}
