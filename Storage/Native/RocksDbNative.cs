using System.Reflection;
using System.Runtime.InteropServices;

namespace ChatBroker.Storage.Native;

/// <summary>
/// The slice of RocksDB's C API (include/rocksdb/c.h; the library is RocksDB 11.12 from the RocksDB NuGet package) that the store needs. Signatures are
/// blittable: lengths are size_t (nuint), booleans are unsigned char (byte), every handle is an
/// opaque pointer. Functions taking <c>char** errptr</c> require it to start NULL; a non-NULL
/// result is a malloc'd message that must be released with <c>rocksdb_free</c>.
/// </summary>
internal static unsafe partial class RocksDbNative
{
    private const string Library = "rocksdb";

    /// <summary>The file the build copies beside our assemblies from the RocksDB package
    /// (runtimes/linux-x64/native; see ChatBroker.Storage.csproj).</summary>
    private const string FileName = "librocksdb.so";

    static RocksDbNative()
    {
        NativeLibrary.SetDllImportResolver(typeof(RocksDbNative).Assembly, Resolve);
    }

    /// <summary>Forces the resolver to be installed and the library to load; throws if it cannot.</summary>
    public static void EnsureLoaded() => _ = rocksdb_writeoptions_create_probe();

    /// <summary>Loads the package's library from the application's directory first, so that a RocksDB a
    /// distribution installed (another version, other symbols) is never picked up by accident. A
    /// single-file app extracts native libraries elsewhere: the runtime's own probing finds them there.</summary>
    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != Library)
        {
            return IntPtr.Zero;
        }

        var beside = Path.Combine(AppContext.BaseDirectory, FileName);
        if (File.Exists(beside) && NativeLibrary.TryLoad(beside, out var handle))
        {
            return handle;
        }

        if (NativeLibrary.TryLoad(FileName, assembly, searchPath, out handle))
        {
            return handle;
        }

        throw new DllNotFoundException(
            $"Cannot load RocksDB: {FileName} is not in {AppContext.BaseDirectory} nor on the native search path. " +
            "It comes from the RocksDB NuGet package (linux-x64) with the build; rebuild or republish the broker.");
    }

    private static IntPtr rocksdb_writeoptions_create_probe()
    {
        var p = rocksdb_writeoptions_create();
        rocksdb_writeoptions_destroy(p);
        return p;
    }

    // ---- memory ----
    [LibraryImport(Library)] public static partial void rocksdb_free(void* ptr);

    // ---- options ----
    [LibraryImport(Library)] public static partial IntPtr rocksdb_options_create();
    [LibraryImport(Library)] public static partial void rocksdb_options_destroy(IntPtr options);
    [LibraryImport(Library)] public static partial IntPtr rocksdb_options_create_copy(IntPtr options);
    [LibraryImport(Library)] public static partial void rocksdb_get_options_from_string(IntPtr baseOptions, byte* optionsString, IntPtr newOptions, byte** errptr);
    [LibraryImport(Library)] public static partial void rocksdb_set_perf_level(int level);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_create_if_missing(IntPtr options, byte value);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_create_missing_column_families(IntPtr options, byte value);
    [LibraryImport(Library)] public static partial void rocksdb_options_increase_parallelism(IntPtr options, int totalThreads);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_write_buffer_size(IntPtr options, nuint size);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_max_total_wal_size(IntPtr options, ulong size);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_level0_file_num_compaction_trigger(IntPtr options, int count);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_max_open_files(IntPtr options, int count);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_keep_log_file_num(IntPtr options, nuint count);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_bytes_per_sync(IntPtr options, ulong bytes);
    /// <summary>A property of one column family as text (malloc'd: release with <c>rocksdb_free</c>); null when unknown.</summary>
    [LibraryImport(Library)] public static partial byte* rocksdb_property_value_cf(IntPtr db, IntPtr family, byte* name);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_info_log_level(IntPtr options, int level);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_compression(IntPtr options, int compression);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_wal_compression(IntPtr options, int compression);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_memtable_prefix_bloom_size_ratio(IntPtr options, double ratio);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_memtable_whole_key_filtering(IntPtr options, byte value);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_allow_concurrent_memtable_write(IntPtr options, byte value);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_enable_write_thread_adaptive_yield(IntPtr options, byte value);
    [LibraryImport(Library)] public static partial void rocksdb_options_set_block_based_table_factory(IntPtr options, IntPtr tableOptions);

    [LibraryImport(Library)] public static partial IntPtr rocksdb_block_based_options_create();
    [LibraryImport(Library)] public static partial void rocksdb_block_based_options_destroy(IntPtr tableOptions);
    [LibraryImport(Library)] public static partial void rocksdb_block_based_options_set_block_cache(IntPtr tableOptions, IntPtr cache);
    [LibraryImport(Library)] public static partial void rocksdb_block_based_options_set_filter_policy(IntPtr tableOptions, IntPtr policy);
    [LibraryImport(Library)] public static partial void rocksdb_block_based_options_set_format_version(IntPtr tableOptions, int version);
    [LibraryImport(Library)] public static partial IntPtr rocksdb_filterpolicy_create_bloom(double bitsPerKey);
    [LibraryImport(Library)] public static partial IntPtr rocksdb_cache_create_lru(nuint capacity);
    [LibraryImport(Library)] public static partial void rocksdb_cache_destroy(IntPtr cache);

    // ---- open / close ----
    [LibraryImport(Library)]
    public static partial IntPtr rocksdb_open_column_families(
        IntPtr options, byte* name, int numColumnFamilies, byte** columnFamilyNames,
        IntPtr* columnFamilyOptions, IntPtr* columnFamilyHandles, byte** errptr);

    [LibraryImport(Library)] public static partial void rocksdb_close(IntPtr db);
    [LibraryImport(Library)] public static partial void rocksdb_column_family_handle_destroy(IntPtr handle);
    [LibraryImport(Library)] public static partial void rocksdb_flush_wal(IntPtr db, byte sync, byte** errptr);

    // ---- writes ----
    [LibraryImport(Library)] public static partial IntPtr rocksdb_writeoptions_create();
    [LibraryImport(Library)] public static partial void rocksdb_writeoptions_destroy(IntPtr options);
    [LibraryImport(Library)] public static partial void rocksdb_writeoptions_set_sync(IntPtr options, byte sync);
    [LibraryImport(Library)] public static partial void rocksdb_writeoptions_disable_WAL(IntPtr options, int disable);

    [LibraryImport(Library)] public static partial IntPtr rocksdb_writebatch_create();
    [LibraryImport(Library)] public static partial void rocksdb_writebatch_destroy(IntPtr batch);
    [LibraryImport(Library)] public static partial void rocksdb_writebatch_clear(IntPtr batch);
    [LibraryImport(Library)] public static partial int rocksdb_writebatch_count(IntPtr batch);
    [LibraryImport(Library)] public static partial void rocksdb_writebatch_put_cf(IntPtr batch, IntPtr cf, byte* key, nuint keyLength, byte* value, nuint valueLength);
    [LibraryImport(Library)] public static partial void rocksdb_writebatch_delete_cf(IntPtr batch, IntPtr cf, byte* key, nuint keyLength);
    [LibraryImport(Library)] public static partial void rocksdb_write(IntPtr db, IntPtr options, IntPtr batch, byte** errptr);

    // ---- reads ----
    [LibraryImport(Library)] public static partial IntPtr rocksdb_readoptions_create();
    [LibraryImport(Library)] public static partial void rocksdb_readoptions_destroy(IntPtr options);
    // c.h stores only a Slice to these bounds: the bytes must outlive every iterator using them.
    [LibraryImport(Library)] public static partial void rocksdb_readoptions_set_iterate_upper_bound(IntPtr options, byte* key, nuint keyLength);
    [LibraryImport(Library)] public static partial void rocksdb_readoptions_set_iterate_lower_bound(IntPtr options, byte* key, nuint keyLength);
    [LibraryImport(Library)] public static partial byte* rocksdb_get_cf(IntPtr db, IntPtr options, IntPtr cf, byte* key, nuint keyLength, nuint* valueLength, byte** errptr);

    [LibraryImport(Library)] public static partial IntPtr rocksdb_create_iterator_cf(IntPtr db, IntPtr options, IntPtr cf);
    [LibraryImport(Library)] public static partial void rocksdb_iter_destroy(IntPtr iterator);
    [LibraryImport(Library)] public static partial byte rocksdb_iter_valid(IntPtr iterator);
    [LibraryImport(Library)] public static partial void rocksdb_iter_seek_to_first(IntPtr iterator);
    [LibraryImport(Library)] public static partial void rocksdb_iter_seek_to_last(IntPtr iterator);
    [LibraryImport(Library)] public static partial void rocksdb_iter_seek(IntPtr iterator, byte* key, nuint keyLength);
    [LibraryImport(Library)] public static partial void rocksdb_iter_seek_for_prev(IntPtr iterator, byte* key, nuint keyLength);
    [LibraryImport(Library)] public static partial void rocksdb_iter_next(IntPtr iterator);
    [LibraryImport(Library)] public static partial void rocksdb_iter_prev(IntPtr iterator);
    [LibraryImport(Library)] public static partial byte* rocksdb_iter_key(IntPtr iterator, nuint* keyLength);
    [LibraryImport(Library)] public static partial byte* rocksdb_iter_value(IntPtr iterator, nuint* valueLength);
    [LibraryImport(Library)] public static partial void rocksdb_iter_get_error(IntPtr iterator, byte** errptr);
}
