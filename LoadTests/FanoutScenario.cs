using System.Diagnostics;
using ChatBroker.LoadTests.Cluster;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// `fanout`: one sender into a group of K members (--members, default 1,024), every member online with one
/// raw connection. The group is above fanout.write_threshold, so each message is stored once and pushed to
/// the K−1 other members' devices straight from memory. The sender runs closed loop with --window messages
/// in flight (a credit comes back when the message's SENT arrives and the last member has it). Throughput is
/// deliveries per second (messages × receiving devices); latency is the body stamp → DELIVER at each member.
/// Every member checks the group's seqs run without gap or repeat.
/// </summary>
public sealed class FanoutScenario(RunOptions options)
{
    public async Task<RunResult> RunAsync()
    {
        await using var broker = await options.OpenBrokersAsync().ConfigureAwait(false);
        var k = options.Members;
        var result = new RunResult
        {
            Scenario = "fanout",
            Parameters = options.Describe("members", "window", "body_size", "duration_s", "durability"),
            Broker = broker.Describe(options),
        };
        var stats = new LoadStats();
        var runId = Guid.NewGuid().ToString("N")[..8];
        using var stopAll = new CancellationTokenSource();
        var users = new string[k];
        for (var i = 0; i < k; i++)
        {
            users[i] = $"fan-{runId}-{i}";
        }

        Console.WriteLine($"connecting {k} members ...");
        var connections = new RawConnection[k];
        var next = -1;
        var connectors = new Task[32];
        for (var w = 0; w < connectors.Length; w++)
        {
            connectors[w] = Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < k)
                {
                    // In a cluster the members are spread round robin, so the group's deliveries cross the mesh.
                    var node = broker.EndPoint(ClusterPlacement.Member(i, broker.Count));
                    var c = await RawConnection.ConnectAsync(node, options.SourceAddress(node, i), 256 * 1024, stopAll.Token).ConfigureAwait(false);
                    var connack = await c.LoginAsync(Wire.Connect(users[i], "d1", broker.Token(users[i], "d1"), 0, 1800), stopAll.Token).ConfigureAwait(false);
                    if (connack.Reason != ReasonCode.Success)
                    {
                        throw new InvalidOperationException($"login of {users[i]} failed: {connack.Reason} {connack.Message}");
                    }

                    connections[i] = c;
                }
            });
        }

        await Task.WhenAll(connectors).ConfigureAwait(false);

        var window = new SendWindow(options.Window);
        var sender = new SenderHandler(window, stats);
        var members = new MemberHandler[k - 1];
        var loops = new List<Task> { Task.Run(() => connections[0].ReceiveLoopAsync(sender, stopAll.Token)) };
        for (var i = 1; i < k; i++)
        {
            var member = members[i - 1] = new MemberHandler(stats, connections[i], sender);
            var connection = connections[i];
            loops.Add(Task.Run(() => connection.ReceiveLoopAsync(member, stopAll.Token)));
        }

        // The creator adds everyone; the group's first message (seq 1) is its GROUP_CREATED SYSTEM message.
        var create = new GroupRequest { RequestId = 1, Create = new GroupCreate { Title = "fanout " + runId } };
        for (var i = 1; i < k; i++)
        {
            create.Create.MemberUserIds.Add(users[i]);
        }

        await connections[0].SendAsync(Wire.Frame(create), stopAll.Token).ConfigureAwait(false);
        var conversationId = await sender.Created.Task.WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
        foreach (var m in members)
        {
            m.Start(conversationId);
        }

        sender.Members = members;
        var brokerBefore = await broker.ScrapeAsync().ConfigureAwait(false);
        var clock = Stopwatch.StartNew();
        using var stop = new CancellationTokenSource(options.Duration);
        var sending = SendAsync(connections[0], conversationId, window, stats, stop.Token);
        var drained = DrainAsync(sending, sender, members, clock);
        var progress = new LiveProgress("fanout", "deliveries", stats, () => $"messages {Volatile.Read(ref stats.Acked):N0}");
        await progress.RunAsync(drained).ConfigureAwait(false);
        var elapsed = await drained.ConfigureAwait(false);
        var scrape = await broker.ScrapeAsync().ConfigureAwait(false);
        await stopAll.CancelAsync().ConfigureAwait(false);
        foreach (var c in connections)
        {
            c.Close();
        }

        await Task.WhenAll(loops).ConfigureAwait(false);

        var messages = Volatile.Read(ref stats.Acked);
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
        result.Sent = Volatile.Read(ref stats.Sent);
        result.SentAcked = messages;
        result.Delivered = Volatile.Read(ref stats.Completed);
        result.Errors = Volatile.Read(ref stats.Errors);
        result.Gaps = Volatile.Read(ref stats.Gaps);
        result.Duplicates = Volatile.Read(ref stats.Duplicates);
        result.Lost = Math.Max(0, (result.Sent * (k - 1)) - result.Delivered - (result.Errors * (k - 1)));
        result.ThroughputPerS = Math.Round(result.Delivered / elapsed.TotalSeconds, 1);
        result.ThroughputUnit = "deliveries (messages × receiving devices)";
        result.LatencyMs = stats.Latency.Total().Summarize();
        result.Series = progress.Series;
        result.Figures["messages_per_s"] = Math.Round(messages / elapsed.TotalSeconds, 1);
        result.Figures["members"] = k;
        if (scrape is not null && brokerBefore is not null)
        {
            var brokerCpu = scrape.CpuSeconds - brokerBefore.CpuSeconds;
            result.Figures["broker_cpu_cores"] = Math.Round(brokerCpu / elapsed.TotalSeconds, 2);
            result.Figures["broker_cpu_us_per_delivery"] = Math.Round(brokerCpu * 1e6 / Math.Max(1, result.Delivered), 3);
            result.Figures["broker_rss_mb_end"] = Math.Round(scrape.ResidentBytes / 1048576.0, 1);
        }

        result.AddTarget("fanout deliveries/s", result.ThroughputPerS, ">=", 300_000);
        result.Notes.Add("latency: body stamp just before the sender's socket write → DELIVER parsed at each member (so a message's p99 is its slowest members)");
        result.Notes.Add("a credit returns to the sender when its SENT arrived and every member has the message");
        return result;
    }

    private static async Task SendAsync(RawConnection connection, ulong conversationId, SendWindow window, LoadStats stats, CancellationToken stop)
    {
        var buffer = new byte[64 * Wire.MaxSendLength(256)];
        ulong id = 0;
        try
        {
            while (!stop.IsCancellationRequested)
            {
                var n = await window.TakeAsync(64, stop).ConfigureAwait(false);
                var length = 0;
                var stamp = LoadStats.Now();
                for (var i = 0; i < n; i++)
                {
                    ++id;
                    length += Wire.WriteSend(buffer.AsSpan(length), id, conversationId, default, stamp, id, 256);
                }

                Interlocked.Add(ref stats.Sent, n);
                await connection.SendAsync(buffer.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static async Task<TimeSpan> DrainAsync(Task sending, SenderHandler sender, MemberHandler[] members, Stopwatch clock)
    {
        await sending.ConfigureAwait(false);
        var deadline = clock.Elapsed + TimeSpan.FromSeconds(15);
        while (clock.Elapsed < deadline)
        {
            var sent = Volatile.Read(ref sender.Stats.Sent);
            var settled = Volatile.Read(ref sender.Stats.Acked) >= sent;
            foreach (var m in members)
            {
                settled &= m.Received >= sent;
            }

            if (settled)
            {
                break;
            }

            await Task.Delay(5).ConfigureAwait(false);
        }

        return clock.Elapsed;
    }

    /// <summary>
    /// The sender: GROUP_RESULT names the group; credits return when a message has its SENT and (counted over
    /// all members together) every member has it. Checked on both sides, so whichever arrives last frees it.
    /// </summary>
    private sealed class SenderHandler(SendWindow window, LoadStats stats) : IFrameHandler
    {
        private readonly Lock _lock = new();
        private long _acked;
        private long _returned;
        private long _deliveries;

        public TaskCompletionSource<ulong> Created { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public LoadStats Stats => stats;

        public MemberHandler[] Members { get; set; } = [];

        public void OnFrame(PacketType type, ReadOnlySpan<byte> body)
        {
            switch (type)
            {
                case PacketType.GroupResult:
                    Created.TrySetResult(GroupResult.Parser.ParseFrom(body).ConversationId);
                    break;
                case PacketType.Sent:
                    Interlocked.Increment(ref _acked);
                    Interlocked.Increment(ref stats.Acked);
                    break;
                case PacketType.Error:
                    Interlocked.Increment(ref stats.Errors);
                    Console.Error.WriteLine("sender: ERROR " + Error.Parser.ParseFrom(body));
                    break;
            }
        }

        public void OnReadDrained() => ReturnCredits();

        /// <summary>A member received <paramref name="n"/> more of the group's messages.</summary>
        public void Delivered(long n)
        {
            Interlocked.Add(ref _deliveries, n);
            ReturnCredits();
        }

        private void ReturnCredits()
        {
            var members = Math.Max(1, Members.Length);
            var complete = Math.Min(Volatile.Read(ref _acked), Volatile.Read(ref _deliveries) / members);
            int free;
            lock (_lock)
            {
                free = (int)(complete - _returned);
                if (free <= 0)
                {
                    return;
                }

                _returned = complete;
            }

            window.Return(free);
        }
    }

    /// <summary>A member device: checks the group's seqs (seq 1 is the GROUP_CREATED message) and ACKs its inbox.</summary>
    private sealed class MemberHandler(LoadStats stats, RawConnection connection, SenderHandler sender) : IFrameHandler
    {
        private long _unreported;
        private readonly byte[] _ack = new byte[16];
        private ulong _group;
        private ulong _expected = 2;
        private ulong _inboxSeq;
        private ulong _ackedInboxSeq;
        private long _received;

        public long Received => Volatile.Read(ref _received);

        public void Start(ulong group) => Volatile.Write(ref _group, group);

        public void OnFrame(PacketType type, ReadOnlySpan<byte> body)
        {
            if (type != PacketType.Deliver)
            {
                if (type is PacketType.Disconnect or PacketType.Error)
                {
                    Interlocked.Increment(ref stats.Errors);
                }

                return;
            }

            var now = LoadStats.Now();
            if (!Wire.TryReadDeliver(body, out var deliver))
            {
                Interlocked.Increment(ref stats.Errors);
                return;
            }

            _inboxSeq = Math.Max(_inboxSeq, deliver.InboxSeq);
            if (deliver.InboxSeq != 0 || deliver.ConversationId != Volatile.Read(ref _group))
            {
                return; // the GROUP_CREATED SYSTEM message comes through the inbox
            }

            if (deliver.Seq < _expected)
            {
                Interlocked.Increment(ref stats.Duplicates);
                return;
            }

            if (deliver.Seq > _expected)
            {
                Interlocked.Add(ref stats.Gaps, (long)(deliver.Seq - _expected));
            }

            _expected = deliver.Seq + 1;
            Interlocked.Increment(ref _received);
            _unreported++;
            stats.RecordDelivery(Wire.ReadStamp(deliver.Body), now);
        }

        public void OnReadDrained()
        {
            if (_unreported > 0)
            {
                sender.Delivered(_unreported);
                _unreported = 0;
            }

            if (_inboxSeq > _ackedInboxSeq)
            {
                _ackedInboxSeq = _inboxSeq;
                connection.Send(_ack.AsSpan(0, Wire.WriteAck(_ack, _inboxSeq)));
            }
        }
    }
}
