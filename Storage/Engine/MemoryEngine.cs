namespace ChatBroker.Storage.Engine;

/// <summary>
/// A sorted in-memory engine with RocksDB's ordering (unsigned bytewise keys) and atomic batches.
/// One lock guards all families: a batch becomes visible all at once, as in RocksDB.
/// </summary>
internal sealed class MemoryEngine : IKvEngine
{
    private readonly object _lock = new();
    private readonly SortedSet<Entry>[] _families;

    public MemoryEngine()
    {
        _families = new SortedSet<Entry>[Enum.GetValues<Cf>().Length];
        for (var i = 0; i < _families.Length; i++)
        {
            _families[i] = new SortedSet<Entry>(EntryComparer.Instance);
        }
    }

    public IKvBatch CreateBatch() => new Batch();

    /// <summary>Nothing to make durable: the map is the whole state.</summary>
    public void SyncWal()
    {
    }

    public void Commit(IKvBatch batch, bool sync)
    {
        var ops = ((Batch)batch).Ops;
        lock (_lock)
        {
            foreach (var op in ops)
            {
                var set = _families[(int)op.Cf];
                switch (op.Kind)
                {
                    case OpKind.Put:
                        var probe = new Entry(op.Key, op.Value!);
                        if (set.TryGetValue(probe, out var existing))
                        {
                            existing.Value = op.Value!;
                        }
                        else
                        {
                            set.Add(probe);
                        }

                        break;
                    case OpKind.Delete:
                        set.Remove(new Entry(op.Key, []));
                        break;
                }
            }
        }
    }

    public byte[]? Get(Cf cf, ReadOnlySpan<byte> key)
    {
        lock (_lock)
        {
            return _families[(int)cf].TryGetValue(new Entry(key.ToArray(), []), out var e) ? e.Value : null;
        }
    }

    public IKvCursor OpenCursor(Cf cf, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper)
    {
        // Snapshot the range: simple, and matches RocksDB's implicit iterator snapshot.
        var lo = lower.ToArray();
        var hi = upper.ToArray();
        List<KeyValuePair<byte[], byte[]>> items = [];
        lock (_lock)
        {
            var set = _families[(int)cf];
            IEnumerable<Entry> range = set.Count == 0 || (hi.Length > 0 && EntryComparer.Compare(lo, hi) >= 0)
                ? []
                : hi.Length == 0
                    ? set
                    : set.GetViewBetween(new Entry(lo, []), new Entry(hi, []));
            foreach (var e in range)
            {
                if (EntryComparer.Compare(e.Key, lo) < 0 || (hi.Length > 0 && EntryComparer.Compare(e.Key, hi) >= 0))
                {
                    continue;
                }

                items.Add(new(e.Key, e.Value));
            }
        }

        return new Cursor(items);
    }

    public void Dispose()
    {
    }

    private enum OpKind
    {
        Put,
        Delete,
    }

    private readonly record struct Op(OpKind Kind, Cf Cf, byte[] Key, byte[]? Value);

    private sealed class Entry(byte[] key, byte[] value)
    {
        public byte[] Key { get; } = key;

        public byte[] Value { get; set; } = value;
    }

    private sealed class EntryComparer : IComparer<Entry>
    {
        public static readonly EntryComparer Instance = new();

        public int Compare(Entry? x, Entry? y) => Compare(x!.Key, y!.Key);

        public static int Compare(byte[] x, byte[] y) => x.AsSpan().SequenceCompareTo(y);
    }

    private sealed class Batch : IKvBatch
    {
        public List<Op> Ops { get; } = [];

        public int Count => Ops.Count;

        public void Put(Cf cf, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value) => Ops.Add(new(OpKind.Put, cf, key.ToArray(), value.ToArray()));

        public void Delete(Cf cf, ReadOnlySpan<byte> key) => Ops.Add(new(OpKind.Delete, cf, key.ToArray(), null));

        public void Clear() => Ops.Clear();

        public void Dispose() => Ops.Clear();
    }

    private sealed class Cursor(List<KeyValuePair<byte[], byte[]>> items) : IKvCursor
    {
        private int _index = -1;

        public bool Valid => _index >= 0 && _index < items.Count;

        public ReadOnlySpan<byte> Key => items[_index].Key;

        public ReadOnlySpan<byte> Value => items[_index].Value;

        public void SeekToFirst() => _index = items.Count > 0 ? 0 : -1;

        public void SeekToLast() => _index = items.Count - 1;

        public void Seek(ReadOnlySpan<byte> key)
        {
            // First entry >= key.
            var i = 0;
            while (i < items.Count && items[i].Key.AsSpan().SequenceCompareTo(key) < 0)
            {
                i++;
            }

            _index = i < items.Count ? i : -1;
        }

        public void SeekForPrev(ReadOnlySpan<byte> key)
        {
            // Last entry <= key.
            var i = items.Count - 1;
            while (i >= 0 && items[i].Key.AsSpan().SequenceCompareTo(key) > 0)
            {
                i--;
            }

            _index = i;
        }

        public void Next()
        {
            if (Valid)
            {
                _index = _index + 1 < items.Count ? _index + 1 : -1;
            }
        }

        public void Prev()
        {
            if (Valid)
            {
                _index--;
            }
        }

        public void Dispose()
        {
        }
    }
}
