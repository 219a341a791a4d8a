using System.Buffers;
using System.IO.Pipelines;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>The codec over a real <see cref="Pipe"/>, with the read loop of Protocol/README.md.</summary>
public class PipeLoopTests
{
    private static async Task<(List<(PacketType Type, FrameFlags Flags, IMessage Message)> Frames, ReasonCode Error)> ReadAll(PipeReader input)
    {
        var frames = new List<(PacketType, FrameFlags, IMessage)>();
        while (true)
        {
            var result = await input.ReadAsync();
            var buffer = result.Buffer;
            var error = ReasonCode.Success;
            while (FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out var consumed, out error))
            {
                if (!PacketDecoder.TryDecode(frame, out var message, out error))
                {
                    break;
                }

                frames.Add((frame.Type, frame.Flags, message));
                buffer = buffer.Slice(consumed);
            }

            if (error != ReasonCode.Success)
            {
                await input.CompleteAsync();
                return (frames, error);
            }

            input.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                var end = FrameReader.CheckEndOfStream(buffer);
                await input.CompleteAsync();
                return (frames, end);
            }
        }
    }

    [Fact]
    public async Task Frames_batched_into_a_pipe_writer_and_flushed_once_are_read_back_in_order()
    {
        // Small segments so that frames straddle segment boundaries on the reading side.
        var pipe = new Pipe(new PipeOptions(minimumSegmentSize: 32, pauseWriterThreshold: 0));
        var expected = new List<IMessage>();
        foreach (var message in Samples.All())
        {
            FrameWriter.Write(pipe.Writer, message);
            expected.Add(message);
        }

        var deliver = Samples.All().OfType<Deliver>().Single();
        var fields = new DeliverFields { ConversationId = deliver.ConversationId, Seq = deliver.Seq, SenderUserId = deliver.SenderUserId, SenderDeviceId = deliver.SenderDeviceId, TimestampMs = deliver.TimestampMs, InboxSeq = deliver.InboxSeq };
        DeliverWriter.Write(pipe.Writer, fields, deliver.Body.Span, FrameFlags.Dup);
        expected.Add(deliver);

        await pipe.Writer.FlushAsync();
        await pipe.Writer.CompleteAsync();

        var (frames, error) = await ReadAll(pipe.Reader);
        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(expected, frames.Select(f => f.Message));
        Assert.Equal(FrameFlags.Dup, frames[^1].Flags);
    }

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    public async Task Bytes_trickling_into_a_pipe_in_random_pieces_decode_identically(int seed)
    {
        var data = Samples.Stream(out var expected);
        var pipe = new Pipe(new PipeOptions(minimumSegmentSize: 16, pauseWriterThreshold: 0));
        var reading = ReadAll(pipe.Reader);

        var random = new Random(seed);
        var offset = 0;
        while (offset < data.Length)
        {
            var n = Math.Min(data.Length - offset, random.Next(1, 40));
            await pipe.Writer.WriteAsync(data.AsMemory(offset, n));
            offset += n;
        }

        await pipe.Writer.CompleteAsync();
        var (frames, error) = await reading;

        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(expected.Select(e => (e.Type, e.Flags, e.Message)), frames);
    }

    [Fact]
    public async Task Stream_ending_inside_a_frame_is_TruncatedFrame()
    {
        var data = Samples.Stream(out _);
        var pipe = new Pipe();
        await pipe.Writer.WriteAsync(data.AsMemory(0, data.Length - 5));
        await pipe.Writer.CompleteAsync();

        var (_, error) = await ReadAll(pipe.Reader);
        Assert.Equal(ReasonCode.TruncatedFrame, error);
    }
}
