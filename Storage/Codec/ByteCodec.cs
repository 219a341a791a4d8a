using System.Buffers.Binary;
using System.Text;

namespace ChatBroker.Storage.Codec;

/// <summary>A growable, reusable buffer for keys and values. All integers are big-endian, so that
/// keys sort numerically under RocksDB's bytewise comparator. Strings are a u16 byte length followed
/// by UTF-8, so one string is never a prefix of another string's encoding.</summary>
internal sealed class ByteWriter
{
    private byte[] _buffer;
    private int _length;

    public ByteWriter(int capacity = 256) => _buffer = new byte[capacity];

    public ReadOnlySpan<byte> Span => _buffer.AsSpan(0, _length);

    public int Length => _length;

    public ByteWriter Reset()
    {
        _length = 0;
        return this;
    }

    public byte[] ToArray() => Span.ToArray();

    public ByteWriter U8(byte value)
    {
        Grow(1)[0] = value;
        return this;
    }

    public ByteWriter U16(ushort value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(Grow(2), value);
        return this;
    }

    public ByteWriter U32(uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(Grow(4), value);
        return this;
    }

    public ByteWriter U64(ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(Grow(8), value);
        return this;
    }

    public ByteWriter I64(long value)
    {
        BinaryPrimitives.WriteInt64BigEndian(Grow(8), value);
        return this;
    }

    /// <summary>Starts a key with an 8-byte slot for <see cref="SealHash"/>.</summary>
    public ByteWriter HashSlot()
    {
        Grow(8).Clear();
        return this;
    }

    /// <summary>Fills the slot written by <see cref="HashSlot"/> at offset 0 with the 64-bit FNV-1a hash
    /// of everything written after it. Keys of one owner (a user, a device) then share a fixed 8-byte
    /// prefix, which RocksDB's memtable uses as an insert hint (see docs/storage.md).</summary>
    public ByteWriter SealHash()
    {
        BinaryPrimitives.WriteUInt64BigEndian(_buffer, Fnv1a64(_buffer.AsSpan(8, _length - 8)));
        return this;
    }

    public static ulong Fnv1a64(ReadOnlySpan<byte> data)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in data)
        {
            hash = (hash ^ b) * 1099511628211UL;
        }

        return hash;
    }

    public ByteWriter Str(string value)
    {
        var count = Encoding.UTF8.GetByteCount(value);
        if (count > ushort.MaxValue)
        {
            throw new ArgumentException("Identifier longer than 65535 UTF-8 bytes.", nameof(value));
        }

        U16((ushort)count);
        Encoding.UTF8.GetBytes(value, Grow(count));
        return this;
    }

    /// <summary>u32 length + bytes.</summary>
    public ByteWriter Blob(ReadOnlySpan<byte> value)
    {
        U32((uint)value.Length);
        return Raw(value);
    }

    public ByteWriter Raw(ReadOnlySpan<byte> value)
    {
        value.CopyTo(Grow(value.Length));
        return this;
    }

    private Span<byte> Grow(int count)
    {
        if (_length + count > _buffer.Length)
        {
            Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _length + count));
        }

        var span = _buffer.AsSpan(_length, count);
        _length += count;
        return span;
    }
}

/// <summary>Reads what <see cref="ByteWriter"/> wrote; throws <see cref="StorageException"/> on truncation.</summary>
internal ref struct ByteReader
{
    private ReadOnlySpan<byte> _rest;

    public ByteReader(ReadOnlySpan<byte> data) => _rest = data;

    public readonly ReadOnlySpan<byte> Rest => _rest;

    public readonly bool End => _rest.IsEmpty;

    public byte U8() => Take(1)[0];

    public ushort U16() => BinaryPrimitives.ReadUInt16BigEndian(Take(2));

    public uint U32() => BinaryPrimitives.ReadUInt32BigEndian(Take(4));

    public ulong U64() => BinaryPrimitives.ReadUInt64BigEndian(Take(8));

    public long I64() => BinaryPrimitives.ReadInt64BigEndian(Take(8));

    public string Str() => Encoding.UTF8.GetString(Take(U16()));

    public ReadOnlySpan<byte> Blob() => Take(checked((int)U32()));

    private ReadOnlySpan<byte> Take(int count)
    {
        if (count > _rest.Length)
        {
            throw new StorageException(StorageFailure.Corruption, "Corrupt record in the message store: truncated value.");
        }

        var span = _rest[..count];
        _rest = _rest[count..];
        return span;
    }
}

internal static class KeyRange
{
    /// <summary>The smallest key greater than every key that starts with <paramref name="prefix"/>;
    /// empty (unbounded) when the prefix is all 0xFF.</summary>
    public static byte[] PrefixSuccessor(ReadOnlySpan<byte> prefix)
    {
        var result = prefix.ToArray();
        for (var i = result.Length - 1; i >= 0; i--)
        {
            if (result[i] != 0xFF)
            {
                result[i]++;
                return result.AsSpan(0, i + 1).ToArray();
            }
        }

        return [];
    }
}
