using System.Runtime.InteropServices;

namespace ChatBroker.Storage.Native;

/// <summary>An open <c>rocksdb_t*</c>. Column families and iterators hold a reference to it
/// (<see cref="SafeHandle.DangerousAddRef"/>), so <c>rocksdb_close</c> runs only after every one of
/// them has been destroyed — the order RocksDB requires — even if they are finalized.</summary>
internal sealed class DbHandle : SafeHandle
{
    public DbHandle(IntPtr handle) : base(IntPtr.Zero, ownsHandle: true) => SetHandle(handle);

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        RocksDbNative.rocksdb_close(handle);
        return true;
    }
}

/// <summary>A handle whose lifetime is nested inside a <see cref="DbHandle"/>.</summary>
internal abstract class DbChildHandle : SafeHandle
{
    private readonly DbHandle _db;

    protected DbChildHandle(DbHandle db, IntPtr handle) : base(IntPtr.Zero, ownsHandle: true)
    {
        var added = false;
        db.DangerousAddRef(ref added);
        _db = db;
        SetHandle(handle);
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected abstract void Destroy(IntPtr value);

    protected override bool ReleaseHandle()
    {
        Destroy(handle);
        _db.DangerousRelease();
        return true;
    }
}

internal sealed class ColumnFamilyHandle(DbHandle db, IntPtr handle) : DbChildHandle(db, handle)
{
    protected override void Destroy(IntPtr value) => RocksDbNative.rocksdb_column_family_handle_destroy(value);
}

internal sealed class IteratorHandle(DbHandle db, IntPtr handle) : DbChildHandle(db, handle)
{
    protected override void Destroy(IntPtr value) => RocksDbNative.rocksdb_iter_destroy(value);
}

internal sealed class WriteBatchHandle : SafeHandle
{
    public WriteBatchHandle() : base(IntPtr.Zero, ownsHandle: true) => SetHandle(RocksDbNative.rocksdb_writebatch_create());

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        RocksDbNative.rocksdb_writebatch_destroy(handle);
        return true;
    }
}

internal sealed class WriteOptionsHandle : SafeHandle
{
    public WriteOptionsHandle(bool sync) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(RocksDbNative.rocksdb_writeoptions_create());
        RocksDbNative.rocksdb_writeoptions_set_sync(handle, sync ? (byte)1 : (byte)0);
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        RocksDbNative.rocksdb_writeoptions_destroy(handle);
        return true;
    }
}

/// <summary>Read options plus the native copy of their iterate bounds, which RocksDB only points to.</summary>
internal sealed unsafe class ReadOptionsHandle : SafeHandle
{
    private byte* _bounds;

    public ReadOptionsHandle(ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(RocksDbNative.rocksdb_readoptions_create());
        if (lower.IsEmpty && upper.IsEmpty)
        {
            return;
        }

        _bounds = (byte*)NativeMemory.Alloc((nuint)Math.Max(1, lower.Length + upper.Length));
        lower.CopyTo(new Span<byte>(_bounds, lower.Length));
        upper.CopyTo(new Span<byte>(_bounds + lower.Length, upper.Length));
        if (!lower.IsEmpty)
        {
            RocksDbNative.rocksdb_readoptions_set_iterate_lower_bound(handle, _bounds, (nuint)lower.Length);
        }

        if (!upper.IsEmpty)
        {
            RocksDbNative.rocksdb_readoptions_set_iterate_upper_bound(handle, _bounds + lower.Length, (nuint)upper.Length);
        }
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        RocksDbNative.rocksdb_readoptions_destroy(handle);
        if (_bounds != null)
        {
            NativeMemory.Free(_bounds);
            _bounds = null;
        }

        return true;
    }
}
