using ChatBroker.LoadTests.Checker;

namespace ChatBroker.LoadTests.Tests;

/// <summary>
/// Failures per owner node (issue 15: kill -9 of one node of three, the others' ranges never fail). Three nodes
/// n1..n3; alice's conversation is owned by n1, carol's by n2; n2 is killed.
/// </summary>
public sealed class OwnerTallyTests
{
    private static readonly string[] Nodes = ThreeNodeRing.Nodes;
    private static readonly ulong ConvOfN1 = ThreeNodeRing.OwnedBy("n1");
    private static readonly ulong ConvOfN2 = ThreeNodeRing.OwnedBy("n2");

    private static HistoryEvent Map(params string[] nodes) => ThreeNodeRing.Map() with { Nodes = nodes };

    private static HistoryEvent Send(string client, ulong cmid, string node = "127.0.0.1:7003", int conn = 1) =>
        new() { Op = HistoryEvent.Send, Client = client, Node = node, Conn = conn, Cmid = cmid, To = "x" };

    private static HistoryEvent Sent(string client, ulong cmid, ulong conv, int conn = 1) =>
        new() { Op = HistoryEvent.Sent, Client = client, Node = "127.0.0.1:7003", Conn = conn, Cmid = cmid, Conv = conv, Seq = cmid };

    private static HistoryEvent Refused(string client, ulong cmid, int conn = 1) =>
        new() { Op = HistoryEvent.SendRefused, Client = client, Node = "127.0.0.1:7003", Conn = conn, Cmid = cmid, Reason = "ServerUnavailable" };

    /// <summary>alice (n1's range) sends 2, both acked; carol (n2's range) sends 1 acked, then n2 is killed and 2 are refused, then acked.</summary>
    private static List<HistoryEvent> KillOfN2() =>
    [
        Map(Nodes),
        Send("alice/d1", 1), Sent("alice/d1", 1, ConvOfN1),
        Send("carol/d1", 1), Sent("carol/d1", 1, ConvOfN2),
        new() { Op = HistoryEvent.Nemesis, Node = "n2", Reason = "kill -9 n2" },
        Send("carol/d1", 2), Refused("carol/d1", 2),
        Send("carol/d1", 3), Refused("carol/d1", 3),
        Send("alice/d1", 2), Sent("alice/d1", 2, ConvOfN1),
        new() { Op = HistoryEvent.Nemesis, Reason = "restart n2" },
        Send("carol/d1", 2), Sent("carol/d1", 2, ConvOfN2),
        Send("carol/d1", 3), Sent("carol/d1", 3, ConvOfN2),
    ];

    private static OwnerCounts Owner(OwnerReport report, string node) => report.Owners.Single(o => o.Node == node);

    [Fact]
    public void Refusals_on_the_killed_nodes_ranges_are_charged_to_it_and_allowed()
    {
        var report = OwnerTally.Count(KillOfN2());
        Assert.False(report.RingChanged);
        Assert.Equal(0, report.OtherOwnerFailures);
        Assert.Equal(new OwnerCounts("n1", 2, 2, 0, 0, 0, false), Owner(report, "n1"));
        Assert.Equal(new OwnerCounts("n2", 5, 3, 2, 0, 0, true), Owner(report, "n2"));
        Assert.Equal(new OwnerCounts("n3", 0, 0, 0, 0, 0, false), Owner(report, "n3"));
    }

    [Fact]
    public void A_refusal_on_a_range_of_a_node_no_nemesis_touched_is_a_violation()
    {
        var history = KillOfN2();
        history.Insert(history.Count - 1, Send("alice/d1", 3));
        history.Insert(history.Count - 1, Refused("alice/d1", 3));
        history.Insert(history.Count - 1, new HistoryEvent { Op = HistoryEvent.SendFailed, Client = "alice/d1", Conn = 1, Cmid = 4 });
        var report = OwnerTally.Count(history);
        Assert.Equal(2, report.OtherOwnerFailures);
        Assert.Equal(1, Owner(report, "n1").Refused);
        Assert.Equal(1, Owner(report, "n1").Failed);

        var judged = HistoryChecker.Check(history);
        Assert.Equal(2, judged.OtherOwnerFailures);
        Assert.False(judged.Passed);
    }

    [Fact]
    public void Sends_cut_by_their_gateways_end_are_charged_to_the_gateway_and_not_as_failures()
    {
        List<HistoryEvent> history =
        [
            Map(Nodes),
            Send("alice/d1", 1, node: "127.0.0.1:7002"), Send("alice/d1", 2, node: "127.0.0.1:7002"), Sent("alice/d1", 1, ConvOfN1),
            new() { Op = HistoryEvent.Nemesis, Node = "n2", Reason = "kill -9 n2" },
            new() { Op = HistoryEvent.Disconnect, Client = "alice/d1", Node = "127.0.0.1:7002", Conn = 1, Reason = "closed" },
            Send("alice/d1", 2, node: "127.0.0.1:7001", conn: 2), Sent("alice/d1", 2, ConvOfN1, conn: 2),
        ];
        var report = OwnerTally.Count(history);
        Assert.Equal(new OwnerCounts("n1", 3, 2, 0, 0, 1, false), Owner(report, "n1"));
        var gateway = report.Gateways.Single(g => g.Node == "n2");
        Assert.Equal(new GatewayCounts("n2", 1, 1), gateway);
        Assert.Equal(0, report.OtherOwnerFailures);
    }

    [Fact]
    public void During_a_ring_change_refusals_are_counted_but_not_judged()
    {
        List<HistoryEvent> history =
        [
            Map(Nodes),
            Send("alice/d1", 1), Sent("alice/d1", 1, ConvOfN1),
            Map("n1=127.0.0.1:7001", "n2=127.0.0.1:7002", "n3=127.0.0.1:7003", "n4=127.0.0.1:7004"),
            Send("alice/d1", 2), Refused("alice/d1", 2),
            Send("alice/d1", 2), Sent("alice/d1", 2, ConvOfN1),
        ];
        var report = OwnerTally.Count(history);
        Assert.True(report.RingChanged);
        Assert.Equal(1, report.OtherOwnerFailures);
        Assert.Contains(report.Owners, o => o.Node == "n4");
    }

    [Fact]
    public void A_single_node_history_has_no_owner_section()
    {
        List<HistoryEvent> history = [Send("alice/d1", 1), Refused("alice/d1", 1)];
        Assert.Same(OwnerReport.None, OwnerTally.Count(history));
    }

    [Fact]
    public void The_target_set_follows_joins_and_leaves_and_never_empties()
    {
        var a = System.Net.IPEndPoint.Parse("127.0.0.1:7001");
        var b = System.Net.IPEndPoint.Parse("127.0.0.1:7002");
        var targets = new TargetSet([a]);
        targets.Add(b);
        Assert.Equal([a, b], targets.Current);
        targets.Remove(a);
        Assert.Equal(b, targets.Pick(new Random(1)));
        targets.Remove(b);
        Assert.Equal([b], targets.Current);
    }
}
