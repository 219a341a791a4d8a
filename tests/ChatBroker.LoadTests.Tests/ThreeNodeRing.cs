using ChatBroker.Cluster.Ring;
using ChatBroker.LoadTests.Checker;

namespace ChatBroker.LoadTests.Tests;

/// <summary>The ring of the tally tests: three nodes n1..n3 at 127.0.0.1:7001..7003, and conversations it places.</summary>
internal static class ThreeNodeRing
{
    public const int Vnodes = 64;

    public static readonly string[] Nodes = ["n1=127.0.0.1:7001", "n2=127.0.0.1:7002", "n3=127.0.0.1:7003"];

    public static readonly HashRing Ring = HashRing.Create(["n1", "n2", "n3"], Vnodes);

    /// <summary>The first conversation id above <paramref name="after"/> that <paramref name="node"/> owns.</summary>
    public static ulong OwnedBy(string node, ulong after = 0)
    {
        for (var id = Math.Max(after + 1, (1UL << 63) + 1); ; id++)
        {
            if (Ring.ConversationOwner(id) == node)
            {
                return id;
            }
        }
    }

    public static HistoryEvent Map(double t = 0) => new() { T = t, Op = HistoryEvent.Map, Epoch = 5, Vnodes = Vnodes, Nodes = Nodes };
}
