using ChatBroker.LoadTests.Checker;

namespace ChatBroker.LoadTests.Tests;

/// <summary>
/// Issue 16's recovery time: kill -9 → the first SENT of each conversation the killed node owned. Three nodes; n2 is
/// killed while n1 is cut off (two faults at once, as `--nemesis mix --nemesis-concurrency 2` does).
/// </summary>
public sealed class RecoveryTallyTests
{
    private static HistoryEvent Sent(double t, string client, ulong cmid, ulong conv, string gateway) =>
        new() { T = t, Op = HistoryEvent.Sent, Client = client, Node = gateway, Conn = 1, Cmid = cmid, Conv = conv, Seq = cmid };

    private static HistoryEvent Send(double t, string client, ulong cmid, string gateway) =>
        new() { T = t, Op = HistoryEvent.Send, Client = client, Node = gateway, Conn = 1, Cmid = cmid, To = "x" };

    [Fact]
    public void A_sender_on_a_node_another_fault_cut_off_is_reported_behind_it_not_as_a_slow_failover()
    {
        var viaN3 = ThreeNodeRing.OwnedBy("n2");
        var viaN1 = ThreeNodeRing.OwnedBy("n2", viaN3);
        List<HistoryEvent> history =
        [
            ThreeNodeRing.Map(),
            Send(100, "alice/d1", 1, "127.0.0.1:7003"), Sent(110, "alice/d1", 1, viaN3, "127.0.0.1:7003"),
            Send(100, "bob/d1", 1, "127.0.0.1:7001"), Sent(110, "bob/d1", 1, viaN1, "127.0.0.1:7001"),
            new() { T = 1_000, Op = HistoryEvent.Nemesis, Node = "n2,n1", Reason = "kill -9 n2; cut n1 off from the other nodes and etcd", Killed = ["n2"] },
            Send(1_010, "alice/d1", 2, "127.0.0.1:7003"), Sent(3_500, "alice/d1", 2, viaN3, "127.0.0.1:7003"),
            Send(1_010, "bob/d1", 2, "127.0.0.1:7001"),
            new() { T = 6_000, Op = HistoryEvent.Nemesis, Reason = "heal 4 cuts; restart n2" },
            Sent(7_200, "bob/d1", 2, viaN1, "127.0.0.1:7001"),
        ];

        var kill = Assert.Single(RecoveryTally.Count(history));
        Assert.Equal(("n2", 2, 1, 1), (kill.Node, kill.Conversations, kill.Recovered, kill.BehindFaultedGateway));
        Assert.Equal(2_500, kill.MaxMs);
        Assert.True(kill.BeforeRestart); // alice's conversation failed over; bob's waited for the heal through n1

        // The same SENTs with no second fault: bob's wait is the failover's, and it came only with the restart.
        history[5] = history[5] with { Node = "n2", Reason = "kill -9 n2" };
        kill = Assert.Single(RecoveryTally.Count(history));
        Assert.Equal((2, 2, 0), (kill.Conversations, kill.Recovered, kill.BehindFaultedGateway));
        Assert.Equal(6_200, kill.MaxMs);
        Assert.False(kill.BeforeRestart);
    }
}
