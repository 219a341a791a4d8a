using System.Buffers;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol.Tests;

/// <summary>No allocation is ever sized by a declared length; reading a header allocates nothing.</summary>
public class AllocationTests
{
    // 268,435,455 bytes (256 MiB - 1, the largest 4-byte remaining length) declared by a SEND header,
    // followed by a few body bytes.
    private static readonly byte[] HugeDeclaration = [0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x08, 0x01, 0x12, 0x00];

    [Fact]
    public void Declaring_256_MiB_with_the_limit_raised_waits_for_data_without_allocating()
    {
        var buffer = new ReadOnlySequence<byte>(HugeDeclaration);
        FrameReader.TryRead(buffer, ProtocolConstants.MaxRemainingLength, out _, out _, out _); // warm up

        var before = GC.GetAllocatedBytesForCurrentThread();
        var complete = false;
        var error = ReasonCode.Success;
        for (var i = 0; i < 1000; i++)
        {
            complete |= FrameReader.TryRead(buffer, ProtocolConstants.MaxRemainingLength, out _, out _, out error);
        }

        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.False(complete);
        Assert.Equal(ReasonCode.Success, error);
        Assert.True(allocated < 1024, $"allocated {allocated} bytes");
    }

    [Fact]
    public void Declaring_256_MiB_with_the_default_limit_is_rejected_at_once_without_allocating()
    {
        var buffer = new ReadOnlySequence<byte>(HugeDeclaration.AsMemory(0, 5));
        FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out _, out _, out _); // warm up

        var before = GC.GetAllocatedBytesForCurrentThread();
        var complete = FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out _, out _, out var error);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.False(complete);
        Assert.Equal(ReasonCode.FrameTooLarge, error);
        Assert.True(allocated < 1024, $"allocated {allocated} bytes");
    }

    [Fact]
    public void Declaring_256_MiB_over_split_segments_allocates_only_the_test_segments()
    {
        var (_, warm) = ChunkedReader.Feed(HugeDeclaration, [1, 1, 1, 1, 1, 4], ProtocolConstants.MaxRemainingLength);
        Assert.Equal(ReasonCode.TruncatedFrame, warm);

        var pieces = new List<ReadOnlyMemory<byte>>();
        for (var i = 0; i < HugeDeclaration.Length; i++)
        {
            pieces.Add(HugeDeclaration.AsMemory(i, 1));
        }

        var buffer = Segment.Sequence(pieces);
        var before = GC.GetAllocatedBytesForCurrentThread();
        var complete = FrameReader.TryRead(buffer, ProtocolConstants.MaxRemainingLength, out _, out _, out var error);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.False(complete);
        Assert.Equal(ReasonCode.Success, error);
        Assert.True(allocated < 1024, $"allocated {allocated} bytes");
    }

    [Fact]
    public void Reading_a_header_and_slicing_the_body_allocates_nothing()
    {
        var writer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, Samples.All().OfType<Send>().Single());
        var buffer = new ReadOnlySequence<byte>(writer.WrittenMemory);
        FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out _, out _, out _);

        var before = GC.GetAllocatedBytesForCurrentThread();
        long bodyBytes = 0;
        for (var i = 0; i < 1000; i++)
        {
            FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _);
            bodyBytes += frame.Body.Length;
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.True(bodyBytes > 0);
    }

    [Fact]
    public void Hand_rolled_deliver_writer_allocates_nothing()
    {
        var writer = new ArrayBufferWriter<byte>(4096);
        var body = Samples.Body(100);
        var fields = new DeliverFields
        {
            ConversationId = Samples.ConversationId,
            Seq = 17,
            SenderUserId = "alice",
            SenderDeviceId = "phone-1",
            TimestampMs = 1_764_096_000_123,
            InboxSeq = 1235,
        };
        DeliverWriter.Write(writer, fields, body);
        writer.ResetWrittenCount();

        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 20; i++)
        {
            DeliverWriter.Write(writer, fields, body);
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }
}
