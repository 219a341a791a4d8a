using System.Buffers;
using System.Globalization;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests.Fuzz;

/// <summary>
/// A seeded random fuzzer for the broker's inbound path (frame reader, state machine, decoder, validator: what
/// DeviceSession runs before it handles a packet). Inputs are mutations of the committed corpus (corpus.txt) and of
/// every sample packet: bit flips, byte changes, inserted and deleted runs, splices of two inputs, tampered lengths,
/// truncation. Each input runs whole and in a random chunking; the run must not throw, must end in a reason code of
/// §8 that closes (or Success), must give the same verdict in any chunking, must allocate within a bound set by the
/// input's length (never by a declared length), and must leave the state machine Closed after every error.
/// <para>
/// In CI it runs for <see cref="DefaultSeconds"/> seconds. Locally: <c>CHATBROKER_FUZZ_INPUTS=10000000 dotnet test
/// tests/ChatBroker.Protocol.Tests -c Release --filter FullyQualifiedName~Fuzz</c> (and <c>CHATBROKER_FUZZ_SEED</c>
/// to replay a seed); the figure is in docs/protocol.md, "Fuzzing". A failure names the seed and the input's hex.
/// </para>
/// </summary>
public sealed class FuzzTests
{
    private const double DefaultSeconds = 3;
    private const int MaxFrame = ProtocolConstants.DefaultMaxFrameSize;

    // Allocation bound per input: protobuf's parse copies strings and bytes (≤ the input), the message objects and
    // the chunk segments; nothing may be sized by a declared length.
    private static long AllocationBound(int inputLength) => 64 * 1024 + (16L * inputLength);

    private static readonly ReasonCode[] Closing =
    [
        ReasonCode.MalformedLength, ReasonCode.FrameTooLarge, ReasonCode.UnknownPacketType, ReasonCode.InvalidFlags,
        ReasonCode.MalformedBody, ReasonCode.MissingField, ReasonCode.InvalidField, ReasonCode.ProtocolViolation,
        ReasonCode.UnsupportedVersion, ReasonCode.TruncatedFrame,
    ];

