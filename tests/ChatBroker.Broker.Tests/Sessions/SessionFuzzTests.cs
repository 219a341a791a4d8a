using System.Globalization;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>
/// Issue 18: a seeded random fuzzer for the session state machine. Each input is one connection to the real
/// DeviceSession (in-memory transport, real read loop, store and messaging core): a CONNECT (mostly valid), then a
/// few packets of every client type with random and hostile field values (reserved, empty and oversized ids, unknown
/// conversations, out-of-range enums, large bodies), sometimes raw mutated bytes, then a PING. Afterwards the
/// session is in one of two defined states: alive (PONG came, after no fatal ERROR), or closed (the last frame was a
/// CONNACK, ERROR or DISCONNECT with a closing reason code of docs/protocol.md §8, and the read loop ended without an
/// exception). At the end every connection was released and no session is left registered.
/// <para>
/// CI runs it for <see cref="DefaultSeconds"/> seconds; locally <c>CHATBROKER_SESSION_FUZZ_INPUTS=N</c> (and
/// <c>CHATBROKER_FUZZ_SEED</c>) run N inputs (docs/protocol.md, "Fuzzing").
/// </para>
/// </summary>
public sealed class SessionFuzzTests
{
    private const double DefaultSeconds = 3;

    private static readonly string[] Ids = ["alice", "bob", "carol", "", "#broker", new string('x', 129), "é", "dave"];

    private static string Id(Random r) => Ids[r.Next(Ids.Length)];

    private static ulong Number(Random r) => r.Next(6) switch
    {
        0 => 0,
        1 => ulong.MaxValue,
        2 => (ulong)r.NextInt64(),
        _ => (ulong)r.Next(1, 8),
    };

    private static IMessage RandomPacket(Random r, Func<ulong> conversation) => r.Next(16) switch
    {
        0 or 1 => new Send
        {
            ClientMsgId = Number(r),
            ConversationId = r.Next(2) == 0 ? conversation() : 0,
            ToUserId = r.Next(2) == 0 ? Id(r) : "",
            ContentType = (ContentType)r.Next(r.Next(2) == 0 ? 10 : 100),
            Body = ByteString.CopyFrom(new byte[r.Next(3) == 0 ? r.Next(66_000) : r.Next(64)]),
        },
        2 => new Ack { InboxSeq = Number(r), Conversations = { new ConversationCursor { ConversationId = conversation(), Seq = Number(r) } } },
        3 => new Read { ConversationId = conversation(), UpToSeq = Number(r) },
        4 => new Sync { RequestId = Number(r), InboxSeq = Number(r) },
        5 => new History { RequestId = Number(r), ConversationId = conversation(), BeforeSeq = Number(r), Limit = (uint)r.Next(1000) },
        6 => new GroupRequest { RequestId = Number(r), Create = new GroupCreate { Title = "t", MemberUserIds = { Id(r), Id(r) } } },
        7 => new GroupRequest { RequestId = Number(r), AddMembers = new GroupMembers { ConversationId = conversation(), UserIds = { Id(r) } } },
        8 => new GroupRequest { RequestId = Number(r), Leave = new GroupRef { ConversationId = conversation() } },
        9 => new PresenceSet { Status = (PresenceStatus)r.Next(6) },
        10 => new PresenceSubscribe { RequestId = Number(r), UserIds = { Id(r) }, Unsubscribe = r.Next(4) == 0 },
        11 => new Typing { ConversationId = conversation(), Stopped = r.Next(2) == 0 },
        12 => new KeysUpload
        {
            RequestId = Number(r),
            IdentityKey = ByteString.CopyFrom(new byte[r.Next(300)]),
            SignedPrekey = r.Next(2) == 0 ? null : new SignedPrekey { KeyId = 1, PublicKey = ByteString.CopyFrom(new byte[r.Next(300)]), Signature = ByteString.CopyFrom(new byte[r.Next(300)]) },
            OneTimePrekeys = { new OneTimePrekey { KeyId = (uint)r.Next(5), PublicKey = ByteString.CopyFrom(new byte[r.Next(40)]) } },
        },
        13 => new FetchKeys { RequestId = Number(r), UserId = Id(r) },
        14 => new Settings { RequestId = Number(r), SetPresenceVisibility = r.Next(2) == 0, PresenceVisibility = (PresenceVisibility)r.Next(4), AddContacts = { Id(r) } },
        _ => r.Next(3) switch { 0 => new Ping(), 1 => new Disconnect { Reason = ReasonCode.NormalDisconnect }, _ => new Connect { ProtocolVersion = 1, UserId = "alice", DeviceId = "x", Token = "t" } },
    };

