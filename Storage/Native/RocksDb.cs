using System.Runtime.InteropServices;
using System.Text;

namespace ChatBroker.Storage.Native;

/// <summary>An error reported by RocksDB; <see cref="Exception.Message"/> carries RocksDB's own text, whose
/// status prefix ("IO error: ", "Corruption: ", "Invalid argument: " …) gives the <see cref="StorageException.Failure"/>.</summary>
public sealed class RocksDbException : StorageException
{
    public RocksDbException(string message) : base(FailureOf(message), message)
    {
    }

    private static StorageFailure FailureOf(string message) =>
        message.StartsWith("Corruption", StringComparison.Ordinal) ? StorageFailure.Corruption
        : message.StartsWith("Invalid argument", StringComparison.Ordinal) || message.StartsWith("Not implemented", StringComparison.Ordinal) ? StorageFailure.Incompatible
        : StorageFailure.Io;
}

/// <summary>Tuning knobs applied when the database is opened.</summary>
/// <param name="HintedFamilies">indexes of the column families whose keys start with an 8-byte
/// prefix grouping keys that are inserted in order (memtable insert hints).</param>
internal sealed record RocksDbSettings(long BlockCacheBytes, long WriteBufferBytes, int MaxOpenFiles, IReadOnlyList<int> HintedFamilies, bool InfoLog = false);

/// <summary>
/// A RocksDB database opened with a fixed list of column families. Owns every native handle it
/// creates; <see cref="Dispose"/> destroys column family handles before closing the database.
/// </summary>
internal sealed unsafe class RocksDb : IDisposable
{
    private readonly DbHandle _db;
    private readonly ColumnFamilyHandle[] _families;
    private readonly WriteOptionsHandle _syncWrite = new(sync: true);
    private readonly WriteOptionsHandle _asyncWrite = new(sync: false);
    private readonly ReadOptionsHandle _pointRead = new([], []);
    private int _disposed;

    /// <summary>The block-based table format written (RocksDB's <c>format_version</c>).</summary>
    internal const int TableFormatVersion = 5;

    private RocksDb(DbHandle db, ColumnFamilyHandle[] families)
    {
        _db = db;
        _families = families;
    }

