using ChatBroker.Broker.Sessions;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>The session's record of the inbox entries it passed: it answers an ACK's range exactly, or not at all.</summary>
public sealed class InboxRecordTests
{
    private static Dictionary<ulong, ulong>? Collect(InboxRecord record, ulong after, ulong through)
    {
        var highest = new Dictionary<ulong, ulong>();
        return record.TryCollect(after, through, highest) ? highest : null;
    }

    [Fact]
    public void A_run_answers_any_range_inside_it_with_the_highest_seq_per_conversation()
    {
        var record = new InboxRecord();
        record.Note(5, conversationId: 1, seq: 10);
        record.Note(6, conversationId: 2, seq: 3);
        record.Note(7, conversationId: 1, seq: 11);

        Assert.Equal(new Dictionary<ulong, ulong> { [1] = 11, [2] = 3 }, Collect(record, 4, 7));
        Assert.Equal(new Dictionary<ulong, ulong> { [2] = 3 }, Collect(record, 5, 6));
        Assert.Null(Collect(record, 3, 7)); // position 4 was never passed
        Assert.Null(Collect(record, 4, 8)); // nor 8
        Assert.Null(Collect(record, 7, 7)); // an empty range is not an answer
    }

    [Fact]
    public void A_jump_starts_the_run_again()
    {
        var record = new InboxRecord();
        record.Note(1, 1, 1);
        record.Note(2, 1, 2);
        record.Note(5, 1, 5); // 3 and 4 were not passed (retention, a SYNC)

        Assert.Null(Collect(record, 0, 5));
        Assert.Null(Collect(record, 0, 2));
        Assert.Equal(new Dictionary<ulong, ulong> { [1] = 5 }, Collect(record, 4, 5));

        record.Break();
        Assert.Null(Collect(record, 4, 5));
        Assert.Equal(0, record.Count);
        Assert.False(record.HoldsEntries); // nothing kept for a device that goes idle now
    }

    [Fact]
    public void An_ack_drops_what_it_covers_and_remembers_the_cursor()
    {
        var record = new InboxRecord();
        Assert.False(record.HasAcked);
        for (ulong p = 1; p <= 4; p++)
        {
            record.Note(p, 7, p);
        }

        record.Acked(2);

        Assert.True(record.HasAcked);
        Assert.Equal(2UL, record.AckedCursor);
        Assert.Equal(2, record.Count);
        Assert.Null(Collect(record, 1, 3));
        Assert.Equal(new Dictionary<ulong, ulong> { [7] = 4 }, Collect(record, 2, 4));

        record.Acked(1); // the cursor never goes back
        Assert.Equal(2UL, record.AckedCursor);

        record.Acked(9);
        Assert.Equal(0, record.Count);
        Assert.False(record.HoldsEntries);
        record.Note(10, 7, 10); // after an ACK beyond the run: a new run
        Assert.Equal(new Dictionary<ulong, ulong> { [7] = 10 }, Collect(record, 9, 10));
    }

    [Fact]
    public void Forget_drops_entries_without_claiming_a_stored_cursor()
    {
        var record = new InboxRecord();
        record.Note(1, 1, 1);
        record.Note(2, 1, 2);

        record.Forget(1);

        Assert.False(record.HasAcked);
        Assert.Equal(1, record.Count);
        Assert.Equal(new Dictionary<ulong, ulong> { [1] = 2 }, Collect(record, 1, 2));
    }

    [Fact]
    public void A_device_that_does_not_acknowledge_keeps_at_most_the_bound_and_the_newest_entries()
    {
        var record = new InboxRecord();
        var last = (ulong)InboxRecord.MaxEntries * 3;
        for (ulong p = 1; p <= last; p++)
        {
            record.Note(p, p % 3, p);
            Assert.InRange(record.Count, 1, InboxRecord.MaxEntries);
        }

        Assert.Null(Collect(record, 0, last)); // the oldest went: an ACK from the start reads the store
        Assert.NotNull(Collect(record, last - 10, last));
        Assert.Equal(new Dictionary<ulong, ulong> { [0] = last, [1] = last - 2, [2] = last - 1 }, Collect(record, last - 3, last));
    }
}