    private static byte[] Frame(IMessage message)
    {
        var writer = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, message);
        return writer.WrittenSpan.ToArray();
    }

    private static byte[] Mangle(Random r, byte[] frame)
    {
        var copy = (byte[])frame.Clone();
        for (var n = r.Next(1, 4); n > 0 && copy.Length > 0; n--)
        {
            copy[r.Next(copy.Length)] = (byte)r.Next(256);
        }

        return r.Next(4) == 0 ? copy[..r.Next(copy.Length + 1)] : copy;
    }

    /// <summary>True when the stream holds a DISCONNECT that the session reads (a whole, valid frame in a valid
    /// place, before any frame the session refuses): a mangled frame can become one.</summary>
    private static bool SaysDisconnect(byte[] stream)
    {
        var state = new ProtocolStateMachine(ProtocolRole.Server);
        var buffer = new System.Buffers.ReadOnlySequence<byte>(stream);
        while (FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out var consumed, out _))
        {
            if (state.OnReceived(frame.Type) != ReasonCode.Success || !PacketDecoder.TryDecode(frame, out var message, out _))
            {
                return false;
            }

            if (message is Disconnect)
            {
                return true;
            }

            buffer = buffer.Slice(consumed);
        }

        return false;
    }

    private static readonly byte[] Padding = new byte[ProtocolConstants.DefaultMaxFrameSize + 8];

    private static async Task<IMessage?> ReceiveOrFailAsync(TestDevice device, string what)
    {
        try
        {
            return await device.ReceiveAsync();
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"{what}: neither answered the PING nor closed within {TestDevice.Timeout}");
            return null;
        }
    }

    [Fact]
    public async Task Random_packet_sequences_leave_every_session_alive_or_closed_with_a_documented_reason()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("CHATBROKER_FUZZ_SEED"), CultureInfo.InvariantCulture, out var s) ? s : 18;
        var inputs = int.TryParse(Environment.GetEnvironmentVariable("CHATBROKER_SESSION_FUZZ_INPUTS"), CultureInfo.InvariantCulture, out var n) ? n : 0;
        var deadline = Environment.TickCount64 + (long)(DefaultSeconds * 1000);
        var random = new Random(seed);
        var outcomes = new Dictionary<string, int>();
        await using var harness = new SessionHarness(o =>
        {
            o.Abuse.NewConversationsPerHour = 50; // reached now and then: its refusal is part of the space
            o.Presence.Debounce = TimeSpan.Zero;
        });
        var conversations = new List<ulong> { 1, 2, 3 };
        ulong Conversation() => random.Next(5) == 0 ? Number(random) : conversations[random.Next(conversations.Count)];

        var runs = 0;
        while (inputs > 0 ? runs < inputs : Environment.TickCount64 < deadline)
        {
            runs++;
            var user = Ids[random.Next(3)];
            var device = harness.Open();
            var sent = new List<string>();
            var connect = harness.ConnectPacket(user, "d" + random.Next(3));
            var choice = random.Next(10);
            var first = choice switch { 0 => Mangle(random, Frame(connect)), 1 => Frame(RandomPacket(random, Conversation)), _ => Frame(connect) };
            var stream = new List<byte>(first);
            sent.Add(choice switch { 0 => "mangled CONNECT", 1 => "random first packet", _ => "CONNECT" });
            for (var i = random.Next(1, 8); i > 0; i--)
            {
                var packet = RandomPacket(random, Conversation);
                var bytes = Frame(packet);
                stream.AddRange(random.Next(12) == 0 ? Mangle(random, bytes) : bytes);
                sent.Add(packet.Descriptor.Name);
            }

            stream.AddRange(Frame(new Ping()));
            var what = $"seed {seed} input {runs} ({string.Join(",", sent)})";
            // Written while the replies are read: a session whose replies the client does not take stops reading.
            // Then zeros, more than a frame's worth: a frame whose mangled length left it incomplete is completed by
            // them, and the next zero (packet type 0x00) ends the session with UNKNOWN_PACKET_TYPE, so every input
            // ends without waiting for a timeout. A session in step answers the PING first.
            stream.AddRange(Padding);
            var writing = device.Transport.ClientOutput.WriteAsync(stream.ToArray()).AsTask();

            // Read until PONG (alive) or the end of the stream (closed).
            IMessage? last = null;
            var fatalSeen = false;
            var alive = false;
            while (await ReceiveOrFailAsync(device, what) is { } message)
            {
                if (message is Pong && last is not Disconnect && !fatalSeen)
                {
                    alive = true;
                    break;
                }

                if (message is Error error)
                {
                    Assert.True(Enum.IsDefined(error.Reason), $"{what}: ERROR with undocumented reason {(int)error.Reason}");
                    fatalSeen |= ReasonCodes.IsFatal(error.Reason);
                }

                if (message is GroupResult { ConversationId: > 0 } result && conversations.Count < 64)
                {
                    conversations.Add(result.ConversationId);
                }

                if (message is Sent sentMessage && conversations.Count < 64)
                {
                    conversations.Add(sentMessage.ConversationId);
                }

                last = message;
            }

            if (alive)
            {
                // Defined state: a working session. The padding then ends it.
                while (await ReceiveOrFailAsync(device, what + " after the PONG") is not null)
                {
                }
                outcomes["alive"] = outcomes.GetValueOrDefault("alive") + 1;
            }
            else if (!fatalSeen && last is not Disconnect && (last is not Connack || ((Connack)last).Reason == ReasonCode.Success) && SaysDisconnect(stream.ToArray()))
            {
                // The client said DISCONNECT: the broker closes without a word (docs/protocol.md §5 DISCONNECT).
                outcomes["client_disconnect"] = outcomes.GetValueOrDefault("client_disconnect") + 1;
            }
            else
            {
                var reason = last switch
                {
                    Connack c => c.Reason,
                    Error e => e.Reason,
                    Disconnect d => d.Reason,
                    _ => (ReasonCode)(-1),
                };
                Assert.True(reason != ReasonCode.Success && (ReasonCodes.IsFatal(reason) || last is Disconnect),
                    $"{what}: closed after {last?.Descriptor.Name ?? "nothing"} {reason}; read loop: {(await device.Released.WaitAsync(TestDevice.Timeout))?.ToString() ?? "no failure"}");
                outcomes[reason.ToString()] = outcomes.GetValueOrDefault(reason.ToString()) + 1;
            }

            // The read loop ended without an exception of its own.
            await device.EndedAsync();
            // A session that closed early left the rest of the input unread: the write waits on the pipe's bound.
            device.Transport.ClientOutput.CancelPendingFlush();
            await writing.WaitAsync(TestDevice.Timeout);
        }

        Assert.Equal(0, harness.Context.Registry.SessionCount);
        Assert.True(outcomes.GetValueOrDefault("alive") > 0 && outcomes.Count > 3, string.Join(", ", outcomes));
        Console.WriteLine($"session fuzz: seed {seed}, {runs} inputs: " + string.Join(", ", outcomes.OrderBy(o => o.Key).Select(o => $"{o.Key} {o.Value}")));
    }
}
