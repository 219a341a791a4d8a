using System.Diagnostics;
using System.Text;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// `resume`: M messages are stored for a device that is offline (another device of the same user stays online
/// during the fill, so the broker queues no push job per message), then that device reconnects with
/// resume_inbox_seq = 0 and drains the backlog. Measured: CONNECT sent → SYNC_DONE, messages/s drained, and
/// that inbox positions and conversation seqs arrive complete, in order, once each. The device ACKs in
/// batches (every 100 messages or 50 ms) as a phone would.
/// </summary>
public sealed class ResumeScenario(RunOptions options)
{
    public async Task<RunResult> RunAsync()
    {
        var total = options.Count > 0 ? options.Count : 200_000;
        await using var broker = await options.OpenBrokerAsync().ConfigureAwait(false);
        var result = new RunResult
        {
            Scenario = "resume",
            Parameters = options.Describe("count", "body_size", "durability"),
            Broker = options.DescribeBroker(broker),
            ThroughputUnit = "messages drained",
        };
        result.Parameters["count"] = total.ToString(System.Globalization.CultureInfo.InvariantCulture);
        result.Parameters["fill_window"] = Math.Max(options.Window, 256).ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (options.WarmupSeconds > 0)
        {
            // A separate, smaller backlog first, so the drain path (store reads, DELIVER writes) is JIT-compiled.
            Console.WriteLine("warm-up: 20,000 messages stored and drained for another user, not measured ...");
            await RoundAsync(broker, 20_000, null).ConfigureAwait(false);
        }

        await RoundAsync(broker, total, result).ConfigureAwait(false);
        return result;
    }

