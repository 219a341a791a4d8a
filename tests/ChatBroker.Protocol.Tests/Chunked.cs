using System.Buffers;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>A ReadOnlySequence made of separate segments, the way a PipeReader hands out data.</summary>
internal sealed class Segment : ReadOnlySequenceSegment<byte>
{
    public Segment(ReadOnlyMemory<byte> memory) => Memory = memory;

    public Segment Append(ReadOnlyMemory<byte> memory)
    {
        var next = new Segment(memory) { RunningIndex = RunningIndex + Memory.Length };
        Next = next;
        return next;
    }

    public static ReadOnlySequence<byte> Sequence(IReadOnlyList<ReadOnlyMemory<byte>> pieces)
    {
        if (pieces.Count == 0)
        {
            return ReadOnlySequence<byte>.Empty;
        }

        var first = new Segment(pieces[0]);
        var last = first;
        for (var i = 1; i < pieces.Count; i++)
        {
            last = last.Append(pieces[i]);
        }

        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }
}

/// <summary>
/// Feeds a byte stream to FrameReader in the given chunks, as a PipeReader loop would: unconsumed
/// bytes stay as separate segments and TryRead runs after every chunk.
/// </summary>
internal static class ChunkedReader
{
    public sealed record Decoded(PacketType Type, FrameFlags Flags, byte[] Body, IMessage? Message);

    public static (List<Decoded> Frames, ReasonCode Error) Feed(
        byte[] data, IReadOnlyList<int> chunkLengths, int maxFrameSize = ProtocolConstants.DefaultMaxFrameSize, List<int>? readsPerChunk = null)
    {
        var frames = new List<Decoded>();
        var pending = new List<ReadOnlyMemory<byte>>();
        var offset = 0;
        foreach (var chunkLength in chunkLengths)
        {
            pending.Add(data.AsMemory(offset, chunkLength));
            offset += chunkLength;
            var reads = 0;
            while (true)
            {
                var buffer = Segment.Sequence(pending);
                if (!FrameReader.TryRead(buffer, maxFrameSize, out var frame, out var consumed, out var error))
                {
                    if (error != ReasonCode.Success)
                    {
                        return (frames, error);
                    }

                    break;
                }

                reads++;
                PacketDecoder.TryDecode(frame, out var message, out _);
                frames.Add(new Decoded(frame.Type, frame.Flags, frame.Body.ToArray(), message));
                Drop(pending, buffer.Slice(buffer.Start, consumed).Length);
            }

            readsPerChunk?.Add(reads);
        }

        return (frames, FrameReader.CheckEndOfStream(Segment.Sequence(pending)));
    }

    public static List<int> RandomSplits(int total, Random random, int maxChunk)
    {
        var chunks = new List<int>();
        var left = total;
        while (left > 0)
        {
            var n = Math.Min(left, random.Next(1, maxChunk + 1));
            chunks.Add(n);
            left -= n;
        }

        return chunks;
    }

    private static void Drop(List<ReadOnlyMemory<byte>> pending, long count)
    {
        while (count > 0)
        {
            if (pending[0].Length <= count)
            {
                count -= pending[0].Length;
                pending.RemoveAt(0);
            }
            else
            {
                pending[0] = pending[0][(int)count..];
                count = 0;
            }
        }
    }
}
