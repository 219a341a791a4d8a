using System.Globalization;
using System.Text;

namespace ChatBroker.Storage.Tests;

/// <summary>
/// DESIGN §3: once SENT is returned the message survives kill -9. A child process appends with
/// durability=sync from 32 concurrent callers across 50 conversations and prints each acknowledged
/// (conversation, seq); the test SIGKILLs it after a random number of acks, reopens the store and
/// checks every acknowledged message, gapless seqs, and that the next append continues each sequence.
/// All rounds share one store, so every round also recovers from the previous rounds' crashes.
/// </summary>
public sealed class CrashRecoveryTests : IDisposable
{
    private const int Conversations = 50;
    private const int Callers = 32;
    private readonly TempDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    [Fact]
    public async Task Acknowledged_messages_survive_SIGKILL_in_20_seeded_rounds()
    {
        var acked = new List<Ack>();
        for (var round = 1; round <= 20; round++)
        {
            var seed = 1000 + round;
            var random = new Random(seed);
            var killAfterAcks = random.Next(1, 3000);
            using (var child = CrashChildProcess.Start(_directory.Path, seed, round, Conversations, Callers))
            {
                await child.WaitForLineAsync(line => line.StartsWith("ready", StringComparison.Ordinal));
                var seen = 0;
                while (seen < killAfterAcks && await child.ReadLineAsync() is { } line)
                {
                    acked.Add(Ack.Parse(line, round));
                    seen++;
                }

                child.Kill();
                // Acks printed before the kill landed were durable too: collect them.
                while (await child.ReadLineAsync() is { } line)
                {
                    acked.Add(Ack.Parse(line, round));
                }
            }

            await VerifyAsync(acked, round);
        }
    }

    private async Task VerifyAsync(List<Ack> acked, int round)
    {
        using var store = RocksDbChatStore.Open(new StorageOptions
        {
            Path = _directory.Path,
            SweepInterval = Timeout.InfiniteTimeSpan,
            BlockCacheBytes = 4 << 20,
            WriteBufferBytes = 4 << 20,
        });

        // Read every conversation once; check every ack of every round so far against it.
        var stored = new Dictionary<(ulong, ulong), StoredMessage>();
        for (ulong c = 1; c <= Conversations; c++)
        {
            var last = store.GetLastSeq(c);
            var messages = store.ReadRange(c, 1, 10_000);
            Assert.Equal(Enumerable.Range(1, (int)last).Select(i => (ulong)i), messages.Select(m => m.Seq));
            foreach (var message in messages)
            {
                stored[(c, message.Seq)] = message;
            }
        }

        foreach (var ack in acked)
        {
            Assert.True(stored.TryGetValue((ack.Conversation, ack.Seq), out var message), $"round {round}: acknowledged {ack} is missing after SIGKILL");
            Assert.True(
                (ack.Sender, ack.Device, ack.N, ack.Body) == (message.SenderUserId, message.SenderDeviceId, message.ClientMsgId, Encoding.UTF8.GetString(message.Body.Span)),
                $"round {round}: acknowledged {ack} but the store holds {message.SenderUserId}/{message.SenderDeviceId} #{message.ClientMsgId} at that seq");
        }

        // The next append continues each sequence.
        for (ulong c = 1; c <= Conversations; c++)
        {
            var last = store.GetLastSeq(c);
            var next = await store.AppendAsync(Messages.To(c, "verifier", clientMsgId: ((ulong)round * 1000) + c, sender: "verifier", device: "v"));
            Assert.Equal(last + 1, next.Seq);
        }
    }

    private readonly record struct Ack(ulong Conversation, ulong Seq, string Sender, string Device, ulong N, string Body)
    {
        // "ack <conversation> <seq> <caller> <n> ."
        public static Ack Parse(string line, int round)
        {
            var parts = line.Split(' ');
            Assert.True(parts.Length == 6 && parts[0] == "ack", $"unexpected child output: {line}");
            var caller = int.Parse(parts[3], CultureInfo.InvariantCulture);
            var n = int.Parse(parts[4], CultureInfo.InvariantCulture);
            return new Ack(
                ulong.Parse(parts[1], CultureInfo.InvariantCulture),
                ulong.Parse(parts[2], CultureInfo.InvariantCulture),
                "caller" + caller,
                "r" + round,
                (ulong)n,
                $"message {n} from caller {caller} ".PadRight(64, '.'));
        }
    }
}
