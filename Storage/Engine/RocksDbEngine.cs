using ChatBroker.Storage.Native;

namespace ChatBroker.Storage.Engine;

internal sealed class RocksDbEngine : IKvEngine
{
    internal static readonly string[] FamilyNames =
    [
        "default", "messages", "inboxes", "cursors", "conversations", "members",
        "user_conversations", "directs", "idempotency", "push_jobs", "presence", "prekeys",
        "receipts", "mqtt",
    ];

    private readonly RocksDb _db;

    public RocksDbEngine(RocksDb db)
    {
        _db = db;
        StorageMetrics.WatchWriteStalls(db);
    }

    public IKvBatch CreateBatch() => new Batch(new WriteBatch(_db));

    public void Commit(IKvBatch batch, bool sync) => _db.Write(((Batch)batch).Native, sync);

    public void SyncWal() => _db.SyncWal();

    // A read after the store closed finds its handles disposed: reported as the store's Closed, like a write.
    public byte[]? Get(Cf cf, ReadOnlySpan<byte> key)
    {
        try
        {
            return _db.Get((int)cf, key);
        }
        catch (ObjectDisposedException e)
        {
            throw StorageException.From("", e, StorageFailure.Closed);
        }
    }

    public IKvCursor OpenCursor(Cf cf, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper)
    {
        try
        {
            return new Cursor(_db.NewIterator((int)cf, lower, upper));
        }
        catch (ObjectDisposedException e)
        {
            throw StorageException.From("", e, StorageFailure.Closed);
        }
    }

    public void Dispose()
    {
        StorageMetrics.UnwatchWriteStalls(_db);
        _db.Dispose();
    }

    private sealed class Batch(WriteBatch native) : IKvBatch
    {
        private int _count;

        public WriteBatch Native { get; } = native;

        public int Count => _count;

        public void Put(Cf cf, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
        {
            Native.Put((int)cf, key, value);
            _count++;
        }

        public void Delete(Cf cf, ReadOnlySpan<byte> key)
        {
            Native.Delete((int)cf, key);
            _count++;
        }

        public void Clear()
        {
            Native.Clear();
            _count = 0;
        }

        public void Dispose() => Native.Dispose();
    }

    private sealed class Cursor(RocksIterator it) : IKvCursor
    {
        public bool Valid
        {
            get
            {
                if (it.Valid)
                {
                    return true;
                }

                it.ThrowIfFailed();
                return false;
            }
        }

        public ReadOnlySpan<byte> Key => it.Key;

        public ReadOnlySpan<byte> Value => it.Value;

        public void SeekToFirst() => it.SeekToFirst();

        public void SeekToLast() => it.SeekToLast();

        public void Seek(ReadOnlySpan<byte> key) => it.Seek(key);

        public void SeekForPrev(ReadOnlySpan<byte> key) => it.SeekForPrev(key);

        public void Next() => it.Next();

        public void Prev() => it.Prev();

        public void Dispose() => it.Dispose();
    }
}
