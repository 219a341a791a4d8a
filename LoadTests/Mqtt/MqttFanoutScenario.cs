using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace ChatBroker.LoadTests.Mqtt;

/// <summary>
/// `fanout --protocol mqtt`: one publisher and --members subscribers of one topic (fanout/{run}, QoS 1) on any MQTT
/// broker (--target host:port), or on ChatBroker's MQTT listener started by the harness (its general topic space: in
/// memory, like any MQTT broker's). Closed loop: --window messages in flight, a slot freed when every subscriber has
/// the message. Throughput is deliveries per second (messages x subscribers); latency is the body stamp to the PUBLISH
/// parsed at each subscriber; each subscriber checks the numbers run without gap or repeat.
/// </summary>
public sealed class MqttFanoutScenario(RunOptions options)
{
    public Task<RunResult> RunAsync() => MqttTarget.RunAsync(options, RunAgainstAsync);

    private async Task<RunResult> RunAgainstAsync(IPEndPoint target, BrokerLauncher? broker)
    {
        var members = options.Members;
        var result = new RunResult
        {
            Scenario = "fanout",
            Parameters = options.Describe("members", "window", "body_size", "duration_s"),
            Broker = broker is null ? $"MQTT target {target}" : $"ChatBroker MQTT listener {target} (general topic space), child process pid {broker.Pid}",
            ThroughputUnit = "deliveries",
        };
        result.Parameters["protocol"] = "mqtt 3.1.1, QoS 1";
        var runId = Guid.NewGuid().ToString("N")[..8];
        var topic = $"fanout/{runId}";
        var topicBytes = Encoding.UTF8.GetBytes(topic);
        var stats = new LoadStats();
        using var stop = new CancellationTokenSource();
        Console.WriteLine($"connecting {members} MQTT subscribers to {target} ...");
        var subscribers = new MqttLoadClient[members];
        var next = -1;
        var connectors = new Task[32];
        for (var w = 0; w < connectors.Length; w++)
        {
            connectors[w] = Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < members)
                {
                    subscribers[i] = await MqttLoadClient.ConnectAsync(target, options.SourceAddress(target, i), $"fan-{runId}-{i.ToString(CultureInfo.InvariantCulture)}", null, null, stop.Token).ConfigureAwait(false);
                    await subscribers[i].SubscribeAsync(topic, 1, stop.Token).ConfigureAwait(false);
                }
            });
        }

        await Task.WhenAll(connectors).ConfigureAwait(false);
        var publisher = await MqttLoadClient.ConnectAsync(target, null, $"fan-{runId}-pub", null, null, stop.Token).ConfigureAwait(false);

        // remaining[n % ring]: subscribers that still miss message n; the window bounds how far n runs ahead.
        var ring = Math.Max(1, options.Window) * 4;
        var remaining = new int[ring];
        var window = new SemaphoreSlim(options.Window, options.Window);
        var measuring = false;
        long measured = 0;
        var loops = new List<Task>();
        foreach (var s in subscribers)
        {
            loops.Add(ReceiveAsync(s));
        }

        loops.Add(DrainAcksAsync(publisher));

        async Task ReceiveAsync(MqttLoadClient client)
        {
            long expected = 0;
            var acks = new byte[4 * 1024];
            try
            {
                while (await client.ReceiveAsync(stop.Token).ConfigureAwait(false))
                {
                    var length = Process(client, ref acks, ref expected);
                    if (length > 0)
                    {
                        await client.SendAsync(acks.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
        }

        int Process(MqttLoadClient client, ref byte[] acks, ref long expected)
        {
            var length = 0;
            var now = Stopwatch.GetTimestamp();
            while (client.TryRead(out var header, out var body))
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

                var stamp = BinaryPrimitives.ReadInt64LittleEndian(payload);
                var n = BinaryPrimitives.ReadInt64LittleEndian(payload[8..]);
                if (n < expected)
                {
                    Interlocked.Increment(ref stats.Duplicates);
                    continue;
                }

                if (n > expected)
                {
                    Interlocked.Increment(ref stats.Gaps);
                }

                expected = n + 1;
                if (Volatile.Read(ref measuring))
                {
                    stats.RecordDelivery(stamp, now);
                    Interlocked.Increment(ref measured);
                }

                if (Interlocked.Decrement(ref remaining[n % ring]) == 0)
                {
                    window.Release(); // every subscriber has message n
                }
            }

            return length;
        }

        async Task DrainAcksAsync(MqttLoadClient client)
        {
            try
            {
                while (await client.ReceiveAsync(stop.Token).ConfigureAwait(false))
                {
                    while (client.TryRead(out var header, out _))
                    {
                        if (header >> 4 == 4)
                        {
                            Interlocked.Increment(ref stats.Acked);
                        }
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
        }

        using var stopSending = new CancellationTokenSource();
        var sending = Task.Run(async () =>
        {
            var payload = new byte[Math.Max(16, options.BodySize)];
            payload.AsSpan(16).Fill((byte)'x');
            var buffer = new byte[MqttLoadClient.PublishLength(topicBytes.Length, payload.Length)];
            long n = 0;
            try
            {
                while (!stopSending.IsCancellationRequested)
                {
                    await window.WaitAsync(stopSending.Token).ConfigureAwait(false);
                    Volatile.Write(ref remaining[n % ring], members);
                    BinaryPrimitives.WriteInt64LittleEndian(payload, Stopwatch.GetTimestamp());
                    BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(8), n);
                    var length = MqttLoadClient.WritePublish(buffer, topicBytes, (ushort)((n % 65535) + 1), payload);
                    await publisher.SendAsync(buffer.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
                    Interlocked.Increment(ref stats.Sent);
                    n++;
                }
            }
            catch (OperationCanceledException)
            {
            }
        });

        if (options.WarmupSeconds > 0)
        {
            Console.WriteLine($"warm-up: {options.WarmupSeconds} s, not measured ...");
            await Task.Delay(TimeSpan.FromSeconds(options.WarmupSeconds)).ConfigureAwait(false);
        }

        var before = broker is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);
        Volatile.Write(ref measuring, true);
        var clock = Stopwatch.StartNew();
        var progress = new LiveProgress("fanout (mqtt)", "deliveries", stats);
        await progress.RunAsync(Task.Delay(options.Duration)).ConfigureAwait(false);
        Volatile.Write(ref measuring, false);
        var elapsed = clock.Elapsed;
        var after = broker is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);
        await stopSending.CancelAsync().ConfigureAwait(false);
        await sending.ConfigureAwait(false);
        await stop.CancelAsync().ConfigureAwait(false);
        publisher.Close();
        foreach (var s in subscribers)
        {
            s.Close();
        }

        await Task.WhenAll(loops).ConfigureAwait(false);
        result.Sent = Volatile.Read(ref stats.Sent);
        result.SentAcked = Volatile.Read(ref stats.Acked);
        result.Delivered = Volatile.Read(ref measured);
        result.Gaps = Volatile.Read(ref stats.Gaps);
        result.Duplicates = Volatile.Read(ref stats.Duplicates);
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
        result.ThroughputPerS = Math.Round(result.Delivered / elapsed.TotalSeconds, 1);
        result.LatencyMs = stats.Latency.Total().Summarize();
        result.Series = progress.Series;
        if (before is not null && after is not null)
        {
            result.Figures["broker_cpu_cores"] = Math.Round((after.CpuSeconds - before.CpuSeconds) / elapsed.TotalSeconds, 2);
        }

        result.Notes.Add("throughput: deliveries (messages x subscribers) during the measured --duration; a publisher slot frees when every subscriber has the message");
        return result;
    }
}
