using ChatBroker.Cluster.Mesh.Wire;
using Google.Protobuf;

namespace ChatBroker.Cluster.Mesh;

/// <summary>One message as the sink sees it. <see cref="Payload"/> is valid only during the sink's call.</summary>
public readonly struct MeshInboundMessage(ulong id, ulong epoch, uint kind, ReadOnlyMemory<byte> payload)
{
    /// <summary>Per (origin, stream): 1, 2, 3, … The reply to this message carries the same id.</summary>
    public ulong Id { get; } = id;

    /// <summary>The origin's cluster epoch when it created the message.</summary>
    public ulong Epoch { get; } = epoch;

    public uint Kind { get; } = kind;

    public ReadOnlyMemory<byte> Payload { get; } = payload;
}

/// <summary>
/// The new messages of one received batch, and the results the sink records for them. One instance
/// per stream, reused for each batch of that stream.
/// </summary>
public sealed class MeshInboundBatch
{
    private readonly MeshOptions _options;
    private readonly List<MeshMessage> _messages;
    private MeshResult?[] _results;
    private int _first;
    private int _count;

    internal MeshInboundBatch(MeshOptions options, string origin, uint stream)
    {
        _options = options;
        Origin = origin;
        Stream = stream;
        _messages = new List<MeshMessage>(options.MaxBatchMessages);
        _results = new MeshResult?[options.MaxBatchMessages];
    }

    /// <summary>The node that sent the batch.</summary>
    public string Origin { get; }

    /// <summary>The stream index within the node pair.</summary>
    public uint Stream { get; }

    public int Count => _count;

    public MeshInboundMessage this[int index]
    {
        get
        {
            var m = _messages[_first + CheckIndex(index)];
            return new MeshInboundMessage(m.Id, m.Epoch, m.Kind, m.Payload.Memory);
        }
    }

    /// <summary>Answers a request: the origin gets <paramref name="reply"/> with the message's id.</summary>
    public void Reply(int index, ReadOnlySpan<byte> reply)
    {
        CheckIndex(index);
        if (reply.Length > _options.MaxReplyBytes)
        {
            throw new ArgumentException($"A reply may have at most {_options.MaxReplyBytes} bytes (mesh max_reply_bytes), not {reply.Length}.", nameof(reply));
        }

        _results[index] = new MeshResult { Id = _messages[_first + index].Id, Status = MeshStatus.Ok, Reply = ByteString.CopyFrom(reply) };
    }

    /// <summary>Refuses a message whose epoch is older than this node's map allows: the origin learns this
    /// node's <paramref name="epoch"/> and the <paramref name="owner"/> it knows, and must not act on its
    /// stale map (e.g. it may not sequence a conversation it no longer owns).</summary>
    public void RefuseStaleEpoch(int index, ulong epoch, string owner)
    {
        CheckIndex(index);
        ArgumentNullException.ThrowIfNull(owner);
        if (owner.Length > _options.MaxNodeIdLength)
        {
            throw new ArgumentException($"A node id has at most {_options.MaxNodeIdLength} characters.", nameof(owner));
        }

        _results[index] = new MeshResult { Id = _messages[_first + index].Id, Status = MeshStatus.StaleEpoch, Epoch = epoch, Owner = owner };
    }

    /// <summary>Refuses a message for another reason (a <c>ReasonCode</c> of chat.proto).</summary>
    public void Reject(int index, uint reason)
    {
        CheckIndex(index);
        _results[index] = new MeshResult { Id = _messages[_first + index].Id, Status = MeshStatus.Rejected, Reason = reason };
    }

    /// <summary>Makes the batch the new messages <c>messages[first .. first+count)</c> of a received batch.</summary>
    internal void Reset(Google.Protobuf.Collections.RepeatedField<MeshMessage> messages, int first, int count)
    {
        _messages.Clear();
        for (var i = 0; i < messages.Count; i++)
        {
            _messages.Add(messages[i]);
        }

        _first = first;
        _count = count;
        if (_results.Length < count)
        {
            _results = new MeshResult?[count];
        }

        Array.Clear(_results, 0, count);
    }

    /// <summary>The result recorded for <paramref name="index"/>, if any.</summary>
    internal MeshResult? ResultAt(int index) => _results[index];

    /// <summary>Lets go of the received messages so their payloads can be collected.</summary>
    internal void Release()
    {
        _messages.Clear();
        Array.Clear(_results, 0, _count);
        _count = 0;
    }

    private int CheckIndex(int index)
    {
        if ((uint)index >= (uint)_count)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"The batch has {_count} messages.");
        }

        return index;
    }
}
