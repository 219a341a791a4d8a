using System.Threading.Channels;

namespace ChatBroker.Storage.Tests;

/// <summary>
/// Replication at the store (IReplicaStore): a primary's committed batches wait in a tap until the replicas have
/// them; a replica applying the records has the same log, inbox, cursors, keys and counters. Runs on both engines.
/// </summary>
public abstract class ReplicationContract : IDisposable
{
    private readonly List<IChatStore> _stores = [];

    private protected abstract IChatStore CreateStore();

    private IChatStore Open()
    {
        var store = CreateStore();
        _stores.Add(store);
        return store;
    }

    /// <summary>Holds each committed batch until the test releases it.</summary>
    private sealed class HeldTap : IReplicationTap
    {
        public Channel<CommittedBatch> Batches { get; } = Channel.CreateUnbounded<CommittedBatch>();

        public void OnCommitted(CommittedBatch batch) => Batches.Writer.TryWrite(batch);

        public async Task<CommittedBatch> NextAsync() => await Batches.Reader.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
    }

    /// <summary>Applies every batch to the replica before it lets the primary's callers go on.</summary>
    private sealed class SyncTap(IChatStore replica) : IReplicationTap
    {
        public int Batches;

        public void OnCommitted(CommittedBatch batch)
        {
            Interlocked.Increment(ref Batches);
            _ = ApplyAsync(batch);
        }

        private async Task ApplyAsync(CommittedBatch batch)
        {
            try
            {
                await replica.ApplyReplicatedAsync(batch.Records);
                batch.Complete();
            }
            catch (Exception e)
            {
                batch.Complete(e);
            }
        }
    }

