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
public sealed record KillRecovery(string Node, double At, double? DownMs, int Conversations, int Recovered, double MedianMs, double MaxMs, bool BeforeRestart);

/// <summary>
/// Issue 16: "after kill -9 of a primary under load, sends to its ranges succeed again within 5 s". For each node a
/// NEMESIS event killed, the conversations that node owned at the kill (the ring of the last MAP event, as
/// <see cref="OwnerTally"/>) and, for each of them that was sent to afterwards, the time from the kill to its first
/// SENT. A conversation recovered before the node was restarted was served by another node: that is the failover
/// time a client sees (it includes the client's own retry backoff). Pure, from the history.
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

        var kills = new List<(string Node, double At, HashRing Ring)>();
        var restarts = new List<(string Node, double At)>();
        var sentTimes = new Dictionary<ulong, List<double>>();
        var sendTimes = new Dictionary<ulong, List<double>>();
        HashRing? ring = null;
        foreach (var e in history)
        {
            switch (e.Op)
            {
                case HistoryEvent.Map:
                    var ids = Array.ConvertAll(e.Nodes ?? [], HistoryEvent.NodeIdOf);
                    Array.Sort(ids, StringComparer.Ordinal);
                    ring = HashRing.Create(ids, Math.Max(1, e.Vnodes));
                    break;
                case HistoryEvent.Nemesis when e.Killed is { } killed && ring is not null:
                    foreach (var k in killed)
                    {
                        kills.Add((k, e.T, ring));
                    }

                    break;
                case HistoryEvent.Nemesis when e.Reason is { } reason && e.Killed is null:
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
                    Add(sentTimes, e.Conv != 0 ? e.Conv : conversationOf[e.Client!], e.T);
                    break;
                case HistoryEvent.Send when e.Conv != 0 || conversationOf.ContainsKey(e.Client!):
                    Add(sendTimes, e.Conv != 0 ? e.Conv : conversationOf[e.Client!], e.T);
                    break;
            }
        }

        var result = new List<KillRecovery>();
        foreach (var (node, at, atRing) in kills)
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
            foreach (var (conv, sends) in sendTimes)
            {
                if (atRing.ConversationOwner(conv) != node || !sends.Exists(t => t > at))
                {
                    continue;
                }

                owned++;
                if (sentTimes.TryGetValue(conv, out var sents) && sents.Find(t => t > at) is var first && first > at)
                {
                    waits.Add(first - at);
                }
            }

            waits.Sort();
            var median = waits.Count == 0 ? 0 : waits[waits.Count / 2];
            var max = waits.Count == 0 ? 0 : waits[^1];
            result.Add(new KillRecovery(node, at, restartAt - at, owned, waits.Count, median, max,
                waits.Count > 0 && (restartAt is null || at + max < restartAt)));
        }

        return result;
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