    /// <summary>Opens (creating if missing) the database at <paramref name="path"/> with the given column
    /// families. Throws <see cref="RocksDbException"/> with RocksDB's message on failure.</summary>
    public static RocksDb Open(string path, IReadOnlyList<string> columnFamilies, RocksDbSettings settings)
    {
        RocksDbNative.EnsureLoaded();
        var options = RocksDbNative.rocksdb_options_create();
        var tableOptions = RocksDbNative.rocksdb_block_based_options_create();
        var cache = RocksDbNative.rocksdb_cache_create_lru((nuint)Math.Max(1 << 20, settings.BlockCacheBytes));
        var names = new IntPtr[columnFamilies.Count];
        var hinted = new List<IntPtr>();
        try
        {
            RocksDbNative.rocksdb_options_set_create_if_missing(options, 1);
            RocksDbNative.rocksdb_options_set_create_missing_column_families(options, 1);
            RocksDbNative.rocksdb_options_increase_parallelism(options, Math.Max(2, Environment.ProcessorCount));
            RocksDbNative.rocksdb_options_set_write_buffer_size(options, (nuint)settings.WriteBufferBytes);
            // Every flushed file of the message log spans most conversations, so each L0→L1 compaction
            // rewrites most of L1: fewer, larger L0 files (64 MiB memtables, compaction at 8 files instead
            // of 4) halve that work. Measured: docs/performance.md (pairs, RocksDB compaction).
            RocksDbNative.rocksdb_options_set_level0_file_num_compaction_trigger(options, 8);
            RocksDbNative.rocksdb_options_set_max_open_files(options, settings.MaxOpenFiles);
            RocksDbNative.rocksdb_options_set_keep_log_file_num(options, 2);
            // Table files written by a flush or a compaction are synced to disk 1 MiB at a time as they are written
            // (sync_file_range), not all at once when the file is finished: the final fsync of a 60 MB flush otherwise
            // queued the WAL's fdatasync behind 60 MB of writeback, and every sync SENT of those 20-30 ms waited
            // (docs/performance.md, issue 21, the fifth session). The WAL is not affected (its own wal_bytes_per_sync).
            RocksDbNative.rocksdb_options_set_bytes_per_sync(options, 1 << 20);
            // INFO logs every flush, memtable switch, new WAL file and compaction with its time: what a stall
            // report (LoadTests, StallReport) correlates with late messages. WARN otherwise.
            RocksDbNative.rocksdb_options_set_info_log_level(options, settings.InfoLog ? 1 /* INFO */ : 2 /* WARN */);
            RocksDbNative.rocksdb_options_set_compression(options, 0 /* none: bodies are often ciphertext */);
            RocksDbNative.rocksdb_options_set_wal_compression(options, 0);
            // Most point reads miss (a new client_msg_id is not in the idempotency index): a memtable
            // bloom filter answers those without searching the skiplist.
            RocksDbNative.rocksdb_options_set_memtable_prefix_bloom_size_ratio(options, 0.05);
            RocksDbNative.rocksdb_options_set_memtable_whole_key_filtering(options, 1);
            // One thread writes (the store's committer): concurrent memtable inserts and the write
            // thread's adaptive spinning only cost CPU.
            RocksDbNative.rocksdb_options_set_allow_concurrent_memtable_write(options, 0);
            RocksDbNative.rocksdb_options_set_enable_write_thread_adaptive_yield(options, 0);
            RocksDbNative.rocksdb_block_based_options_set_block_cache(tableOptions, cache);
            // Table files in format 5, the newest that RocksDB 7.8 reads (11.12 would write 7): the build
            // before this one ran on Debian's 7.8, and with format 5 it opens a directory that 11.12 wrote,
            // so rolling the broker back stays possible. Measured both ways: docs/storage.md.
            RocksDbNative.rocksdb_block_based_options_set_format_version(tableOptions, TableFormatVersion);
            RocksDbNative.rocksdb_block_based_options_set_filter_policy(tableOptions, RocksDbNative.rocksdb_filterpolicy_create_bloom(10));
            RocksDbNative.rocksdb_options_set_block_based_table_factory(options, tableOptions);

            for (var i = 0; i < names.Length; i++)
            {
                names[i] = Marshal.StringToCoTaskMemUTF8(columnFamilies[i]);
            }

            var pathBytes = NullTerminated(path);
            var handles = new IntPtr[names.Length];
            var cfOptions = new IntPtr[names.Length];
            Array.Fill(cfOptions, options);
            foreach (var family in settings.HintedFamilies)
            {
                // RocksDB keeps, per 8-byte key prefix, where it last inserted into the memtable's
                // skiplist, so appending to a conversation (or an inbox) does not search from the top.
                // The C API has no setter for this option; the options string does.
                var copy = RocksDbNative.rocksdb_options_create();
                hinted.Add(copy);
                var text = NullTerminated("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.8");
                byte* parseError = null;
                fixed (byte* textPtr = text)
                {
                    RocksDbNative.rocksdb_get_options_from_string(options, textPtr, copy, &parseError);
                }

                ThrowIfError(parseError);
                cfOptions[family] = copy;
            }

            byte* err = null;
            IntPtr db;
            fixed (byte* pathPtr = pathBytes)
            fixed (IntPtr* namesPtr = names)
            fixed (IntPtr* cfOptionsPtr = cfOptions)
            fixed (IntPtr* handlesPtr = handles)
            {
                db = RocksDbNative.rocksdb_open_column_families(
                    options, pathPtr, names.Length, (byte**)namesPtr, cfOptionsPtr, handlesPtr, &err);
            }

            ThrowIfError(err);
            var dbHandle = new DbHandle(db);
            var families = new ColumnFamilyHandle[handles.Length];
            for (var i = 0; i < handles.Length; i++)
            {
                families[i] = new ColumnFamilyHandle(dbHandle, handles[i]);
            }

            return new RocksDb(dbHandle, families);
        }
        finally
        {
            foreach (var name in names)
            {
                Marshal.FreeCoTaskMem(name);
            }

            // The table factory and the open database hold their own references (shared_ptr) to the
            // cache and copies of the options, so ours can go now.
            RocksDbNative.rocksdb_cache_destroy(cache);
            RocksDbNative.rocksdb_block_based_options_destroy(tableOptions);
            RocksDbNative.rocksdb_options_destroy(options);
            foreach (var copy in hinted)
            {
                RocksDbNative.rocksdb_options_destroy(copy);
            }
        }
    }

    [ThreadStatic] private static bool t_perfContextDisabled;

    /// <summary>RocksDB counts every memtable and block operation in a thread-local perf context unless
    /// the thread's perf level is "disable"; Debian's shared library reaches that context through
    /// <c>__tls_get_addr</c> on every operation (~5 % of a write's CPU). We never read the counters.</summary>
    private static void DisablePerfContext()
    {
        if (!t_perfContextDisabled)
        {
            RocksDbNative.rocksdb_set_perf_level(1 /* kDisable */);
            t_perfContextDisabled = true;
        }
    }