    internal static List<byte[]> LoadCorpus()
    {
        var corpus = new List<byte[]>();
        foreach (var raw in File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "Fuzz", "corpus.txt")))
        {
            var line = raw.Split('#')[0].Trim();
            if (line.Length > 0)
            {
                corpus.Add(line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(h => byte.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToArray());
            }
        }

        var connect = corpus[0];
        foreach (var message in Samples.All())
        {
            var writer = new ArrayBufferWriter<byte>();
            FrameWriter.Write(writer, message);
            corpus.Add(message is Connect ? writer.WrittenSpan.ToArray() : [.. connect, .. writer.WrittenSpan]);
        }

        return corpus;
    }

    internal static byte[] Mutate(Random random, List<byte[]> corpus)
    {
        var input = new List<byte>(corpus[random.Next(corpus.Count)]);
        var rounds = 1 + random.Next(4);
        for (var r = 0; r < rounds; r++)
        {
            var at = input.Count == 0 ? 0 : random.Next(input.Count);
            switch (random.Next(8))
            {
                case 0 when input.Count > 0:
                    input[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 1 when input.Count > 0:
                    input[at] = (byte)random.Next(256);
                    break;
                case 2:
                    for (var n = random.Next(1, 9); n > 0; n--)
                    {
                        input.Insert(at, (byte)random.Next(256));
                    }

                    break;
                case 3 when input.Count > 0:
                    input.RemoveRange(at, Math.Min(input.Count - at, random.Next(1, 9)));
                    break;
                case 4:
                    var other = corpus[random.Next(corpus.Count)];
                    var from = random.Next(other.Length);
                    input.InsertRange(at, other.AsSpan(from, Math.Min(other.Length - from, random.Next(1, 64))).ToArray());
                    break;
                case 5 when input.Count > 2:
                    // A length byte: interesting values around varint and limit edges.
                    input[1 + random.Next(Math.Min(4, input.Count - 1))] = (byte)(random.Next(4) switch { 0 => 0x7F, 1 => 0x80, 2 => 0xFF, _ => 0x00 });
                    break;
                case 6 when input.Count > 0:
                    input.RemoveRange(at, input.Count - at);
                    break;
                default:
                    // A packet type byte of any value, flags included.
                    if (input.Count > 0)
                    {
                        input[random.Next(Math.Min(input.Count, 40))] = (byte)random.Next(256);
                    }

                    break;
            }
        }

        return [.. input];
    }

    /// <summary>The server's inbound path over <paramref name="data"/> in the given chunks: the verdict, the number of
    /// packets accepted, and the state the machine ended in.</summary>
    internal static (ReasonCode Error, int Accepted, ConnectionState State) Run(byte[] data, ReadOnlySpan<int> chunks)
    {
        var state = new ProtocolStateMachine(ProtocolRole.Server);
        var pending = new List<ReadOnlyMemory<byte>>();
        var offset = 0;
        var accepted = 0;
        foreach (var chunk in chunks)
        {
            pending.Add(data.AsMemory(offset, chunk));
            offset += chunk;
            var buffer = Segment.Sequence(pending);
            var error = ReasonCode.Success;
            while (FrameReader.TryRead(buffer, MaxFrame, out var frame, out var consumed, out error))
            {
                error = state.OnReceived(frame.Type);
                if (error != ReasonCode.Success || !PacketDecoder.TryDecode(frame, out _, out error))
                {
                    break;
                }

                accepted++;
                buffer = buffer.Slice(consumed);
            }

            if (error != ReasonCode.Success)
            {
                state.Close(); // what the session does before it answers
                return (error, accepted, state.State);
            }

            pending.Clear();
            if (!buffer.IsEmpty)
            {
                pending.Add(buffer.ToArray());
            }
        }

        var end = FrameReader.CheckEndOfStream(Segment.Sequence(pending));
        if (end != ReasonCode.Success)
        {
            state.Close();
        }

        return (end, accepted, state.State);
    }

    private static int Budget(out double seconds, out int seed)
    {
        seed = int.TryParse(Environment.GetEnvironmentVariable("CHATBROKER_FUZZ_SEED"), CultureInfo.InvariantCulture, out var s) ? s : 18;
        seconds = double.TryParse(Environment.GetEnvironmentVariable("CHATBROKER_FUZZ_SECONDS"), CultureInfo.InvariantCulture, out var t) ? t : DefaultSeconds;
        return int.TryParse(Environment.GetEnvironmentVariable("CHATBROKER_FUZZ_INPUTS"), CultureInfo.InvariantCulture, out var n) ? n : 0;
    }

    [Fact]
    public void Mutated_inputs_never_crash_allocate_by_declared_length_or_leave_the_state_undefined()
    {
        var inputs = Budget(out var seconds, out var seed);
        var random = new Random(seed);
        var corpus = LoadCorpus();
        var deadline = inputs > 0 ? long.MaxValue : Environment.TickCount64 + (long)(seconds * 1000);
        var chunks = new int[64];
        long runs = 0;
        var verdicts = new Dictionary<ReasonCode, long>();
        while (inputs > 0 ? runs < inputs : Environment.TickCount64 < deadline)
        {
            var data = Mutate(random, corpus);
            runs++;
            try
            {
                var before = GC.GetAllocatedBytesForCurrentThread();
                var whole = Run(data, [data.Length]);
                var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                if (allocated > AllocationBound(data.Length))
                {
                    Assert.Fail($"seed {seed} input {runs}: {allocated} bytes allocated for a {data.Length}-byte input: {Convert.ToHexString(data)}");
                }

                if (whole.Error != ReasonCode.Success && (Array.IndexOf(Closing, whole.Error) < 0 || whole.State != ConnectionState.Closed))
                {
                    Assert.Fail($"seed {seed} input {runs}: {whole.Error} leaves state {whole.State}: {Convert.ToHexString(data)}");
                }

                if (whole.Error == ReasonCode.Success && whole.State == ConnectionState.Closed && whole.Accepted == 0)
                {
                    Assert.Fail($"seed {seed} input {runs}: closed without a reason: {Convert.ToHexString(data)}");
                }

                // The same verdict in any chunking (one input in eight: chunked runs cost more).
                if ((runs & 7) == 0 && data.Length > 1)
                {
                    var count = 0;
                    for (var left = data.Length; left > 0 && count < chunks.Length;)
                    {
                        var take = count == chunks.Length - 1 ? left : Math.Min(left, 1 + random.Next(Math.Min(left, 16)));
                        chunks[count++] = take;
                        left -= take;
                    }

                    var split = Run(data, chunks.AsSpan(0, count));
                    if (split != whole)
                    {
                        Assert.Fail($"seed {seed} input {runs}: whole {whole}, chunked {split}: {Convert.ToHexString(data)}");
                    }
                }

                verdicts[whole.Error] = verdicts.GetValueOrDefault(whole.Error) + 1;
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"seed {seed} input {runs}: {e.GetType().Name} {e.Message}: {Convert.ToHexString(data)}");
            }
        }

        // The run reached more than the happy path: every kind of frame-level refusal turned up.
        Assert.True(runs > 1000, $"only {runs} inputs ran");
        foreach (var code in new[] { ReasonCode.Success, ReasonCode.MalformedLength, ReasonCode.UnknownPacketType, ReasonCode.MalformedBody, ReasonCode.ProtocolViolation, ReasonCode.TruncatedFrame })
        {
            Assert.True(verdicts.ContainsKey(code), $"no input ended in {code} in {runs} runs");
        }

        Console.WriteLine($"protocol fuzz: seed {seed}, {runs} inputs: " + string.Join(", ", verdicts.OrderBy(v => v.Key).Select(v => $"{v.Key} {v.Value}")));
    }
}
