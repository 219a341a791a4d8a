using System.Buffers;
using ChatBroker.Broker.Transport;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Transport;

public sealed class FrameBoundaryTests
{
    private static byte[] Frames()
    {
        var buffer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(buffer, new Connect { ProtocolVersion = 1, UserId = "carol", DeviceId = "browser", Token = new string('t', 300) });
        FrameWriter.Write(buffer, new Ping());
        FrameWriter.Write(buffer, new Send { ClientMsgId = 1, ToUserId = "dave", Body = ByteString.CopyFrom(new byte[20_000]) });
        return buffer.WrittenSpan.ToArray();
    }

    // The offsets at which each frame of Frames() ends.
    private static HashSet<int> Ends()
    {
        var bytes = Frames();
        var ends = new HashSet<int>();
        var sequence = new ReadOnlySequence<byte>(bytes);
        var offset = 0;
        while (!sequence.IsEmpty)
        {
            Assert.True(FrameReader.TryRead(sequence, 1 << 20, out var frame, out var consumed, out _));
            offset += (int)frame.Length;
            ends.Add(offset);
            sequence = sequence.Slice(consumed);
        }

        return ends;
    }

    [Fact]
    public void Fed_one_byte_at_a_time_it_is_between_frames_exactly_at_each_frame_end()
    {
        var bytes = Frames();
        var ends = Ends();
        var boundary = new FrameBoundary();
        Assert.False(boundary.InFrame);
        for (var i = 0; i < bytes.Length; i++)
        {
            boundary.Advance(bytes.AsSpan(i, 1));
            Assert.True(boundary.InFrame != ends.Contains(i + 1), $"after byte {i + 1}: InFrame {boundary.InFrame}");
        }
    }

    [Fact]
    public void Fed_in_random_splits_it_agrees_with_the_frame_reader()
    {
        var bytes = Frames();
        var ends = Ends();
        var random = new Random(19);
        for (var run = 0; run < 200; run++)
        {
            var boundary = new FrameBoundary();
            var offset = 0;
            while (offset < bytes.Length)
            {
                var count = Math.Min(bytes.Length - offset, random.Next(1, 600));
                boundary.Advance(bytes.AsSpan(offset, count));
                offset += count;
                Assert.True(boundary.InFrame != ends.Contains(offset), $"run {run}, after {offset} bytes");
            }
        }
    }

    [Fact]
    public void A_length_longer_than_four_bytes_stops_the_tracking_for_the_session_to_refuse()
    {
        var boundary = new FrameBoundary();
        boundary.Advance([0x30, 0xFF, 0xFF, 0xFF, 0xFF]);
        Assert.False(boundary.InFrame);
    }
}
