using System.Buffers;
using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace ChatBroker.Cluster.Ring;

/// <summary>
/// Consistent hashing with virtual nodes. Each node is placed at <see cref="VirtualNodesPerNode"/>
/// points of a 64-bit circle (XxHash3 of the node id and the point's index); a key belongs to the node
/// of the first point at or after the key's hash (wrapping). Adding a node to N moves only the keys
/// that the new node's points take over, ≈ 1/(N+1) of all keys; every other key stays where it was.
/// </summary>
/// <remarks>
/// Immutable: a new cluster map builds a new ring and swaps the reference, so lookups need no lock.
/// The ring depends only on the set of node ids and the vnode count (members are sorted first), so
/// every node that has the same map computes the same placement. Lookups allocate nothing: a binary
/// search over a sorted <c>ulong[]</c>. The next distinct nodes clockwise (<see cref="GetOwners"/>)
/// are the preference list that replication takes its replicas from: the first is the owner.
/// </remarks>
public sealed class HashRing
{
    /// <summary>Points per node by default. 256 gives a load spread (stddev/mean) of 3–8 % over
    /// 100,000 keys at 3–8 nodes (see HashRingTests), at 3 KiB of points per node.</summary>
    public const int DefaultVirtualNodesPerNode = 256;

    /// <summary>Upper bound of the vnode setting; more buys little balance for a lot of memory.</summary>
    public const int MaxVirtualNodesPerNode = 4096;

    /// <summary>Seed of the points' hash: distinct from every <see cref="RingKeySpace"/>.</summary>
    private const long PointSeed = 0x706F696E74; // "point"

    /// <summary>A user id longer than this is hashed from a pooled buffer instead of the stack
    /// (the protocol bounds user ids to 128 bytes, so this is a rare path).</summary>
    private const int StackKeyBytes = 256;

    private readonly string[] _nodes;
    private readonly ulong[] _points;
    private readonly int[] _owners;

    private HashRing(string[] nodes, ulong[] points, int[] owners, int virtualNodesPerNode)
    {
        _nodes = nodes;
        _points = points;
        _owners = owners;
        VirtualNodesPerNode = virtualNodesPerNode;
    }

    /// <summary>The members, sorted ordinally; the node indexes of the lookups index this list.</summary>
    public IReadOnlyList<string> Nodes => _nodes;

    public int NodeCount => _nodes.Length;

    /// <summary>The ring's points (vnodes of every member), ascending; point i ends the range that
    /// <c>GetOwners(PointAt(i), …)</c> places.</summary>
    public int PointCount => _points.Length;

    public ulong PointAt(int index) => _points[index];

    public int VirtualNodesPerNode { get; }

