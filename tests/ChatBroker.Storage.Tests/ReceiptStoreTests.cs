using System.Text;

namespace ChatBroker.Storage.Tests;

/// <summary>Receipts kept for a user and push jobs written with a copied message (cluster mode's home node), on both
/// stores; the RocksDB one across a reopen.</summary>
public sealed class ReceiptStoreTests : IDisposable
{
    private readonly TempDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    public static TheoryData<bool> Stores => [false, true];

    private IChatStore Open(bool rocks) => rocks
        ? RocksDbChatStore.Open(new StorageOptions { Path = _directory.Path, Durability = Durability.Sync, SweepInterval = Timeout.InfiniteTimeSpan, BlockCacheBytes = 4 << 20, WriteBufferBytes = 4 << 20 })
        : new InMemoryChatStore();

    [Theory]
    [MemberData(nameof(Stores))]
    public async Task A_receipt_only_moves_forward_and_is_listed_per_user(bool rocks)
    {
        using var store = Open(rocks);
        Assert.Equal(0UL, await store.StoreReceiptAsync("alice", 42, "bob", read: false, 3));
        Assert.Equal(3UL, await store.StoreReceiptAsync("alice", 42, "bob", read: false, 2)); // older: kept at 3
        Assert.Equal(0UL, await store.StoreReceiptAsync("alice", 42, "bob", read: true, 1));
        Assert.Equal(0UL, await store.StoreReceiptAsync("alice", 7, "carol", read: true, 9));
        Assert.Equal(0UL, await store.StoreReceiptAsync("alicia", 42, "bob", read: false, 5)); // another user, a longer id
        var concurrent = await Task.WhenAll(store.StoreReceiptAsync("dave", 1, "bob", false, 4), store.StoreReceiptAsync("dave", 1, "bob", false, 6));
        Assert.Equal([0UL, 4UL], concurrent);

        Assert.Equal(
            [(7UL, "carol", true, 9UL), (42UL, "bob", false, 3UL), (42UL, "bob", true, 1UL)],
            store.ListReceipts("alice", 10).Select(r => (r.ConversationId, r.ReaderUserId, r.Read, r.UpToSeq)));
        Assert.Single(store.ListReceipts("alice", 1));
        Assert.Equal(6UL, store.ListReceipts("dave", 10).Single().UpToSeq);
        Assert.Empty(store.ListReceipts("bob", 10));
        await Assert.ThrowsAsync<ArgumentException>(() => store.StoreReceiptAsync("", 1, "bob", false, 1));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.StoreReceiptAsync("alice", 0, "bob", false, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => store.ListReceipts("alice", 0));
    }

    [Theory]
    [MemberData(nameof(Stores))]
    public async Task A_copy_with_push_recipients_writes_their_jobs_once(bool rocks)
    {
        using var store = Open(rocks);
        var message = new StoredMessage(ChatStore.FirstDerivedConversationId + 1, 4, 1_700_000_000_000, "alice", "phone", 1, 1, null, Encoding.UTF8.GetBytes("x"));
        Assert.False((await store.StoreCopyAsync(message, ["bob", "carol"], ["bob"])).IsDuplicate);
        Assert.True((await store.StoreCopyAsync(message, ["bob", "carol"], ["bob"])).IsDuplicate);
        var job = Assert.Single(store.ListDuePushJobs(long.MaxValue, 10));
        Assert.Equal(("bob", message.ConversationId, 4UL), (job.UserId, job.ConversationId, job.Seq));
        await Assert.ThrowsAsync<ArgumentException>(() => store.StoreCopyAsync(message with { Seq = 5 }, ["bob"], [""]));
    }

    [Fact]
    public async Task Receipts_survive_a_reopen()
    {
        using (var store = Open(rocks: true))
        {
            await store.StoreReceiptAsync("alice", 42, "bob", read: true, 8);
        }

        using var reopened = Open(rocks: true);
        Assert.Equal((42UL, "bob", true, 8UL), reopened.ListReceipts("alice", 10).Single() is var r ? (r.ConversationId, r.ReaderUserId, r.Read, r.UpToSeq) : default);
    }
}