    [Fact]
    public async Task A_write_completes_only_when_the_tap_completes_its_batch()
    {
        var primary = Open();
        var tap = new HeldTap();
        primary.SetReplicationTap(tap);
        var append = primary.AppendAsync(Messages.To(ChatStore.FirstDerivedConversationId | 1, "hello", clientMsgId: 1) with { InboxRecipients = ["bob"] });
        var batch = await tap.NextAsync();
        Assert.False(append.IsCompleted);
        Assert.Contains(batch.Records, r => !r.Delete && ChatStore.TryGetOwner(r, out var o) && o.ConversationId == (ChatStore.FirstDerivedConversationId | 1));
        Assert.Contains(batch.Records, r => ChatStore.TryGetOwner(r, out var o) && o.UserId == "bob"); // the inbox entry
        batch.Complete();
        Assert.Equal(1UL, (await append.WaitAsync(TimeSpan.FromSeconds(10))).Seq);

        // A failure reported by the tap fails the write's caller.
        var second = primary.AppendAsync(Messages.To(ChatStore.FirstDerivedConversationId | 1, "again", clientMsgId: 2));
        (await tap.NextAsync()).Complete(new StorageException(StorageFailure.Io, "replica gone"));
        await Assert.ThrowsAsync<StorageException>(() => second.WaitAsync(TimeSpan.FromSeconds(10)));

        // Without a tap the single-node path is back.
        primary.SetReplicationTap(null);
        await primary.AppendAsync(Messages.To(ChatStore.FirstDerivedConversationId | 1, "third", clientMsgId: 3)).WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Readers_see_a_batch_only_once_its_replicas_have_it()
    {
        var primary = Open();
        var tap = new HeldTap();
        primary.SetReplicationTap(tap);
        const ulong Conversation = ChatStore.FirstDerivedConversationId | 3;
        var first = primary.AppendAsync(Messages.To(Conversation, "one", clientMsgId: 1) with { InboxRecipients = ["bob"] });
        (await tap.NextAsync()).Complete();
        await first.WaitAsync(TimeSpan.FromSeconds(10));

        // Durable here, not yet on the replicas: no history page, no catch-up read shows it (a device that saw it could
        // see another message under the same seq after a failover to a replica that never had it).
        var second = primary.AppendAsync(Messages.To(Conversation, "two", clientMsgId: 2) with { InboxRecipients = ["bob"] });
        var held = await tap.NextAsync();
        Assert.Equal([1UL], primary.ReadRange(Conversation, 1, 10).Select(m => m.Seq));
        Assert.Equal([1UL], primary.ReadInbox("bob", 0, 10).Select(e => e.InboxSeq));

        held.Complete();
        await second.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal([1UL, 2UL], primary.ReadRange(Conversation, 1, 10).Select(m => m.Seq));
        Assert.Equal([1UL, 2UL], primary.ReadInbox("bob", 0, 10).Select(e => e.InboxSeq));
    }

    [Fact]
    public async Task A_replica_applying_every_batch_has_the_primarys_log_inbox_cursors_keys_and_counters()
    {
        var primary = Open();
        var replica = Open();
        var tap = new SyncTap(replica);
        primary.SetReplicationTap(tap);
        const ulong Direct = ChatStore.FirstDerivedConversationId | 9;
        await primary.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        var group = await primary.CreateGroupAsync("alice", "g", ["bob", "carol"]);
        var appends = new List<Task<AppendResult>>();
        for (ulong i = 1; i <= 30; i++)
        {
            appends.Add(primary.AppendAsync(Messages.To(Direct, $"m{i}", clientMsgId: i) with { InboxRecipients = ["bob", "#home/n2"] }));
            appends.Add(primary.AppendAsync(Messages.To(group.Id, $"g{i}", clientMsgId: 100 + i)));
        }

        await Task.WhenAll(appends).WaitAsync(TimeSpan.FromSeconds(20));
        await primary.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 12);
        await primary.StoreReceiptAsync("alice", Direct, "bob", read: true, 12);
        await primary.UploadPrekeysAsync("bob", "phone", new PrekeyBundle(new byte[] { 1 }, 3, new byte[] { 2 }, new byte[] { 3 }), [new OneTimePrekey(1, new byte[] { 9 }), new OneTimePrekey(2, new byte[] { 8 })]);
        Assert.NotNull(await primary.TakePrekeysAsync("bob", "phone")); // a delete replicates too
        await primary.RemoveMemberAsync(group.Id, "carol");
        Assert.True(tap.Batches > 0);

        Assert.Equal(30UL, replica.GetLastSeq(Direct));
        Assert.Equal(30UL, replica.GetLastSeq(group.Id));
        Assert.Equal(primary.ReadRange(Direct, 1, 100).Select(m => m.Text()), replica.ReadRange(Direct, 1, 100).Select(m => m.Text()));
        Assert.Equal(30UL, replica.GetLastInboxSeq("bob"));
        Assert.Equal(0UL, replica.GetLastInboxSeq("#home/n2")); // a node's forward queue is its own
        Assert.Equal(12UL, replica.GetCursor("bob", "phone", CursorStream.Inbox));
        Assert.Equal(1, replica.CountOneTimePrekeys("bob", "phone"));
        Assert.Equal(["alice", "bob"], replica.ListMembers(group.Id).Select(m => m.UserId).Order());
        Assert.Equal(12UL, Assert.Single(replica.ListReceipts("alice", 10)).UpToSeq);

        // The replica continues each sequence, knows the SENDs it has, and never hands out the group's id again.
        Assert.Equal(31UL, (await replica.AppendAsync(Messages.To(Direct, "m31", clientMsgId: 31))).Seq);
        var retry = await replica.AppendAsync(Messages.To(Direct, "m7", clientMsgId: 7));
        Assert.True(retry.IsDuplicate);
        Assert.Equal(7UL, retry.Seq);
        Assert.True((await replica.CreateGroupAsync("dave", "new", ["erin"])).Id > group.Id);

        // Applying a batch again (a resend) changes nothing and never moves a cursor back.
        await replica.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 20);
        await replica.ApplyReplicatedAsync([.. primary.ExportRange(new AllUsers(), RangePosition.Start, 1000, 1 << 20).Records.Select(r => new ReplicaRecord(r.Family, r.Key, r.Value, false))]);
        Assert.Equal(20UL, replica.GetCursor("bob", "phone", CursorStream.Inbox));
    }

    [Fact]
    public async Task A_home_that_holds_the_conversations_log_as_a_replica_still_stores_each_copy_once_with_its_inbox_entries()
    {
        var owner = Open();
        var home = Open();
        owner.SetReplicationTap(new SyncTap(home)); // the home is also a replica of the owner: it gets the log
        const ulong Direct = ChatStore.FirstDerivedConversationId | 11;
        await owner.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        var appended = await owner.AppendAsync(Messages.To(Direct, "m1", clientMsgId: 1));
        Assert.Equal(1UL, home.GetLastSeq(Direct));

        // The forwarded copy of seq 1 for bob, whose home this is: the log says "have it", the node's own copied mark
        // says "not copied yet", and the mark decides.
        var copy = Assert.Single(owner.ReadRange(Direct, 1, 10));
        var first = await home.StoreCopyAsync(copy, ["bob"]);
        Assert.False(first.IsDuplicate);
        Assert.Equal([1UL], first.InboxSeqs);
        Assert.Equal((Direct, appended.Seq), (Assert.Single(home.ReadInbox("bob", 0, 10)).ConversationId, Assert.Single(home.ReadInbox("bob", 0, 10)).Seq));

        // A resend of the same copy stores nothing; neither does an older seq.
        Assert.True((await home.StoreCopyAsync(copy, ["bob"])).IsDuplicate);
        Assert.Single(home.ReadInbox("bob", 0, 10));
        Assert.Equal(1UL, home.GetLastSeq(Direct));
    }

    [Fact]
    public async Task A_new_home_keeps_a_copy_only_for_the_users_whose_replicated_copy_mark_is_below_it()
    {
        // The owner is also bob's home: its appends write bob's entries itself and replicate them (with bob's copy
        // mark) to the replica, which becomes bob's home after a failover and is then sent the tail again.
        var owner = Open();
        var replica = Open();
        owner.SetReplicationTap(new SyncTap(replica));
        const ulong Direct = ChatStore.FirstDerivedConversationId | 12;
        await owner.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        for (var i = 1; i <= 5; i++)
        {
            await owner.AppendAsync(Messages.To(Direct, "m" + i, clientMsgId: (ulong)i) with { InboxRecipients = ["bob"] });
        }

        Assert.Equal(5, replica.ReadInbox("bob", 0, 10).Count);
        var third = owner.ReadRange(Direct, 3, 1)[0];
        var again = await replica.StoreCopyAsync(third, ["bob"]);
        Assert.True(again.IsDuplicate);
        Assert.Equal([1UL, 2UL, 3UL, 4UL, 5UL], replica.ReadInbox("bob", 0, 10).Select(e => e.Seq));

        // A copy for bob and carol: only carol, who had none of it, gets an entry; bob's slot says 0.
        var mixed = await replica.StoreCopyAsync(third, ["bob", "carol"]);
        Assert.False(mixed.IsDuplicate);
        Assert.Equal([0UL, 1UL], mixed.InboxSeqs);
        Assert.Equal(5, replica.ReadInbox("bob", 0, 10).Count);

        // A newer one is kept for bob, once.
        var sixth = third with { Seq = 6, ClientMsgId = 6 };
        Assert.Equal([6UL], (await replica.StoreCopyAsync(sixth, ["bob"])).InboxSeqs);
        Assert.True((await replica.StoreCopyAsync(sixth, ["bob"])).IsDuplicate);

        // A replicated mark only ever raises the one here: applying the owner's older records again keeps bob at 6.
        await replica.ApplyReplicatedAsync([.. owner.ExportRange(new AllUsers(), RangePosition.Start, 1000, 1 << 20).Records.Select(r => new ReplicaRecord(r.Family, r.Key, r.Value, false))]);
        Assert.True((await replica.StoreCopyAsync(sixth, ["bob"])).IsDuplicate);
        Assert.Equal(6, replica.ReadInbox("bob", 0, 10).Count);
    }

    [Fact]
    public async Task A_homes_copy_whose_message_its_log_already_holds_still_hands_the_message_to_the_tap_with_the_entry()
    {
        // bob's home is a replica of the conversation's owner: the log record is there before the owner's copy comes,
        // so the copy writes only bob's entry. bob's own replicas need the message with it (a replica of bob that does
        // not replicate the conversation would, as bob's next home, hold an entry it cannot deliver): the batch carries
        // the home's own record again. Checker seed 205: a new device at bob's new home read his inbox only from 130 on.
        var owner = Open();
        var home = Open();
        owner.SetReplicationTap(new SyncTap(home));
        const ulong Direct = ChatStore.FirstDerivedConversationId | 14;
        await owner.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        await owner.AppendAsync(Messages.To(Direct, "m1", clientMsgId: 1));
        var copy = Assert.Single(home.ReadRange(Direct, 1, 10));

        var tap = new HeldTap();
        home.SetReplicationTap(tap);
        var stored = home.StoreCopyAsync(copy, ["bob"]);
        var batch = await tap.NextAsync();
        Assert.Single(batch.Records, r => ChatStore.TryGetMessagePosition(r, out var isLog, out var c, out var q) && isLog && (c, q) == (Direct, 1UL));
        Assert.Contains(batch.Records, r => ChatStore.TryGetMessagePosition(r, out var isLog, out var c, out var q) && !isLog && (c, q) == (Direct, 1UL));
        batch.Complete();
        Assert.Equal([1UL], (await stored).InboxSeqs);

        // The record is the home's own, unchanged; a user's replica that had none gets the message with the entry.
        var userReplica = Open();
        await userReplica.ApplyReplicatedAsync(batch.Records);
        var entry = Assert.Single(userReplica.ReadInbox("bob", 0, 10));
        Assert.Equal(("m1", 1UL), (System.Text.Encoding.UTF8.GetString(Assert.Single(userReplica.ReadRange(Direct, entry.Seq, 1)).Body.Span), entry.Seq));
        Assert.Equal(home.ReadRange(Direct, 1, 1)[0].Body.ToArray(), userReplica.ReadRange(Direct, 1, 1)[0].Body.ToArray());

        // A copy into a forward queue only (an owner's re-forward) writes the queue entry and not the record again:
        // queues stay on their node, and the conversation's replicas have the record.
        var queued = home.StoreCopyAsync(copy, ["#home/n9"]);
        var queueBatch = await tap.NextAsync();
        Assert.DoesNotContain(queueBatch.Records, r => ChatStore.TryGetMessagePosition(r, out var isLog, out _, out _) && isLog);
        queueBatch.Complete();
        Assert.Equal([1UL], (await queued).InboxSeqs);
    }

    [Fact]
    public async Task A_copy_from_the_new_owner_replaces_the_failed_owners_unacknowledged_record_at_the_same_seq()
    {
        // bob's home got the failed owner's log record of seq 1 with bob's entry (the owner was bob's home too), but that
        // write was never acknowledged: the owner's replicas of the conversation did not have it, and the new owner gave
        // seq 1 to another message. The new owner's copy is the conversation's: it replaces the home's record, and the
        // old message's idempotency mark goes with it (checker seed 324: the home kept the old one and shipped it on; it
        // reached the new owner's log over the right one).
        const ulong Direct = ChatStore.FirstDerivedConversationId | 15;
        var failedOwner = Open();
        var userReplica = Open();
        failedOwner.SetReplicationTap(new SyncTap(userReplica));
        await failedOwner.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        await failedOwner.AppendAsync(Messages.To(Direct, "never acknowledged", clientMsgId: 1) with { InboxRecipients = ["bob"] });
        Assert.Equal("never acknowledged", System.Text.Encoding.UTF8.GetString(userReplica.ReadRange(Direct, 1, 1)[0].Body.Span));

        var newOwner = Open();
        await newOwner.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        await newOwner.AppendAsync(Messages.To(Direct, "acknowledged", clientMsgId: 2));
        var copy = Assert.Single(newOwner.ReadRange(Direct, 1, 10));

        // A copy from anyone else (a partitioned old owner, say) never replaces a log record.
        Assert.True((await userReplica.StoreCopyAsync(copy, ["bob"])).IsDuplicate);
        Assert.Equal(1UL, Assert.Single(userReplica.ReadRange(Direct, 1, 10)).ClientMsgId);

        var tap = new HeldTap();
        userReplica.SetReplicationTap(tap);
        var stored = userReplica.StoreCopiesAsync([new CopyRequest(copy, ["bob"], [], FromOwner: true)]);
        var batch = await tap.NextAsync();
        batch.Complete();
        Assert.True(Assert.Single(await stored).IsDuplicate); // bob had an entry at seq 1: only the record changed
        var kept = Assert.Single(userReplica.ReadRange(Direct, 1, 10));
        Assert.Equal(("acknowledged", 2UL), (System.Text.Encoding.UTF8.GetString(kept.Body.Span), kept.ClientMsgId));

        // What it ships on is the new owner's record; a retry of the old SEND here no longer resolves to seq 1.
        var shipped = Assert.Single(batch.Records, r => ChatStore.TryGetMessagePosition(r, out var isLog, out var c, out var q) && isLog && (c, q) == (Direct, 1UL));
        var check = Open();
        await check.ApplyReplicatedAsync([shipped]);
        Assert.Equal(2UL, Assert.Single(check.ReadRange(Direct, 1, 10)).ClientMsgId);
        userReplica.SetReplicationTap(null);
        var retry = await userReplica.AppendAsync(Messages.To(Direct, "never acknowledged", clientMsgId: 1));
        Assert.Equal((false, 2UL), (retry.IsDuplicate, retry.Seq));
    }

    [Fact]
    public async Task A_users_entries_reach_the_users_replicas_with_their_messages()
    {
        // Records go to their own range's replicas; the tap adds each entry's message for a user's replica that does
        // not replicate the conversation. At the store: the message position of both kinds of record.
        var owner = Open();
        var tap = new HeldTap();
        owner.SetReplicationTap(tap);
        const ulong Direct = ChatStore.FirstDerivedConversationId | 13;
        var created = owner.GetOrCreateDirectAtAsync(Direct, "alice", "bob");
        (await tap.NextAsync()).Complete();
        await created;
        var append = owner.AppendAsync(Messages.To(Direct, "m1") with { InboxRecipients = ["bob"] });
        var batch = await tap.NextAsync();
        var positions = batch.Records
            .Select(r => ChatStore.TryGetMessagePosition(r, out var isLog, out var c, out var q) ? (isLog, c, q) : default)
            .Where(p => p.c != 0)
            .ToList();
        Assert.Contains((true, Direct, 1UL), positions);
        Assert.Contains((false, Direct, 1UL), positions);
        batch.Complete();
        await append;
    }

    [Fact]
    public async Task What_a_replica_applies_is_answered_at_once_and_not_handed_to_its_own_tap()
    {
        var source = Open();
        await source.SetLastSeenAsync("bob", 1234);
        var record = Assert.Single(source.ExportRange(new AllUsers(), RangePosition.Start, 10, 1 << 20).Records);
        var replica = Open();
        var tap = new HeldTap();
        replica.SetReplicationTap(tap);

        // The replica is a primary too (its tap holds its own writes), yet the apply is answered once durable here:
        // otherwise two primaries replicating to each other could each wait for the other's ack.
        var own = replica.SetLastSeenAsync("carol", 5);
        await replica.ApplyReplicatedAsync([new ReplicaRecord(record.Family, record.Key, record.Value, false)]).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(1234L, replica.GetLastSeen("bob"));
        var batch = await tap.NextAsync();
        Assert.DoesNotContain(batch.Records, r => ChatStore.TryGetOwner(r, out var o) && o.UserId == "bob");
        Assert.False(own.IsCompleted);
        batch.Complete();
        await own.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task A_malformed_replicated_record_is_refused_before_anything_is_written()
    {
        var replica = Open();
        await Assert.ThrowsAsync<ArgumentException>(() => replica.ApplyReplicatedAsync([new ReplicaRecord(250, new byte[] { 1 }, default, true)]));
        await Assert.ThrowsAsync<ArgumentException>(() => replica.ApplyReplicatedAsync([new ReplicaRecord(1, new byte[] { 1, 2 }, new byte[] { 1 }, false)]));
        Assert.Equal(0UL, replica.GetLastSeq(1));
    }

    private sealed class AllUsers : IRangeSelector
    {
        public bool TakesConversation(ulong conversationId) => false;

        public bool TakesUser(string userId) => true;
    }

    private protected virtual void DisposeMore()
    {
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
}

public sealed class InMemoryReplicationTests : ReplicationContract
{
    private protected override IChatStore CreateStore() => new InMemoryChatStore(new StorageOptions { InboxCopyMarks = true });
}

public sealed class RocksDbReplicationTests : ReplicationContract
{
    private readonly List<TempDirectory> _directories = [];

    private protected override IChatStore CreateStore()
    {
        var directory = new TempDirectory();
        _directories.Add(directory);
        return RocksDbChatStore.Open(new StorageOptions { Path = directory.Path, SweepInterval = Timeout.InfiniteTimeSpan, InboxCopyMarks = true });
    }

    private protected override void DisposeMore()
    {
        foreach (var directory in _directories)
        {
            directory.Dispose();
        }
    }
}