    /// <summary>Builds the ring of <paramref name="nodeIds"/> (any order; at least one; distinct, non-empty).</summary>
    public static HashRing Create(IEnumerable<string> nodeIds, int virtualNodesPerNode = DefaultVirtualNodesPerNode)
    {
        ArgumentNullException.ThrowIfNull(nodeIds);
        ArgumentOutOfRangeException.ThrowIfLessThan(virtualNodesPerNode, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(virtualNodesPerNode, MaxVirtualNodesPerNode);
        var nodes = nodeIds.ToArray();
        if (nodes.Length == 0)
        {
            throw new ArgumentException("A ring needs at least one node.", nameof(nodeIds));
        }

        Array.Sort(nodes, StringComparer.Ordinal);
        for (var i = 0; i < nodes.Length; i++)
        {
            if (string.IsNullOrEmpty(nodes[i]))
            {
                throw new ArgumentException("A node id is empty.", nameof(nodeIds));
            }

            if (i > 0 && string.Equals(nodes[i], nodes[i - 1], StringComparison.Ordinal))
            {
                throw new ArgumentException($"Node id '{nodes[i]}' appears twice.", nameof(nodeIds));
            }
        }

        var count = nodes.Length * virtualNodesPerNode;
        var points = new ulong[count];
        var owners = new int[count];
        for (var n = 0; n < nodes.Length; n++)
        {
            var id = Encoding.UTF8.GetBytes(nodes[n]);
            var key = new byte[id.Length + sizeof(int)];
            id.CopyTo(key, 0);
            for (var v = 0; v < virtualNodesPerNode; v++)
            {
                BinaryPrimitives.WriteInt32LittleEndian(key.AsSpan(id.Length), v);
                points[(n * virtualNodesPerNode) + v] = XxHash3.HashToUInt64(key, PointSeed);
                owners[(n * virtualNodesPerNode) + v] = n;
            }
        }

        // Equal points (vanishingly rare) are ordered by node index, so the ring stays deterministic.
        var order = new int[count];
        for (var i = 0; i < count; i++)
        {
            order[i] = i;
        }

        Array.Sort(order, (a, b) =>
        {
            var c = points[a].CompareTo(points[b]);
            return c != 0 ? c : owners[a].CompareTo(owners[b]);
        });
        var sortedPoints = new ulong[count];
        var sortedOwners = new int[count];
        for (var i = 0; i < count; i++)
        {
            sortedPoints[i] = points[order[i]];
            sortedOwners[i] = owners[order[i]];
        }

        return new HashRing(nodes, sortedPoints, sortedOwners, virtualNodesPerNode);
    }

    /// <summary>The index of <paramref name="nodeId"/> in <see cref="Nodes"/>, or -1.</summary>
    public int IndexOf(string nodeId) => Array.BinarySearch(_nodes, nodeId, StringComparer.Ordinal) is var i and >= 0 ? i : -1;

    /// <summary>The position of a key of <paramref name="space"/> on the circle.</summary>
    public static ulong Hash(RingKeySpace space, ReadOnlySpan<byte> key) => XxHash3.HashToUInt64(key, (long)space);

    /// <summary>The position of a conversation (its id as 8 little-endian bytes).</summary>
    public static ulong HashConversation(ulong conversationId)
    {
        Span<byte> key = stackalloc byte[sizeof(ulong)];
        BinaryPrimitives.WriteUInt64LittleEndian(key, conversationId);
        return Hash(RingKeySpace.Conversation, key);
    }

    /// <summary>The position of a user (the UTF-8 bytes of the id).</summary>
    public static ulong HashUser(ReadOnlySpan<char> userId)
    {
        var max = Encoding.UTF8.GetMaxByteCount(userId.Length);
        if (max <= StackKeyBytes)
        {
            Span<byte> key = stackalloc byte[StackKeyBytes];
            var length = Encoding.UTF8.GetBytes(userId, key);
            return Hash(RingKeySpace.User, key[..length]);
        }

        return HashLongUser(userId, max);
    }

    /// <summary>The index of the point at or after <paramref name="hash"/> (wrapping): the range the key falls in.</summary>
    public int PointIndexOf(ulong hash) => FirstPointAtOrAfter(hash);

    /// <summary>The node index that point <paramref name="pointIndex"/> belongs to.</summary>
    public int NodeIndexOfPoint(int pointIndex) => _owners[pointIndex];

    /// <summary>The node index owning the point at or after <paramref name="hash"/>.</summary>
    public int OwnerIndex(ulong hash) => _owners[FirstPointAtOrAfter(hash)];

    /// <summary>The node that sequences and stores <paramref name="conversationId"/>.</summary>
    public string ConversationOwner(ulong conversationId) => _nodes[OwnerIndex(HashConversation(conversationId))];

    /// <summary>The home node of <paramref name="userId"/>.</summary>
    public string UserHome(ReadOnlySpan<char> userId) => _nodes[OwnerIndex(HashUser(userId))];

    /// <summary>
    /// Writes the node indexes of the first distinct nodes clockwise from <paramref name="hash"/> into
    /// <paramref name="destination"/>: the owner first, then the nodes replication takes as replicas.
    /// Returns how many were written: the smaller of the destination's length and <see cref="NodeCount"/>.
    /// </summary>
    public int GetOwners(ulong hash, Span<int> destination)
    {
        var wanted = Math.Min(destination.Length, _nodes.Length);
        if (wanted == 0)
        {
            return 0;
        }

        var index = FirstPointAtOrAfter(hash);
        var found = 0;
        // Every node has points, so one turn of the circle finds `wanted` distinct nodes.
        for (var step = 0; step < _points.Length && found < wanted; step++)
        {
            var owner = _owners[index];
            if (destination[..found].IndexOf(owner) < 0)
            {
                destination[found++] = owner;
            }

            index = index + 1 == _points.Length ? 0 : index + 1;
        }

        return found;
    }

    private int FirstPointAtOrAfter(ulong hash)
    {
        var points = _points;
        int low = 0, high = points.Length;
        while (low < high)
        {
            var mid = (int)((uint)(low + high) >> 1);
            if (points[mid] < hash)
            {
                low = mid + 1;
            }
            else
            {
                high = mid;
            }
        }

        return low == points.Length ? 0 : low;
    }

    private static ulong HashLongUser(ReadOnlySpan<char> userId, int max)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(max);
        try
        {
            var length = Encoding.UTF8.GetBytes(userId, buffer);
            return Hash(RingKeySpace.User, buffer.AsSpan(0, length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
