using System.Text;
using ChatBroker.Storage;

namespace ChatBroker.Storage.CrashChild;

/// <summary>
/// Appends with durability=sync from many concurrent callers across many conversations until killed.
/// After each append's task completes (the message is durable) it prints
/// <c>ack &lt;conversation&gt; &lt;seq&gt; &lt;caller&gt; &lt;n&gt; .</c>; the body is <see cref="Body"/>(caller, n),
/// so the test can check the content. The trailing "." marks a complete line.
/// Usage: CrashChild &lt;path&gt; &lt;seed&gt; &lt;round&gt; [conversations] [callers]. The sender device is
/// "r&lt;round&gt;", so that client_msg_ids of different rounds on one store are distinct.
/// </summary>
internal static class Program
{
    public static async Task<int> Main(string[] args)
    {
        var path = args[0];
        var seed = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        var device = "r" + args[2];
        var conversations = args.Length > 3 ? int.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 50;
        var callers = args.Length > 4 ? int.Parse(args[4], System.Globalization.CultureInfo.InvariantCulture) : 32;

        using var store = RocksDbChatStore.Open(new StorageOptions
        {
            Path = path,
            Durability = Durability.Sync,
            BlockCacheBytes = 8 << 20,
            WriteBufferBytes = 8 << 20,
            SweepInterval = Timeout.InfiniteTimeSpan,
        });
        var output = Console.Out;
        output.WriteLine("ready .");
        output.Flush();

        var tasks = new Task[callers];
        for (var c = 0; c < callers; c++)
        {
            var caller = c;
            tasks[c] = Task.Run(async () =>
            {
                var random = new Random(HashCode.Combine(seed, caller));
                for (var n = 1; ; n++)
                {
                    var conversation = (ulong)random.Next(1, conversations + 1);
                    var result = await store.AppendAsync(new AppendRequest
                    {
                        ConversationId = conversation,
                        SenderUserId = "caller" + caller,
                        SenderDeviceId = device,
                        ClientMsgId = (ulong)n,
                        Body = Body(caller, n),
                    }).ConfigureAwait(false);
                    var line = $"ack {result.ConversationId} {result.Seq} {caller} {n} .";
                    lock (output)
                    {
                        output.WriteLine(line);
                        output.Flush();
                    }
                }
            });
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
        return 0;
    }

    public static byte[] Body(int caller, int n) => Encoding.UTF8.GetBytes($"message {n} from caller {caller} ".PadRight(64, '.'));
}
