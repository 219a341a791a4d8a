using BenchmarkDotNet.Attributes;
using ChatBroker.Cluster.Ring;

namespace ChatBroker.Benchmarks;

/// <summary>
/// Ring lookups on the hot path of every routed operation: a conversation's owner, a user's home, and
/// the owner plus two replicas. 5 nodes with the default 256 virtual nodes (1,280 points). Expect 0 bytes
/// allocated.
/// </summary>
[MemoryDiagnoser]
public class RingBenchmarks
{
    private const int Keys = 1024;

    private readonly int[] _owners = new int[3];
    private HashRing _ring = null!;
    private string[] _users = [];

    [GlobalSetup]
    public void Setup()
    {
        _ring = HashRing.Create(["node-1", "node-2", "node-3", "node-4", "node-5"]);
        _users = new string[Keys];
        for (var i = 0; i < Keys; i++)
        {
            _users[i] = "user-" + i.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
    }

    [Benchmark(OperationsPerInvoke = Keys, Baseline = true)]
    public int ConversationOwner()
    {
        var sum = 0;
        for (var i = 0; i < Keys; i++)
        {
            sum += _ring.OwnerIndex(HashRing.HashConversation((ulong)i * 2654435761));
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Keys)]
    public int UserHome()
    {
        var sum = 0;
        for (var i = 0; i < Keys; i++)
        {
            sum += _ring.OwnerIndex(HashRing.HashUser(_users[i]));
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Keys)]
    public int OwnerAndTwoReplicas()
    {
        var sum = 0;
        for (var i = 0; i < Keys; i++)
        {
            sum += _ring.GetOwners(HashRing.HashConversation((ulong)i * 2654435761), _owners);
        }

        return sum;
    }
}
