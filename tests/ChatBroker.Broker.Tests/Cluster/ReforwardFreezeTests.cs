using ChatBroker.Broker.Cluster;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// The re-forward freeze after a take-over (docs/cluster.md "Failover"): every conversation of a taken range waits
/// until the store scan has named the ones this node holds; from then on only those wait, each until its own tail is
/// re-forwarded; a later take-over freezes only what it newly took while the earlier one keeps holding its own.
/// (Before, one freeze held every taken conversation until the last one was done, and each take-over started over on
/// the union: a checker run with three kills had every taken conversation wait until ≈65 s.)
/// </summary>
public sealed class ReforwardFreezeTests
{
    private static readonly HashRing Ring = HashRing.Create(["n1", "n2", "n3"], 16);

    private static (ulong A, ulong B, ulong C, ulong Elsewhere, bool[] Taken) Conversations()
    {
        var taken = new bool[Ring.PointCount];
        ulong a = 0, b = 0, c = 0, elsewhere = 0;
        int? point = null;
        for (ulong id = 1; id < 100_000 && (c == 0 || elsewhere == 0); id++)
        {
            var p = Ring.PointIndexOf(HashRing.HashConversation(id));
            point ??= p;
            if (p == point)
            {
                if (a == 0) { a = id; } else if (b == 0) { b = id; } else if (c == 0) { c = id; }
            }
            else if (elsewhere == 0)
            {
                elsewhere = id;
            }
        }

        taken[point!.Value] = true;
        return (a, b, c, elsewhere, taken);
    }

    [Fact]
    public void Before_the_scan_every_conversation_of_a_taken_range_waits_after_it_only_the_ones_not_reforwarded_yet()
    {
        var (a, b, c, elsewhere, taken) = Conversations();
        var freeze = new ReforwardFreeze(Ring, taken, 0);

        Assert.True(freeze.Holds(a));
        Assert.True(freeze.Holds(c));
        Assert.False(freeze.Holds(elsewhere));

        freeze.Scanned([a, b]);
        Assert.True(freeze.Holds(a));
        Assert.True(freeze.Holds(b));
        Assert.False(freeze.Holds(c)); // nothing of it here: no tail to restore

        freeze.Release(a);
        Assert.False(freeze.Holds(a)); // its tail is out: it takes commits while b's is still going
        Assert.True(freeze.Holds(b));

        freeze.Done.TrySetResult();
        Assert.False(freeze.Holds(b));
    }

    [Fact]
    public void A_later_take_over_freezes_only_what_it_took_and_the_running_one_keeps_its_own()
    {
        var (a, _, _, elsewhere, taken) = Conversations();
        var first = new ReforwardFreeze(Ring, taken, 0);
        first.Scanned([a]);

        var otherTaken = new bool[Ring.PointCount];
        otherTaken[Ring.PointIndexOf(HashRing.HashConversation(elsewhere))] = true;
        var second = new ReforwardFreeze(Ring, otherTaken, 0, first);
        second.Scanned([elsewhere]);

        Assert.True(second.Holds(a));         // still the first one's
        Assert.True(second.Holds(elsewhere));
        second.Release(elsewhere);
        Assert.False(second.Holds(elsewhere)); // not held again by the union
        Assert.True(second.Holds(a));
        Assert.False(second.AllDone.IsCompleted);

        first.Release(a);
        first.Done.TrySetResult();
        second.Done.TrySetResult();
        Assert.False(second.Holds(a));
        Assert.True(second.AllDone.IsCompleted);
    }
}