    public int ColumnFamilyCount => _families.Length;

    /// <summary>fsyncs the WAL: every write that returned before this call is durable when it returns.
    /// Safe to call while another thread writes (RocksDB's FlushWAL(sync: true)).</summary>
    public void SyncWal()
    {
        byte* err = null;
        var added = false;
        _db.DangerousAddRef(ref added);
        try
        {
            RocksDbNative.rocksdb_flush_wal(_db.DangerousGetHandle(), 1, &err);
        }
        finally
        {
            _db.DangerousRelease();
        }

        ThrowIfError(err);
    }

    /// <summary>Writes the batch atomically; with <paramref name="sync"/> the WAL is fsynced first.</summary>
    public void Write(WriteBatch batch, bool sync)
    {
        DisablePerfContext();
        var options = sync ? _syncWrite : _asyncWrite;
        byte* err = null;
        var added = false;
        _db.DangerousAddRef(ref added);
        try
        {
            RocksDbNative.rocksdb_write(_db.DangerousGetHandle(), options.DangerousGetHandle(), batch.Handle, &err);
        }
        finally
        {
            _db.DangerousRelease();
        }

        ThrowIfError(err);
    }

    /// <summary>Point read; null when the key is absent.</summary>
    public byte[]? Get(int family, ReadOnlySpan<byte> key)
    {
        byte* err = null;
        DisablePerfContext();
        nuint length = 0;
        byte* value;
        var added = false;
        var familyAdded = false;
        _db.DangerousAddRef(ref added);
        _families[family].DangerousAddRef(ref familyAdded);
        try
        {
            fixed (byte* k = key)
            {
                value = RocksDbNative.rocksdb_get_cf(
                    _db.DangerousGetHandle(), _pointRead.DangerousGetHandle(), Family(family), k, (nuint)key.Length, &length, &err);
            }
        }
        finally
        {
            _families[family].DangerousRelease();
            _db.DangerousRelease();
        }

        ThrowIfError(err);
        if (value == null)
        {
            return null;
        }

        var result = new ReadOnlySpan<byte>(value, checked((int)length)).ToArray();
        RocksDbNative.rocksdb_free(value);
        return result;
    }

    /// <summary>
    /// Write stalls RocksDB has counted since the open, summed over the column families: writes it slowed down
    /// (<c>total-delays</c>) and writes it stopped (<c>total-stops</c>) because of too many memtables, L0 files or
    /// pending compaction bytes (the <c>rocksdb.cf-write-stall-stats</c> property). Event counts, not durations.
    /// </summary>
    public (long Delays, long Stops) WriteStallCounts()
    {
        long delays = 0, stops = 0;
        var name = "rocksdb.cf-write-stall-stats\0"u8;
        var added = false;
        _db.DangerousAddRef(ref added);
        try
        {
            for (var i = 0; i < _families.Length; i++)
            {
                var familyAdded = false;
                _families[i].DangerousAddRef(ref familyAdded);
                byte* text;
                try
                {
                    fixed (byte* n = name)
                    {
                        text = RocksDbNative.rocksdb_property_value_cf(_db.DangerousGetHandle(), Family(i), n);
                    }
                }
                finally
                {
                    _families[i].DangerousRelease();
                }

                if (text == null)
                {
                    continue;
                }

                var value = System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpanFromNullTerminated(text);
                delays += CountAfter(value, "total-delays: "u8);
                stops += CountAfter(value, "total-stops: "u8);
                RocksDbNative.rocksdb_free(text);
            }
        }
        finally
        {
            _db.DangerousRelease();
        }

        return (delays, stops);
    }

    /// <summary>The decimal number after <paramref name="label"/> in <paramref name="text"/> (0 when absent).</summary>
    internal static long CountAfter(ReadOnlySpan<byte> text, ReadOnlySpan<byte> label)
    {
        var at = text.IndexOf(label);
        if (at < 0)
        {
            return 0;
        }

        long count = 0;
        foreach (var b in text[(at + label.Length)..])
        {
            if (b is < (byte)'0' or > (byte)'9')
            {
                break;
            }

            count = checked((count * 10) + (b - '0'));
        }

        return count;
    }

