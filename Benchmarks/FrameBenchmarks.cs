using System.Buffers;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Benchmarks;

/// <summary>
/// The codec's hot paths: cutting SEND/DELIVER frames out of a buffer, parsing them, writing them.
/// Ids are realistic (client_msg_id ~2^40, conversation id ~2^32), bodies 100 bytes. Each category
/// has a baseline so the figures can be read as ratios on a noisy machine.
/// </summary>
[MemoryDiagnoser]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class FrameBenchmarks
{
    private const int BodyLength = 100;

    private readonly ArrayBufferWriter<byte> _writer = new(64 * 1024);
    private byte[] _body = [];
    private ReadOnlySequence<byte> _sendFrame;
    private ReadOnlySequence<byte> _deliverFrame;
    private Send _send = new();
    private Deliver _deliver = new();
    private DeliverFields _deliverFields;

    [GlobalSetup]
    public void Setup()
    {
        _body = new byte[BodyLength];
        new Random(42).NextBytes(_body);

        _send = new Send
        {
            ClientMsgId = (1UL << 40) + 12_345,
            ConversationId = (1UL << 32) + 7,
            Body = ByteString.CopyFrom(_body),
        };
        _deliverFields = new DeliverFields
        {
            ConversationId = (1UL << 32) + 7,
            Seq = 100_000,
            SenderUserId = "u1234567",
            SenderDeviceId = "d1",
            TimestampMs = 1_764_096_000_123,
            InboxSeq = 1_000_000,
        };
        _deliver = ToDeliver(_deliverFields, _body);

        var writer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, _send);
        _sendFrame = new ReadOnlySequence<byte>(writer.WrittenSpan.ToArray());
        writer.ResetWrittenCount();
        FrameWriter.Write(writer, _deliver);
        _deliverFrame = new ReadOnlySequence<byte>(writer.WrittenSpan.ToArray());
    }

    [Benchmark(Baseline = true)]
    [BenchmarkCategory("Read SEND")]
    public long ReadSendHeaderAndSlice()
    {
        FrameReader.TryRead(_sendFrame, ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _);
        return frame.Body.Length;
    }

    [Benchmark]
    [BenchmarkCategory("Read SEND")]
    public ulong ReadAndParseSend()
    {
        FrameReader.TryRead(_sendFrame, ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _);
        PacketDecoder.TryDecode(frame, out var message, out _);
        return ((Send)message!).ClientMsgId;
    }

    [Benchmark(Baseline = true)]
    [BenchmarkCategory("Read DELIVER")]
    public long ReadDeliverHeaderAndSlice()
    {
        FrameReader.TryRead(_deliverFrame, ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _);
        return frame.Body.Length;
    }

    [Benchmark]
    [BenchmarkCategory("Read DELIVER")]
    public ulong ReadAndParseDeliver()
    {
        FrameReader.TryRead(_deliverFrame, ProtocolConstants.DefaultMaxFrameSize, out var frame, out _, out _);
        PacketDecoder.TryDecode(frame, out var message, out _);
        return ((Deliver)message!).Seq;
    }

    [Benchmark(Baseline = true)]
    [BenchmarkCategory("Write SEND")]
    public int WriteSend()
    {
        _writer.ResetWrittenCount();
        return FrameWriter.Write(_writer, _send);
    }

    /// <summary>Generic writer, message already built (e.g. re-sending a cached Deliver).</summary>
    [Benchmark]
    [BenchmarkCategory("Write DELIVER")]
    public int WriteDeliverGenericPrebuilt()
    {
        _writer.ResetWrittenCount();
        return FrameWriter.Write(_writer, _deliver);
    }

    /// <summary>Generic writer from stored bytes: what the broker would do without DeliverWriter.</summary>
    [Benchmark(Baseline = true)]
    [BenchmarkCategory("Write DELIVER")]
    public int WriteDeliverGenericFromStoredBytes()
    {
        _writer.ResetWrittenCount();
        return FrameWriter.Write(_writer, ToDeliver(_deliverFields, _body));
    }

    [Benchmark]
    [BenchmarkCategory("Write DELIVER")]
    public int WriteDeliverHandRolled()
    {
        _writer.ResetWrittenCount();
        return DeliverWriter.Write(_writer, _deliverFields, _body);
    }

    private static Deliver ToDeliver(in DeliverFields fields, byte[] body) => new()
    {
        ConversationId = fields.ConversationId,
        Seq = fields.Seq,
        SenderUserId = fields.SenderUserId,
        SenderDeviceId = fields.SenderDeviceId,
        TimestampMs = fields.TimestampMs,
        ContentType = fields.ContentType,
        Body = ByteString.CopyFrom(body),
        InboxSeq = fields.InboxSeq,
    };
}
