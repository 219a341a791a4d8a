using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>The store over a sorted in-memory map: for unit tests of the broker core. Same semantics
/// as <see cref="RocksDbChatStore"/> (it runs the same writer), nothing survives disposal.</summary>
public sealed class InMemoryChatStore : ChatStore
{
    public InMemoryChatStore(StorageOptions? options = null)
        : base(new MemoryEngine(), options ?? new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan })
    {
    }

    /// <summary>For tests that inject engine faults.</summary>
    internal InMemoryChatStore(IKvEngine engine, StorageOptions options) : base(engine, options)
    {
    }
}