    /// <summary>An iterator over [lower, upper) of one column family (empty span = unbounded).</summary>
    public RocksIterator NewIterator(int family, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper)
    {
        DisablePerfContext();
        var readOptions = new ReadOptionsHandle(lower, upper);
        var added = false;
        var familyAdded = false;
        _db.DangerousAddRef(ref added);
        _families[family].DangerousAddRef(ref familyAdded);
        try
        {
            var it = RocksDbNative.rocksdb_create_iterator_cf(_db.DangerousGetHandle(), readOptions.DangerousGetHandle(), Family(family));
            return new RocksIterator(new IteratorHandle(_db, it), readOptions);
        }
        catch
        {
            readOptions.Dispose();
            throw;
        }
        finally
        {
            _families[family].DangerousRelease();
            _db.DangerousRelease();
        }
    }

    internal IntPtr Family(int index) => _families[index].DangerousGetHandle();

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        foreach (var family in _families)
        {
            family.Dispose();
        }

        _pointRead.Dispose();
        _syncWrite.Dispose();
        _asyncWrite.Dispose();
        // Closes the database once no iterator still references it.
        _db.Dispose();
    }

    internal static void ThrowIfError(byte* err)
    {
        if (err == null)
        {
            return;
        }

        var message = Marshal.PtrToStringUTF8((IntPtr)err) ?? "unknown RocksDB error";
        RocksDbNative.rocksdb_free(err);
        throw new RocksDbException(message);
    }

    private static byte[] NullTerminated(string value)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(value) + 1];
        Encoding.UTF8.GetBytes(value, bytes);
        return bytes;
    }
}

/// <summary>A native write batch. Puts copy the bytes, so callers may reuse their buffers.</summary>
internal sealed unsafe class WriteBatch : IDisposable
{
    private readonly WriteBatchHandle _handle = new();
    private readonly RocksDb _db;

    public WriteBatch(RocksDb db) => _db = db;

    internal IntPtr Handle => _handle.DangerousGetHandle();

    public int Count => RocksDbNative.rocksdb_writebatch_count(Handle);

    public void Put(int family, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        fixed (byte* k = key)
        fixed (byte* v = value)
        {
            RocksDbNative.rocksdb_writebatch_put_cf(Handle, _db.Family(family), k, (nuint)key.Length, v, (nuint)value.Length);
        }
    }

    public void Delete(int family, ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
        {
            RocksDbNative.rocksdb_writebatch_delete_cf(Handle, _db.Family(family), k, (nuint)key.Length);
        }
    }

    public void Clear() => RocksDbNative.rocksdb_writebatch_clear(Handle);

    public void Dispose() => _handle.Dispose();
}

/// <summary>A bounded iterator. <see cref="Key"/> and <see cref="Value"/> are borrowed from RocksDB
/// and valid only until the next move; copy what you keep.</summary>
internal sealed unsafe class RocksIterator : IDisposable
{
    private readonly IteratorHandle _iterator;
    private readonly ReadOptionsHandle _readOptions;

    internal RocksIterator(IteratorHandle iterator, ReadOptionsHandle readOptions)
    {
        _iterator = iterator;
        _readOptions = readOptions;
    }

    private IntPtr H => _iterator.DangerousGetHandle();

    public bool Valid => RocksDbNative.rocksdb_iter_valid(H) != 0;

    public void SeekToFirst() => RocksDbNative.rocksdb_iter_seek_to_first(H);

    public void SeekToLast() => RocksDbNative.rocksdb_iter_seek_to_last(H);

    public void Seek(ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
        {
            RocksDbNative.rocksdb_iter_seek(H, k, (nuint)key.Length);
        }
    }

    public void SeekForPrev(ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
        {
            RocksDbNative.rocksdb_iter_seek_for_prev(H, k, (nuint)key.Length);
        }
    }

    public void Next() => RocksDbNative.rocksdb_iter_next(H);

    public void Prev() => RocksDbNative.rocksdb_iter_prev(H);

    public ReadOnlySpan<byte> Key
    {
        get
        {
            nuint length;
            var p = RocksDbNative.rocksdb_iter_key(H, &length);
            return new ReadOnlySpan<byte>(p, (int)length);
        }
    }

    public ReadOnlySpan<byte> Value
    {
        get
        {
            nuint length;
            var p = RocksDbNative.rocksdb_iter_value(H, &length);
            return new ReadOnlySpan<byte>(p, (int)length);
        }
    }

    /// <summary>Throws if the iterator stopped because of an error rather than the end of the range.</summary>
    public void ThrowIfFailed()
    {
        byte* err = null;
        RocksDbNative.rocksdb_iter_get_error(H, &err);
        RocksDb.ThrowIfError(err);
    }

    public void Dispose()
    {
        _iterator.Dispose();
        _readOptions.Dispose();
    }
}
