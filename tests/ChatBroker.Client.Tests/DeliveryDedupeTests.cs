namespace ChatBroker.Client.Tests;

public sealed class DeliveryDedupeTests
{
    [Fact]
    public void In_order_and_out_of_order_pairs_are_surfaced_once()
    {
        var dedupe = new DeliveryDedupe();
        Assert.True(dedupe.TryMark(1, 1));
        Assert.True(dedupe.TryMark(1, 3));
        Assert.True(dedupe.TryMark(2, 1));
        Assert.False(dedupe.TryMark(1, 1));
        Assert.False(dedupe.TryMark(1, 3));
        Assert.True(dedupe.Seen(1, 3));
        Assert.False(dedupe.Seen(1, 2));
        Assert.True(dedupe.TryMark(1, 2));
        Assert.False(dedupe.TryMark(1, 2));
        Assert.False(dedupe.TryMark(2, 1));
    }

    [Fact]
    public void Gaps_do_not_grow_memory_without_bound()
    {
        var dedupe = new DeliveryDedupe();
        // Every other seq is missing (e.g. this device's own messages): the window stays bounded.
        for (ulong seq = 2; seq < 10_000; seq += 2)
        {
            Assert.True(dedupe.TryMark(1, seq));
        }

        for (ulong seq = 2; seq < 10_000; seq += 2)
        {
            Assert.False(dedupe.TryMark(1, seq));
        }

        // Far behind the window: treated as seen (bounded memory's price).
        Assert.True(dedupe.Seen(1, 3));
        Assert.True(dedupe.TryMark(1, 10_001));
    }

    [Fact]
    public void Conversations_beyond_the_limit_are_forgotten_oldest_first()
    {
        var dedupe = new DeliveryDedupe();
        for (ulong c = 1; c <= DeliveryDedupe.MaxConversations + 1; c++)
        {
            dedupe.TryMark(c, 1);
        }

        Assert.False(dedupe.Seen(1, 1));
        Assert.True(dedupe.Seen(2, 1));
        Assert.True(dedupe.Seen(DeliveryDedupe.MaxConversations + 1, 1));
    }
}
