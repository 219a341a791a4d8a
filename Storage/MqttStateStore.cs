using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>One write of <see cref="IMqttStateStore.WriteMqttStateAsync"/>: a put, or a delete when
/// <see cref="Value"/> is null.</summary>
public readonly record struct MqttStateWrite(ReadOnlyMemory<byte> Key, ReadOnlyMemory<byte>? Value)
{
    public static MqttStateWrite Put(ReadOnlyMemory<byte> key, ReadOnlyMemory<byte> value) => new(key, value);

    public static MqttStateWrite Delete(ReadOnlyMemory<byte> key) => new(key, null);
}

/// <summary>
/// The `mqtt` column family: the MQTT listener's persistent sessions, their queued and in-flight messages, QoS 2
/// state and retained messages. The records are opaque here (their layout is the broker's, docs/storage.md); the
/// store only keeps them durable, in the order written, and node-local (never replicated or moved with a range:
/// an MQTT session lives on the node its client connects to).
/// </summary>
public interface IMqttStateStore
{
    /// <summary>Applies the writes atomically, in order (a later write of the same key wins), in one commit;
    /// complete once durable (with <c>Durability.Sync</c>: fsynced).</summary>
    Task WriteMqttStateAsync(IReadOnlyList<MqttStateWrite> writes, CancellationToken cancellationToken = default);

    /// <summary>Calls <paramref name="visit"/> for every record whose key starts with <paramref name="prefix"/>, in
    /// key order; key and value are valid during the call only.</summary>
    void ReadMqttState(ReadOnlySpan<byte> prefix, MqttStateVisitor visit);
}

/// <summary>A record of the `mqtt` family, valid during the call.</summary>
public delegate void MqttStateVisitor(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value);

public abstract partial class ChatStore
{
    /// <summary>Largest key of the `mqtt` family (a user, a client id and a topic of at most 64 KiB each, plus tags).</summary>
    public const int MaxMqttKeyBytes = 3 * 65_536 + 64;

    public Task WriteMqttStateAsync(IReadOnlyList<MqttStateWrite> writes, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(writes);
        foreach (var write in writes)
        {
            if (write.Key.Length is 0 or > MaxMqttKeyBytes)
            {
                throw new ArgumentOutOfRangeException(nameof(writes), $"an mqtt key is 1..{MaxMqttKeyBytes} bytes");
            }
        }

        return writes.Count == 0 ? Task.CompletedTask : _writer.EnqueueAsync(new WriteMqttStateOp(writes), null, cancellationToken);
    }

    public void ReadMqttState(ReadOnlySpan<byte> prefix, MqttStateVisitor visit)
    {
        ArgumentNullException.ThrowIfNull(visit);
        var upper = prefix.IsEmpty ? [] : KeyRange.PrefixSuccessor(prefix);
        using var cursor = _engine.OpenCursor(Cf.Mqtt, prefix, upper);
        for (cursor.SeekToFirst(); cursor.Valid; cursor.Next())
        {
            visit(cursor.Key, cursor.Value);
        }
    }
}

internal sealed class WriteMqttStateOp(IReadOnlyList<MqttStateWrite> writes) : WriteOp<bool>
{
    public override int EstimatedBytes
    {
        get
        {
            var bytes = 0;
            foreach (var write in writes)
            {
                bytes += write.Key.Length + (write.Value?.Length ?? 0) + 16;
            }

            return bytes;
        }
    }

    public override void Apply(CommitWriter w)
    {
        foreach (var write in writes)
        {
            if (write.Value is { } value)
            {
                w.Batch.Put(Cf.Mqtt, write.Key.Span, value.Span);
            }
            else
            {
                w.Batch.Delete(Cf.Mqtt, write.Key.Span);
            }
        }

        Result = true;
    }
}
