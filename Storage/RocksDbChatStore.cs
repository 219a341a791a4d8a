using ChatBroker.Storage.Engine;
using ChatBroker.Storage.Native;

namespace ChatBroker.Storage;

/// <summary>The durable store on RocksDB.</summary>
public sealed class RocksDbChatStore : ChatStore
{
    private RocksDbChatStore(IKvEngine engine, StorageOptions options) : base(engine, options)
    {
    }

    /// <summary>Opens (creating if missing) the store at <see cref="StorageOptions.Path"/>. Every counter
    /// is recovered from the data. Throws <see cref="StorageException"/> naming the path when the directory
    /// cannot be created or RocksDB refuses it (permissions, a LOCK held by another process, corruption).</summary>
    public static RocksDbChatStore Open(StorageOptions options)
    {
        Validate(options);
        var path = System.IO.Path.GetFullPath(options.Path);
        RocksDb db;
        try
        {
            Directory.CreateDirectory(path);
            db = RocksDb.Open(path, RocksDbEngine.FamilyNames, new RocksDbSettings(options.BlockCacheBytes, options.WriteBufferBytes, MaxOpenFiles: 512, HintedFamilies: Array.ConvertAll(Codec.Records.HintedFamilies, f => (int)f), InfoLog: options.RocksDbInfoLog));
        }
        catch (Exception ex) when (ex is RocksDbException or IOException or UnauthorizedAccessException or DllNotFoundException)
        {
            throw StorageException.From($"Cannot open message store at {path}: ", ex, StorageFailure.Io);
        }

        var engine = new RocksDbEngine(db);
        try
        {
            return new RocksDbChatStore(engine, options with { Path = path });
        }
        catch
        {
            engine.Dispose();
            throw;
        }
    }
}