    /// <summary>Fills a fresh user's inbox with <paramref name="total"/> messages and drains it with a new device; reports into <paramref name="result"/> when given.</summary>
    private async Task RoundAsync(BrokerLauncher broker, long total, RunResult? result)
    {
        var runId = Guid.NewGuid().ToString("N")[..8];
        var sender = $"resume-{runId}-s";
        var receiver = $"resume-{runId}-r";
        using var stop = new CancellationTokenSource();

        // Fill: one sender, a window of SENDs awaiting SENT; the receiver's desktop reads live and ACKs.
        var fillStats = new LoadStats();
        using var desktop = await LoginAsync(broker, receiver, "desktop", 0).ConfigureAwait(false);
        var desktopHandler = new DrainHandler(desktop, fillStats, recordLatency: false);
        var desktopLoop = Task.Run(() => desktop.ReceiveLoopAsync(desktopHandler, stop.Token));
        using var senderConnection = await LoginAsync(broker, sender, "d1", 0).ConfigureAwait(false);
        var fillClock = Stopwatch.StartNew();
        await FillAsync(senderConnection, receiver, total, Math.Max(options.Window, 256), options.BodySize, fillStats, stop.Token).ConfigureAwait(false);
        var fillSeconds = fillClock.Elapsed.TotalSeconds;
        while (Volatile.Read(ref fillStats.Completed) < total && fillClock.Elapsed < TimeSpan.FromSeconds(fillSeconds + 30))
        {
            await Task.Delay(10).ConfigureAwait(false);
        }

        Console.WriteLine($"stored {total:N0} messages in {fillSeconds:0.0} s ({total / fillSeconds:N0}/s); the phone reconnects ...");
        await Task.Delay(1000).ConfigureAwait(false);

        // Drain: the phone was never online, so its cursor is 0 and the whole inbox is its backlog.
        var stats = new LoadStats();
        var brokerBefore = result is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);
        var harnessCpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        var connectStamp = LoadStats.Now();
        using var phone = await LoginAsync(broker, receiver, "phone", 0).ConfigureAwait(false);
        var connackMs = clock.Elapsed.TotalMilliseconds;
        var handler = new DrainHandler(phone, stats, recordLatency: false) { ConnectStamp = connectStamp };
        var loop = Task.Run(() => phone.ReceiveLoopAsync(handler, stop.Token));
        var drained = handler.SyncDone.WaitAsync(TimeSpan.FromSeconds(Math.Max(60, options.Duration.TotalSeconds)));
        var progress = new LiveProgress("resume", "msgs", stats);
        var finished = drained.ContinueWith(_ => { }, TaskScheduler.Default);
        await (result is null ? finished : progress.RunAsync(finished)).ConfigureAwait(false);
        var elapsed = clock.Elapsed;
        var timedOut = !drained.IsCompletedSuccessfully;
        var harnessCpu = (Process.GetCurrentProcess().TotalProcessorTime - harnessCpuBefore).TotalSeconds;
        var brokerAfter = result is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);

        await stop.CancelAsync().ConfigureAwait(false);
        phone.Close();
        desktop.Close();
        senderConnection.Close();
        await Task.WhenAll(loop, desktopLoop).ConfigureAwait(false);
        if (result is null)
        {
            return;
        }

        result.Figures["fill_messages_per_s"] = Math.Round(total / fillSeconds, 1);
        result.Series = progress.Series;
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
        result.Sent = Volatile.Read(ref fillStats.Sent);
        result.SentAcked = Volatile.Read(ref fillStats.Acked);
        result.Delivered = Volatile.Read(ref stats.Completed);
        result.Errors = Volatile.Read(ref stats.Errors) + Volatile.Read(ref fillStats.Errors) + (timedOut ? 1 : 0);
        result.Gaps = Volatile.Read(ref stats.Gaps);
        result.Duplicates = Volatile.Read(ref stats.Duplicates);
        result.Lost = Math.Max(0, total - result.Delivered);
        result.ThroughputPerS = Math.Round(result.Delivered / elapsed.TotalSeconds, 1);
        var drainedCount = Math.Max(1, result.Delivered);
        result.Figures["harness_cpu_us_per_message"] = Math.Round(harnessCpu * 1e6 / drainedCount, 2);
        if (brokerBefore is not null && brokerAfter is not null)
        {
            var cpu = brokerAfter.CpuSeconds - brokerBefore.CpuSeconds;
            result.Figures["broker_cpu_cores"] = Math.Round(cpu / elapsed.TotalSeconds, 2);
            result.Figures["broker_cpu_us_per_message"] = Math.Round(cpu * 1e6 / drainedCount, 2);
        }

        result.Figures["connack_ms"] = Math.Round(connackMs, 2);
        result.Figures["first_deliver_ms"] = Math.Round(handler.FirstDeliverMs, 2);
        result.Figures["sync_done_ms"] = Math.Round(elapsed.TotalMilliseconds, 1);
        result.AddTarget("resume drain (messages/s)", result.ThroughputPerS, ">=", 200_000);
        if (timedOut)
        {
            result.Notes.Add("SYNC_DONE did not arrive in time");
        }

        result.Notes.Add("drain time: CONNECT written → SYNC_DONE received; the rate counts DELIVERs of the backlog");
    }

    private static async Task<RawConnection> LoginAsync(BrokerLauncher broker, string user, string device, ulong resume)
    {
        var c = await RawConnection.ConnectAsync(broker.TcpEndPoint, null, 256 * 1024, CancellationToken.None).ConfigureAwait(false);
        var connack = await c.LoginAsync(Wire.Connect(user, device, broker.Token(user, device), resume, 1800), CancellationToken.None).ConfigureAwait(false);
        if (connack.Reason != ReasonCode.Success)
        {
            c.Dispose();
            throw new InvalidOperationException($"login of {user}/{device} failed: {connack.Reason} {connack.Message}");
        }

        return c;
    }

    /// <summary>Sends <paramref name="total"/> messages keeping up to <paramref name="window"/> waiting for SENT.</summary>
    private static async Task FillAsync(RawConnection connection, string receiver, long total, int window, int bodySize, LoadStats stats, CancellationToken stop)
    {
        var credits = new SendWindow(window);
        var handler = new SentHandler(credits, stats);
        var loop = Task.Run(() => connection.ReceiveLoopAsync(handler, stop));
        var buffer = new byte[64 * Wire.MaxSendLength(bodySize)];

        // The first SEND opens the direct conversation (to_user_id); the rest name it.
        await credits.TakeAsync(1, stop).ConfigureAwait(false);
        var length = Wire.WriteSend(buffer, 1, 0, Encoding.UTF8.GetBytes(receiver), LoadStats.Now(), 1, bodySize);
        Interlocked.Increment(ref stats.Sent);
        await connection.SendAsync(buffer.AsMemory(0, length), stop).ConfigureAwait(false);
        await handler.Opened.WaitAsync(TimeSpan.FromSeconds(30), stop).ConfigureAwait(false);
        var conversation = handler.ConversationId;
        ulong next = 1;
        long sent = 1;
        while (sent < total)
        {
            var n = await credits.TakeAsync((int)Math.Min(64, total - sent), stop).ConfigureAwait(false);
            length = 0;
            var stamp = LoadStats.Now();
            for (var k = 0; k < n; k++)
            {
                length += Wire.WriteSend(buffer.AsSpan(length), ++next, conversation, default, stamp, next, bodySize);
            }

            sent += n;
            Interlocked.Add(ref stats.Sent, n);
            await connection.SendAsync(buffer.AsMemory(0, length), stop).ConfigureAwait(false);
        }

        while (Volatile.Read(ref stats.Acked) + Volatile.Read(ref stats.Errors) < total)
        {
            await Task.Delay(5, stop).ConfigureAwait(false);
        }

        _ = loop;
    }

    private sealed class SentHandler(SendWindow credits, LoadStats stats) : IFrameHandler
    {
        private readonly TaskCompletionSource _opened = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private ulong _conversationId;

        public ulong ConversationId => Volatile.Read(ref _conversationId);

        public Task Opened => _opened.Task;

        public void OnFrame(PacketType type, ReadOnlySpan<byte> body)
        {
            if (type == PacketType.Sent && Wire.TryReadSent(body, out var sent))
            {
                if (_conversationId == 0)
                {
                    Volatile.Write(ref _conversationId, sent.ConversationId);
                    _opened.TrySetResult();
                }

                Interlocked.Increment(ref stats.Acked);
                credits.Return(1);
            }
            else if (type is PacketType.Error or PacketType.Disconnect)
            {
                Console.Error.WriteLine($"filler got {type}");
                Interlocked.Increment(ref stats.Errors);
                credits.Return(1);
            }
        }

        public void OnReadDrained()
        {
        }
    }

    /// <summary>Receives DELIVERs, checks inbox positions and seqs, ACKs in batches, completes on SYNC_DONE.</summary>
    private sealed class DrainHandler(RawConnection connection, LoadStats stats, bool recordLatency) : IFrameHandler
    {
        private readonly TaskCompletionSource _syncDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly byte[] _ack = new byte[16];
        private ulong _expectedInbox = 1;
        private ulong _expectedSeq = 1;
        private ulong _acked;
        private long _lastAck = LoadStats.Now();

        public long ConnectStamp { get; init; }

        public double FirstDeliverMs { get; private set; }

        public Task SyncDone => _syncDone.Task;

        public void OnFrame(PacketType type, ReadOnlySpan<byte> body)
        {
            switch (type)
            {
                case PacketType.Deliver:
                    if (!Wire.TryReadDeliver(body, out var d))
                    {
                        Interlocked.Increment(ref stats.Errors);
                        return;
                    }

                    if (FirstDeliverMs == 0 && ConnectStamp != 0)
                    {
                        FirstDeliverMs = Stopwatch.GetElapsedTime(ConnectStamp).TotalMilliseconds;
                    }

                    if (d.InboxSeq < _expectedInbox || d.Seq < _expectedSeq)
                    {
                        Interlocked.Increment(ref stats.Duplicates);
                        return;
                    }

                    if (d.InboxSeq > _expectedInbox)
                    {
                        Interlocked.Add(ref stats.Gaps, (long)(d.InboxSeq - _expectedInbox));
                    }

                    _expectedInbox = d.InboxSeq + 1;
                    _expectedSeq = d.Seq + 1;
                    if (recordLatency)
                    {
                        stats.RecordDelivery(Wire.ReadStamp(d.Body), LoadStats.Now());
                    }
                    else
                    {
                        Interlocked.Increment(ref stats.Completed);
                    }

                    break;
                case PacketType.SyncDone:
                    if (ConnectStamp != 0)
                    {
                        _syncDone.TrySetResult();
                    }

                    break;
                case PacketType.Disconnect:
                    Console.Error.WriteLine("drain: DISCONNECT " + Disconnect.Parser.ParseFrom(body).Reason);
                    Interlocked.Increment(ref stats.Errors);
                    _syncDone.TrySetException(new IOException("disconnected"));
                    break;
            }
        }

        public void OnReadDrained()
        {
            var position = _expectedInbox - 1;
            if (position > _acked && (position - _acked >= 100 || Stopwatch.GetElapsedTime(_lastAck).TotalMilliseconds >= 50))
            {
                try
                {
                    connection.Send(_ack.AsSpan(0, Wire.WriteAck(_ack, position)));
                }
                catch (System.Net.Sockets.SocketException)
                {
                }

                _acked = position;
                _lastAck = LoadStats.Now();
            }
        }
    }
}
