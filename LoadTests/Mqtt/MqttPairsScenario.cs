using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace ChatBroker.LoadTests.Mqtt;

/// <summary>
/// `pairs --protocol mqtt`: N sender/receiver pairs over MQTT 3.1.1 against any MQTT broker (--target host:port), or
/// against ChatBroker's MQTT listener started by the harness. Each sender keeps --window QoS 1 PUBLISHes in flight
/// (a slot frees when its message reaches the receiver, as in the native pairs); receivers PUBACK every message.
/// Topics: `chat` (ChatBroker's chat namespace: the sender publishes to chat/u/{receiver}, the receiver subscribes to
/// inbox/{receiver}/#, with tokens; every message durable before its PUBACK) or `plain` (pairs/{run}/{i}: what any
/// broker serves). Latency: body stamp taken before the socket write to the PUBLISH parsed at the receiver.
/// </summary>
public sealed class MqttPairsScenario(RunOptions options, string topics)
{
    private const int MaxBatch = 64;

    public async Task<RunResult> RunAsync()
    {
        BrokerLauncher? started = null;
        IPEndPoint target;
        Func<string, string>? token = null;
        if (options.Target is null)
        {
            var port = FreePort();
            Console.WriteLine($"starting broker (durability {options.Durability}) with mqtt.listen=127.0.0.1:{port} ...");
            started = await BrokerLauncher.StartAsync(options.Durability, [.. options.BrokerSettings, $"mqtt.listen=127.0.0.1:{port}"]).ConfigureAwait(false);
            target = new IPEndPoint(IPAddress.Loopback, port);
            token = user => started.Token(user, "mqtt");
        }
        else
        {
            target = BrokerLauncher.ResolveEndPoint(options.Target);
            if (options.SecretFile is not null || options.TokenSecret is not null)
            {
                var b = BrokerLauncher.Target(options.Target, options.Admin, options.SecretFile, options.TokenSecret);
                token = user => b.Token(user, "mqtt");
            }
        }

        var mode = topics == "auto" ? (token is null ? "plain" : "chat") : topics;
        if (mode == "chat" && token is null)
        {
            throw new InvalidOperationException("--mqtt-topics chat needs the target's token secret (--secret-file or --token-secret)");
        }

        try
        {
            return await RunAgainstAsync(target, mode, token, started).ConfigureAwait(false);
        }
        finally
        {
            if (started is not null)
            {
                await started.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private async Task<RunResult> RunAgainstAsync(IPEndPoint target, string mode, Func<string, string>? token, BrokerLauncher? broker)
    {
        var result = new RunResult
        {
            Scenario = "pairs",
            Parameters = options.Describe("pairs", "window", "body_size", "duration_s", "durability"),
            Broker = broker is null ? $"MQTT target {target}" : $"ChatBroker MQTT listener {target}, child process pid {broker.Pid}, durability {options.Durability}",
        };
        result.Parameters["protocol"] = "mqtt 3.1.1, QoS 1";
        result.Parameters["topics"] = mode;
        var runId = Guid.NewGuid().ToString("N")[..8];
        var stats = new LoadStats();
        using var stopAll = new CancellationTokenSource();
        var pairs = new Pair[options.Pairs];
        for (var i = 0; i < pairs.Length; i++)
        {
            pairs[i] = new Pair(i, runId, mode, options.Window, options.BodySize, stats, paced: options.Rate > 0);
        }

        Console.WriteLine($"connecting {pairs.Length} MQTT pairs to {target} (topics: {mode}) ...");
        var connecting = new List<Task>();
        foreach (var p in pairs)
        {
            connecting.Add(p.ConnectAsync(target, options.SourceAddress(target, p.Index), token, stopAll.Token));
        }

        await Task.WhenAll(connecting).ConfigureAwait(false);
        var loops = new List<Task>();
        foreach (var p in pairs)
        {
            loops.Add(p.RunReceiverAsync(stopAll.Token));
            loops.Add(p.RunAckReaderAsync(stopAll.Token));
        }

        using var stopSending = new CancellationTokenSource();
        var sending = new List<Task>();
        if (options.Rate > 0)
        {
            // The native pairs' schedule (PairsScenario.Pace): pair i's k-th message due at (k - i/N) / (rate/N) s,
            // one thread sending each when due, through the warm-up into the measurement.
            stats.Stalls = new StallRecorder(options.StallMs);
            sending.Add(Task.Factory.StartNew(() => Pace(pairs, options.Rate, stopSending.Token), TaskCreationOptions.LongRunning));
        }
        else
        {
            foreach (var p in pairs)
            {
                sending.Add(p.RunSenderAsync(stopSending.Token));
            }
        }

        if (options.WarmupSeconds > 0)
        {
            Console.WriteLine($"warm-up: {options.WarmupSeconds} s of the same load, not measured ...");
            await Task.Delay(TimeSpan.FromSeconds(options.WarmupSeconds)).ConfigureAwait(false);
        }

        var before = broker is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);
        var peerBefore = options.PeerPid > 0 ? ProcessCpu.Seconds(options.PeerPid) : null;
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var sampler = new BrokerSampler();
        using var stopSampling = new CancellationTokenSource();
        var sampling = broker is not null && options.Rate > 0 ? sampler.RunAsync(broker.ScrapeAsync, stopSampling.Token) : Task.CompletedTask;
        var measureStart = Stopwatch.GetTimestamp();
        var measureStartUtc = DateTime.UtcNow;
        var sentBefore = Volatile.Read(ref stats.Sent);
        var ackedBefore = Volatile.Read(ref stats.Acked);
        Pair.Measuring = true;
        var clock = Stopwatch.StartNew();
        var measured = Task.Delay(options.Duration);
        var progress = new LiveProgress("pairs (mqtt)", "msgs", stats, () => $"acked {Volatile.Read(ref stats.Acked):N0}");
        await progress.RunAsync(measured).ConfigureAwait(false);
        Pair.Measuring = false;
        var elapsed = clock.Elapsed;
        var cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpuBefore).TotalSeconds;
        var peerAfter = options.PeerPid > 0 ? ProcessCpu.Seconds(options.PeerPid) : null;
        await stopSampling.CancelAsync().ConfigureAwait(false);
        await sampling.ConfigureAwait(false);
        var after = broker is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);
        await stopSending.CancelAsync().ConfigureAwait(false);
        try
        {
            await Task.WhenAll(sending).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        // Drain: every message sent is delivered (or 15 s pass).
        var drain = Stopwatch.StartNew();
        while (drain.Elapsed < TimeSpan.FromSeconds(15) && Array.Exists(pairs, p => !p.Settled))
        {
            await Task.Delay(10).ConfigureAwait(false);
        }

        await stopAll.CancelAsync().ConfigureAwait(false);
        foreach (var p in pairs)
        {
            p.Close();
        }

        await Task.WhenAll(loops).ConfigureAwait(false);

        long delivered = 0, received = 0;
        foreach (var p in pairs)
        {
            delivered += p.MeasuredDeliveries;
            received += p.Received;
        }

        result.Sent = Volatile.Read(ref stats.Sent);
        result.SentAcked = Volatile.Read(ref stats.Acked);
        result.Delivered = received;
        result.Gaps = Volatile.Read(ref stats.Gaps);
        result.Duplicates = Volatile.Read(ref stats.Duplicates);
        result.Errors = Volatile.Read(ref stats.Errors);
        result.Lost = Math.Max(0, result.Sent - received);
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
        result.ThroughputPerS = Math.Round(delivered / elapsed.TotalSeconds, 1);
        result.LatencyMs = stats.Latency.Total().Summarize();
        result.Series = progress.Series;
        result.Figures["published_per_s"] = Math.Round((Volatile.Read(ref stats.Sent) - sentBefore) / elapsed.TotalSeconds, 1);
        result.Figures["puback_per_s"] = Math.Round((Volatile.Read(ref stats.Acked) - ackedBefore) / elapsed.TotalSeconds, 1);
        result.Figures["harness_cpu_cores"] = Math.Round(cpu / elapsed.TotalSeconds, 2);
        if (before is not null && after is not null)
        {
            result.Figures["broker_cpu_cores"] = Math.Round((after.CpuSeconds - before.CpuSeconds) / elapsed.TotalSeconds, 2);
            result.Figures["broker_cpu_us_per_message"] = Math.Round((after.CpuSeconds - before.CpuSeconds) * 1e6 / Math.Max(1, delivered), 2);
            result.Figures["broker_rss_mb_end"] = Math.Round(after.ResidentBytes / 1048576.0, 1);
            BrokerMetricsSample.AddGcFigures(result.Figures, before, after, Math.Max(1, delivered), elapsed.TotalSeconds);
        }

        if (peerBefore is not null && peerAfter is not null)
        {
            result.Figures["broker_cpu_cores"] = Math.Round((peerAfter.Value - peerBefore.Value) / elapsed.TotalSeconds, 2);
            result.Figures["broker_cpu_us_per_message"] = Math.Round((peerAfter.Value - peerBefore.Value) * 1e6 / Math.Max(1, delivered), 2);
            result.Notes.Add($"broker CPU: pid {options.PeerPid} (--peer-pid), utime + stime from /proc over the measured interval (10 ms ticks)");
        }

        if (options.Rate > 0)
        {
            StallReport.Complete(result, stats.Stalls!, measureStart, measureStartUtc, broker is null ? null : sampler, broker?.DataDirectory);
            result.Parameters["rate"] = options.Rate.ToString(CultureInfo.InvariantCulture);
            result.AddTarget("delivered rate vs --rate (messages/s)", delivered / elapsed.TotalSeconds, ">=", options.Rate * 0.95);
        }

        result.Notes.Add("throughput: messages delivered to receivers during the measured --duration / its length (warm-up not counted)");
        result.Notes.Add("latency: body stamp (Stopwatch, before the socket write) to the PUBLISH parsed at the receiver");
        if (mode == "chat")
        {
            result.Notes.Add("chat topics: each message is a SEND made durable (sequenced, stored) before its PUBACK, delivered from the receiver's inbox, PUBACK = ACK");
        }

        return result;
    }

    /// <summary>Fixed rate, evenly spaced: as <c>PairsScenario.Pace</c> (one thread, each PUBLISH written when due, nanosleep between).</summary>
    private void Pace(Pair[] pairs, double rate, CancellationToken stop)
    {
        PreciseSleep.UseFineTimerSlack();
        var perPair = rate / pairs.Length;
        var start = Stopwatch.GetTimestamp();
        var paced = new long[pairs.Length];
        while (!stop.IsCancellationRequested)
        {
            var elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var nextDue = double.MaxValue;
            for (var i = 0; i < pairs.Length; i++)
            {
                var phase = (double)i / pairs.Length;
                var due = (long)((elapsed * perPair) + phase) - paced[i];
                if (due > 0)
                {
                    var n = (int)Math.Min(due, MaxBatch);
                    if (!pairs[i].SendNow(n))
                    {
                        return;
                    }

                    paced[i] += n;
                }

                nextDue = Math.Min(nextDue, (paced[i] + 1 - phase) / perPair);
            }

            PreciseSleep.Until(start, nextDue);
        }
    }

    private static int FreePort()
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    /// <summary>One sender and one receiver.</summary>
    private sealed class Pair(int index, string runId, string mode, int window, int bodySize, LoadStats stats, bool paced)
    {
        private byte[]? _pacedPayload;
        private byte[]? _pacedBuffer;

        public static volatile bool Measuring;

        private readonly SemaphoreSlim _window = new(window, window);
        private MqttLoadClient _sender = null!;
        private MqttLoadClient _receiver = null!;
        private byte[] _topic = [];
        private long _nextSeq;
        private long _expected;
        private long _received;
        private long _measured;

        public int Index => index;
        public long Received => Volatile.Read(ref _received);
        public long MeasuredDeliveries => Volatile.Read(ref _measured);
        public bool Settled => Volatile.Read(ref _received) >= Volatile.Read(ref _nextSeq);

        public async Task ConnectAsync(IPEndPoint target, IPAddress? source, Func<string, string>? token, CancellationToken cancellationToken)
        {
            var i = index.ToString(CultureInfo.InvariantCulture);
            var senderUser = $"ms{runId}-{i}";
            var receiverUser = $"mr{runId}-{i}";
            if (mode == "chat")
            {
                _sender = await MqttLoadClient.ConnectAsync(target, source, "mqtt", senderUser, token!(senderUser), cancellationToken).ConfigureAwait(false);
                _receiver = await MqttLoadClient.ConnectAsync(target, source, "mqtt", receiverUser, token!(receiverUser), cancellationToken).ConfigureAwait(false);
                await _receiver.SubscribeAsync($"inbox/{receiverUser}/#", 1, cancellationToken).ConfigureAwait(false);
                _topic = Encoding.UTF8.GetBytes($"chat/u/{receiverUser}");
            }
            else
            {
                _sender = await MqttLoadClient.ConnectAsync(target, source, senderUser, null, null, cancellationToken).ConfigureAwait(false);
                _receiver = await MqttLoadClient.ConnectAsync(target, source, receiverUser, null, null, cancellationToken).ConfigureAwait(false);
                var topic = $"pairs/{runId}/{i}";
                await _receiver.SubscribeAsync(topic, 1, cancellationToken).ConfigureAwait(false);
                _topic = Encoding.UTF8.GetBytes(topic);
            }
        }

        /// <summary>Closed loop: waits for a free slot, then sends every free slot's message in one write.</summary>
        public async Task RunSenderAsync(CancellationToken stop)
        {
            var payload = new byte[Math.Max(16, bodySize)];
            payload.AsSpan(16).Fill((byte)'x');
            var one = MqttLoadClient.PublishLength(_topic.Length, payload.Length);
            var buffer = new byte[one * MaxBatch];
            while (!stop.IsCancellationRequested)
            {
                await _window.WaitAsync(stop).ConfigureAwait(false);
                var n = 1;
                while (n < MaxBatch && _window.Wait(0))
                {
                    n++;
                }

                var length = 0;
                var stamp = Stopwatch.GetTimestamp();
                for (var k = 0; k < n; k++)
                {
                    var seq = _nextSeq + k;
                    BinaryPrimitives.WriteInt64LittleEndian(payload, stamp);
                    BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(8), seq);
                    length += MqttLoadClient.WritePublish(buffer.AsSpan(length), _topic, (ushort)((seq % 65535) + 1), payload);
                }

                Volatile.Write(ref _nextSeq, _nextSeq + n);
                Interlocked.Add(ref stats.Sent, n);
                try
                {
                    await _sender.SendAsync(buffer.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
                }
                catch (SocketException)
                {
                    Interlocked.Increment(ref stats.Errors);
                    return;
                }
            }
        }

        /// <summary>Paced: writes the next <paramref name="n"/> PUBLISHes now, in one blocking send; false when the socket failed.</summary>
        public bool SendNow(int n)
        {
            _pacedPayload ??= NewPayload();
            var one = MqttLoadClient.PublishLength(_topic.Length, _pacedPayload.Length);
            _pacedBuffer ??= new byte[one * MaxBatch];
            var length = 0;
            var stamp = Stopwatch.GetTimestamp();
            for (var k = 0; k < n; k++)
            {
                var seq = _nextSeq + k;
                BinaryPrimitives.WriteInt64LittleEndian(_pacedPayload, stamp);
                BinaryPrimitives.WriteInt64LittleEndian(_pacedPayload.AsSpan(8), seq);
                length += MqttLoadClient.WritePublish(_pacedBuffer.AsSpan(length), _topic, (ushort)((seq % 65535) + 1), _pacedPayload);
            }

            Volatile.Write(ref _nextSeq, _nextSeq + n);
            Interlocked.Add(ref stats.Sent, n);
            try
            {
                _sender.Send(_pacedBuffer.AsSpan(0, length));
                return true;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                Interlocked.Increment(ref stats.Errors);
                return false;
            }
        }

        private byte[] NewPayload()
        {
            var payload = new byte[Math.Max(16, bodySize)];
            payload.AsSpan(16).Fill((byte)'x');
            return payload;
        }

        public async Task RunAckReaderAsync(CancellationToken stop)
        {
            try
            {
                while (await _sender.ReceiveAsync(stop).ConfigureAwait(false))
                {
                    var acks = 0;
                    while (_sender.TryRead(out var header, out var body))
                    {
                        if (header >> 4 == 4)
                        {
                            acks++;
                        }
                        else
                        {
                            Interlocked.Increment(ref stats.Errors);
                        }

                        _ = body;
                    }

                    Interlocked.Add(ref stats.Acked, acks);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
        }

        public async Task RunReceiverAsync(CancellationToken stop)
        {
            var acks = new byte[4 * 4096];
            try
            {
                while (await _receiver.ReceiveAsync(stop).ConfigureAwait(false))
                {
                    var length = Process(ref acks);
                    if (length > 0)
                    {
                        await _receiver.SendAsync(acks.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException or SemaphoreFullException)
            {
            }
        }

        // Every whole PUBLISH received: checked, timed, its PUBACK written into acks (one write for them all).
        private int Process(ref byte[] acks)
        {
            var length = 0;
            var now = Stopwatch.GetTimestamp();
            while (_receiver.TryRead(out var header, out var body))
            {
                if (header >> 4 != 3)
                {
                    continue;
                }

                var payload = MqttLoadClient.PublishPayload(header, body, out var packetId);
                if ((header & 0x06) != 0)
                {
                    if (length + 4 > acks.Length)
                    {
                        Array.Resize(ref acks, acks.Length * 2);
                    }

                    length += MqttLoadClient.WritePubAck(acks.AsSpan(length), packetId);
                }

                if (payload.Length < 16)
                {
                    Interlocked.Increment(ref stats.Errors);
                    continue;
                }

                var stamp = BinaryPrimitives.ReadInt64LittleEndian(payload);
                var seq = BinaryPrimitives.ReadInt64LittleEndian(payload[8..]);
                if (seq < _expected)
                {
                    Interlocked.Increment(ref stats.Duplicates);
                    continue;
                }

                if (seq > _expected)
                {
                    Interlocked.Increment(ref stats.Gaps);
                }

                _expected = seq + 1;
                Interlocked.Increment(ref _received);
                if (Measuring)
                {
                    stats.RecordDelivery(stamp, now);
                    Interlocked.Increment(ref _measured);
                }

                if (!paced)
                {
                    _window.Release();
                }
            }

            return length;
        }

        public void Close()
        {
            _sender.Close();
            _receiver.Close();
        }
    }
}
