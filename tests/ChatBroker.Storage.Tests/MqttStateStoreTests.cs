namespace ChatBroker.Storage.Tests;

/// <summary>The `mqtt` family (the MQTT listener's session state, opaque records), on both stores; the RocksDB one
/// across a reopen.</summary>
public sealed class MqttStateStoreTests : IDisposable
{
    private readonly TempDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    public static TheoryData<bool> Stores => [false, true];

    private IChatStore Open(bool rocks) => rocks
        ? RocksDbChatStore.Open(new StorageOptions { Path = _directory.Path, Durability = Durability.Sync, SweepInterval = Timeout.InfiniteTimeSpan, BlockCacheBytes = 4 << 20, WriteBufferBytes = 4 << 20 })
        : new InMemoryChatStore();

    private static byte[] B(string s) => System.Text.Encoding.UTF8.GetBytes(s);

    private static List<(string Key, string Value)> Read(IChatStore store, string prefix)
    {
        var records = new List<(string, string)>();
        store.ReadMqttState(B(prefix), (k, v) => records.Add((System.Text.Encoding.UTF8.GetString(k), System.Text.Encoding.UTF8.GetString(v))));
        return records;
    }

    [Theory]
    [MemberData(nameof(Stores))]
    public async Task Writes_apply_in_order_and_are_read_back_by_prefix(bool rocks)
    {
        using (var store = Open(rocks))
        {
            await store.WriteMqttStateAsync(
            [
                MqttStateWrite.Put(B("s/a/1"), B("one")),
                MqttStateWrite.Put(B("s/a/2"), B("two")),
                MqttStateWrite.Put(B("s/b/1"), B("other")),
                MqttStateWrite.Put(B("r/t"), B("retained")),
                MqttStateWrite.Delete(B("s/a/2")),
                MqttStateWrite.Put(B("s/a/1"), B("one again")), // the later write of a key wins
            ]);
            await store.WriteMqttStateAsync([MqttStateWrite.Delete(B("s/none"))]);
            Assert.Equal([("s/a/1", "one again")], Read(store, "s/a/"));
            Assert.Equal(3, Read(store, "").Count);
            await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.WriteMqttStateAsync([MqttStateWrite.Put(Array.Empty<byte>(), B("x"))]));
            if (!rocks)
            {
                return;
            }
        }

        using var reopened = Open(rocks);
        Assert.Equal([("r/t", "retained"), ("s/a/1", "one again"), ("s/b/1", "other")], Read(reopened, ""));
    }
}
