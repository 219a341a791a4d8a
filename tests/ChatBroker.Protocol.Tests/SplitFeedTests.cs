using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol.Tests;

/// <summary>
/// Like nats-server's parser tests: the same stream fed in every possible chunking must decode to
/// the same frames.
/// </summary>
public class SplitFeedTests
{
    [Fact]
    public void Stream_fed_one_byte_at_a_time_decodes_identically()
    {
        var data = Samples.Stream(out var expected);
        var reads = new List<int>();
        var (frames, error) = ChunkedReader.Feed(data, Enumerable.Repeat(1, data.Length).ToList(), readsPerChunk: reads);

        Assert.Equal(ReasonCode.Success, error);
        AssertMatches(expected, frames);

        // A frame completes exactly on its last byte: the byte count between completions equals the frame length.
        var position = 0;
        var frameEnds = new HashSet<int>();
        foreach (var frame in frames)
        {
            position += FrameWriter.HeaderLength(frame.Body.Length) + frame.Body.Length;
            frameEnds.Add(position - 1);
        }

        for (var i = 0; i < reads.Count; i++)
        {
            Assert.Equal(frameEnds.Contains(i) ? 1 : 0, reads[i]);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(42)]
    [InlineData(2024)]
    public void Stream_fed_in_random_splits_decodes_identically(int seed)
    {
        var data = Samples.Stream(out var expected);
        var random = new Random(seed);
        for (var round = 0; round < 50; round++)
        {
            var splits = ChunkedReader.RandomSplits(data.Length, random, maxChunk: 1 + random.Next(64));
            var (frames, error) = ChunkedReader.Feed(data, splits);
            Assert.Equal(ReasonCode.Success, error);
            AssertMatches(expected, frames);
        }
    }

    [Fact]
    public void Stream_fed_whole_decodes_identically()
    {
        var data = Samples.Stream(out var expected);
        var (frames, error) = ChunkedReader.Feed(data, [data.Length]);
        Assert.Equal(ReasonCode.Success, error);
        AssertMatches(expected, frames);
    }

    private static void AssertMatches(
        List<(PacketType Type, FrameFlags Flags, Google.Protobuf.IMessage Message)> expected,
        List<ChunkedReader.Decoded> frames)
    {
        Assert.Equal(expected.Count, frames.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Type, frames[i].Type);
            Assert.Equal(expected[i].Flags, frames[i].Flags);
            Assert.Equal(expected[i].Message, frames[i].Message);
        }
    }
}
