using System.Threading.Channels;

namespace ChatBroker.Storage.Tests;

/// <summary>
/// A node is a primary of its own ranges and a replica of others' at once, and the writer may put a replicated batch and
/// an own write in one batch. Readers hide the own write's seqs until this node's replicas have it; the records another
/// primary sent are not this node's to hide (checker seed 342: a replica whose own batch waited for a dead replica hid
/// the replicated tail, took the range over, re-forwarded without it, and answered the retries as duplicates).
/// </summary>
public sealed class ReplicaVisibilityTests
{
    private const ulong Replicated = ChatStore.FirstDerivedConversationId | 7;
    private const ulong Own = ChatStore.FirstDerivedConversationId | 9;

    private sealed class HeldTap : IReplicationTap
    {
        public Channel<CommittedBatch> Batches { get; } = Channel.CreateUnbounded<CommittedBatch>();

        public void OnCommitted(CommittedBatch batch) => Batches.Writer.TryWrite(batch);

        public async Task<CommittedBatch> NextAsync() => await Batches.Reader.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Another_primarys_records_are_readable_at_once_even_in_a_batch_whose_own_write_waits_for_replicas()
    {
        // The other primary's batch: two messages of its conversation, with the recipient's inbox entries.
        using var source = new InMemoryChatStore(new StorageOptions { InboxCopyMarks = true });
        var sourceTap = new HeldTap();
        source.SetReplicationTap(sourceTap);
        var records = new List<ReplicaRecord>();
        foreach (var (body, id) in new[] { ("one", 1UL), ("two", 2UL) })
        {
            var append = source.AppendAsync(Messages.To(Replicated, body, clientMsgId: id) with { InboxRecipients = ["bob"] });
            var batch = await sourceTap.NextAsync();
            records.AddRange(batch.Records);
            batch.Complete();
            await append.WaitAsync(TimeSpan.FromSeconds(10));
        }

        var engine = new GatedCommitEngine();
        using var replica = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan, InboxCopyMarks = true });
        var tap = new HeldTap();
        replica.SetReplicationTap(tap);

        // An own write is being written; meanwhile another own write and the replicated batch queue behind it, so the
        // writer puts them in its next batch.
        engine.HoldNextCommit();
        var first = replica.AppendAsync(Messages.To(Own, "a", clientMsgId: 1) with { InboxRecipients = ["carol"] });
        Assert.True(await engine.HeldCommitEntered.WaitAsync(TimeSpan.FromSeconds(10)));
        var second = replica.AppendAsync(Messages.To(Own, "b", clientMsgId: 2) with { InboxRecipients = ["carol"] });
        var applied = replica.ApplyReplicatedAsync(records);
        engine.LetHeldCommitGo();
        (await tap.NextAsync()).Complete();
        await first.WaitAsync(TimeSpan.FromSeconds(10));
        var held = await tap.NextAsync(); // the batch with "b" (and the applied records), waiting for this node's replicas
        Assert.Equal(records.Count, await applied.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.False(second.IsCompleted);

        // The replicated tail is readable here at once (it is durable on its own primary's replicas, this node among them)…
        Assert.Equal(2UL, replica.GetLastSeq(Replicated));
        Assert.Equal([1UL, 2UL], replica.ReadRange(Replicated, 1, 10).Select(m => m.Seq));
        Assert.Equal([1UL, 2UL], replica.ReadInbox("bob", 0, 10).Select(e => e.InboxSeq));

        // …while this node's own write stays hidden until its replicas have it.
        Assert.Equal(1UL, replica.GetLastSeq(Own));
        Assert.Equal([1UL], replica.ReadInbox("carol", 0, 10).Select(e => e.InboxSeq));
        held.Complete();
        Assert.Equal(2UL, (await second.WaitAsync(TimeSpan.FromSeconds(10))).Seq);
        Assert.Equal(2UL, replica.GetLastSeq(Own));
    }
}
