namespace ChatBroker.Storage.Tests;

/// <summary>
/// Range export and import (IRangeTransfer): what a node streams to another when a conversation's owner or a
/// user's home moves. Runs on both engines.
/// </summary>
public abstract class RangeTransferContract : IDisposable
{
    private readonly List<IChatStore> _stores = [];

    private protected abstract IChatStore CreateStore();

    private IChatStore Open()
    {
        var store = CreateStore();
        _stores.Add(store);
        return store;
    }

    private sealed class Selector(Func<ulong, bool> conversation, Func<string, bool> user) : IRangeSelector
    {
        public bool TakesConversation(ulong conversationId) => conversation(conversationId);

        public bool TakesUser(string userId) => user(userId);
    }

    private static async Task<int> MoveAsync(IChatStore from, IChatStore to, IRangeSelector selector, int pageRecords = 7)
    {
        var position = RangePosition.Start;
        var moved = 0;
        for (var pages = 0; pages < 10_000; pages++)
        {
            var page = from.ExportRange(selector, position, pageRecords, 1 << 20);
            Assert.True(page.Records.Count <= pageRecords + 1); // an inbox entry may bring its message along
            moved += await to.ImportRangeAsync(page.Records);
            if (page.Done)
            {
                return moved;
            }

            position = page.Next;
        }

        throw new InvalidOperationException("the export did not end");
    }

    [Fact]
    public async Task A_moved_conversation_continues_its_sequence_and_keeps_its_idempotency_and_members()
    {
        var source = Open();
        var target = Open();
        var moving = await source.GetOrCreateDirectAtAsync(ChatStore.FirstDerivedConversationId | 77, "alice", "bob");
        var staying = await source.GetOrCreateDirectAtAsync(ChatStore.FirstDerivedConversationId | 78, "alice", "carol");
        for (ulong i = 1; i <= 20; i++)
        {
            await source.AppendAsync(Messages.To(moving.Id, $"m{i}", clientMsgId: i));
            await source.AppendAsync(Messages.To(staying.Id, $"s{i}", clientMsgId: 100 + i));
        }

        var moved = await MoveAsync(source, target, new Selector(c => c == moving.Id, _ => false));
        Assert.True(moved >= 20 + 20 + 3); // messages, idempotency marks, record and members

        Assert.Equal(20UL, target.GetLastSeq(moving.Id));
        Assert.Equal(0UL, target.GetLastSeq(staying.Id));
        Assert.Equal(["alice", "bob"], target.ListMembers(moving.Id).Select(m => m.UserId).Order());
        Assert.Equal(Enumerable.Range(1, 20).Select(i => $"m{i}"), target.ReadRange(moving.Id, 1, 100).Select(m => m.Text()));

        // The new owner continues at last seq + 1, and a retry of a moved SEND gets its original seq.
        var next = await target.AppendAsync(Messages.To(moving.Id, "m21", clientMsgId: 21));
        Assert.Equal(21UL, next.Seq);
        var retry = await target.AppendAsync(Messages.To(moving.Id, "m5", clientMsgId: 5));
        Assert.True(retry.IsDuplicate);
        Assert.Equal(5UL, retry.Seq);
        Assert.Equal(21UL, target.GetLastSeq(moving.Id));
    }

    [Fact]
    public async Task A_moved_user_keeps_inbox_seqs_copies_cursors_and_keys_and_reserved_ids_stay()
    {
        var source = Open();
        var target = Open();
        const ulong Conversation = ChatStore.FirstDerivedConversationId | 5;
        for (ulong i = 1; i <= 12; i++)
        {
            await source.AppendAsync(Messages.To(Conversation, $"m{i}", clientMsgId: i, sender: "carol") with { InboxRecipients = ["bob", "#home/n9"] });
        }

        await source.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 7);
        await source.UploadPrekeysAsync("bob", "phone", new PrekeyBundle(new byte[] { 1 }, 3, new byte[] { 2 }, new byte[] { 3 }), [new OneTimePrekey(1, new byte[] { 9 })]);
        await source.SetLastSeenAsync("bob", 1234);

        await MoveAsync(source, target, new Selector(_ => false, u => u == "bob"), pageRecords: 3);

        var inbox = target.ReadInbox("bob", 0, 100);
        Assert.Equal(Enumerable.Range(1, 12).Select(i => (ulong)i), inbox.Select(e => e.InboxSeq));
        Assert.Equal(12UL, target.GetLastInboxSeq("bob"));
        Assert.Equal("m12", Assert.Single(target.ReadRange(Conversation, 12, 1)).Text()); // the copy came along
        Assert.Equal(7UL, target.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(1, target.CountOneTimePrekeys("bob", "phone"));
        Assert.Equal(1234L, target.GetLastSeen("bob"));
        Assert.Equal(0UL, target.GetLastInboxSeq("#home/n9")); // a node's forward queue is not a user

        // New entries continue the inbox; a second import is harmless and never moves a cursor back.
        var more = await target.StoreCopyAsync(new StoredMessage(Conversation, 13, 1, "carol", "phone", 13, 1, null, new byte[] { 1 }), ["bob"]);
        Assert.Equal([13UL], more.InboxSeqs);
        await target.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 13);
        await MoveAsync(source, target, new Selector(_ => false, u => u == "bob"));
        Assert.Equal(13UL, target.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(13UL, target.GetLastInboxSeq("bob"));
    }

    [Fact]
    public async Task An_imported_group_id_is_never_handed_out_again_by_the_target()
    {
        var source = Open();
        var target = Open();
        Conversation group = null!;
        for (var i = 0; i < 3; i++)
        {
            group = await source.CreateGroupAsync("alice", $"g{i}", ["bob"]);
        }

        await MoveAsync(source, target, new Selector(c => c == group.Id, _ => false));
        var fresh = await target.CreateGroupAsync("carol", "new", ["dave"]);
        Assert.True(fresh.Id > group.Id);
    }

    [Fact]
    public async Task A_malformed_record_is_refused_before_anything_is_written()
    {
        var target = Open();
        var good = new RangeRecord(3, new byte[] { 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1 }, new byte[] { 1 });
        await Assert.ThrowsAsync<ArgumentException>(() => target.ImportRangeAsync([good with { Family = 250 }]));
        await Assert.ThrowsAsync<ArgumentException>(() => target.ImportRangeAsync([new RangeRecord(1, new byte[] { 1, 2 }, new byte[] { 1 })]));
        await Assert.ThrowsAsync<ArgumentException>(() => target.ImportRangeAsync(new RangeRecord[IRangeTransfer.MaxImportRecords + 1]));
        Assert.Equal(0UL, target.GetLastSeq(1));
    }

    public void Dispose()
    {
        foreach (var store in _stores)
        {
            store.Dispose();
        }

        DisposeMore();
        GC.SuppressFinalize(this);
    }

    private protected virtual void DisposeMore()
    {
    }
}

public sealed class InMemoryRangeTransferTests : RangeTransferContract
{
    private protected override IChatStore CreateStore() => new InMemoryChatStore();
}

public sealed class RocksDbRangeTransferTests : RangeTransferContract
{
    private readonly List<TempDirectory> _directories = [];

    private protected override IChatStore CreateStore()
    {
        var directory = new TempDirectory();
        _directories.Add(directory);
        return RocksDbChatStore.Open(new StorageOptions { Path = directory.Path, SweepInterval = Timeout.InfiniteTimeSpan });
    }

    private protected override void DisposeMore()
    {
        foreach (var directory in _directories)
        {
            directory.Dispose();
        }
    }
}
