using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace ChatBroker.LoadTests.Mqtt;

/// <summary>
/// `connections --protocol mqtt`: --connections idle MQTT 3.1.1 clients (clean session, each SUBSCRIBEd at QoS 1 to a
/// topic of its own: a device waiting for messages) of any MQTT broker (--target host:port), or of ChatBroker's MQTT
/// listener started by the harness (anonymous clients, the general topic space). Measures the connect rate (the first
/// CONNECT to the last SUBACK, 64 at once) and, on a broker the harness started, its resident memory per connection as
/// the native scenario does. The clients are held in this process: at most 19,000 (this machine's 20,000 open files).
/// </summary>
public sealed class MqttConnectionsScenario(RunOptions options)
{
    private const int Concurrency = 64;

    public Task<RunResult> RunAsync() => MqttTarget.RunAsync(options, RunAgainstAsync);

    private async Task<RunResult> RunAgainstAsync(IPEndPoint target, BrokerLauncher? broker)
    {
        var count = Math.Min(options.Connections, ConnectionsScenario.MaxPerProcess);
        var result = new RunResult
        {
            Scenario = "connections",
            Parameters = options.Describe("connections", "sources"),
            Broker = broker is null ? $"MQTT target {target}" : $"ChatBroker MQTT listener {target} (general topic space), child process pid {broker.Pid}",
            ThroughputUnit = "connections",
        };
        result.Parameters["protocol"] = "mqtt 3.1.1, clean session, one QoS 1 subscription each";
        if (count < options.Connections)
        {
            result.Notes.Add($"{count:N0} connections, not {options.Connections:N0}: the MQTT clients are held in this one process (20,000 open files at most)");
        }

        var before = broker is null ? null : await Metrics.SettledAsync(broker).ConfigureAwait(false);
        var runId = Guid.NewGuid().ToString("N")[..8];
        var clients = new MqttLoadClient?[count];
        var stats = new LoadStats();
        long failed = 0;
        var next = -1;
        var clock = Stopwatch.StartNew();
        var cpuBefore = broker is null ? null : await broker.ScrapeAsync().ConfigureAwait(false);
        var workers = new Task[Concurrency];
        for (var w = 0; w < workers.Length; w++)
        {
            workers[w] = Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < count)
                {
                    try
                    {
                        var id = $"conn-{runId}-{i.ToString(CultureInfo.InvariantCulture)}";
                        var client = await MqttLoadClient.ConnectAsync(target, options.SourceAddress(target, i), id, null, null, CancellationToken.None, bufferBytes: 256).ConfigureAwait(false);
                        await client.SubscribeAsync($"conn/{runId}/{i.ToString(CultureInfo.InvariantCulture)}", 1, CancellationToken.None).ConfigureAwait(false);
                        clients[i] = client;
                        Interlocked.Increment(ref stats.Completed);
                    }
                    catch (Exception e) when (e is SocketException or IOException or InvalidOperationException)
                    {
                        if (Interlocked.Increment(ref failed) == 1)
                        {
                            Console.Error.WriteLine($"connect failed: {e.Message}");
                        }
                    }
                }
            });
        }

        var connected = Task.WhenAll(workers);
        var progress = new LiveProgress("connections", "conns", stats);
        await progress.RunAsync(connected.WaitAsync(TimeSpan.FromSeconds(300))).ConfigureAwait(false);
        await connected.ConfigureAwait(false);
        var elapsed = clock.Elapsed;
        var ok = Volatile.Read(ref stats.Completed);
        result.Series = progress.Series;
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);
        result.Delivered = ok;
        result.Errors = failed;
        result.ThroughputPerS = Math.Round(ok / elapsed.TotalSeconds, 1);
        result.Figures["connections_open"] = ok;
        result.Figures["connect_rate_per_s"] = result.ThroughputPerS;
        try
        {
            if (broker is not null)
            {
                var cpuAfter = await broker.ScrapeAsync().ConfigureAwait(false);
                if (cpuBefore is not null && cpuAfter is not null)
                {
                    var cpu = cpuAfter.CpuSeconds - cpuBefore.CpuSeconds;
                    result.Figures["broker_cpu_us_per_connect"] = Math.Round(cpu * 1e6 / Math.Max(1, ok), 1);
                }

                // Quiet for longer than tcp.connect_timeout (10 s), as in the native scenario.
                var after = await Metrics.SettledAsync(broker, quietSeconds: 12).ConfigureAwait(false);
                if (before is not null && after is not null)
                {
                    var perConnection = (after.ResidentBytes - before.ResidentBytes) / Math.Max(1, ok);
                    result.Figures["broker_rss_mb_before"] = Math.Round(before.ResidentBytes / 1048576.0, 1);
                    result.Figures["broker_rss_mb_with_connections"] = Math.Round(after.ResidentBytes / 1048576.0, 1);
                    result.Figures["broker_bytes_per_connection"] = Math.Round(perConnection, 0);
                    result.Figures["broker_gc_heap_bytes_per_connection"] = Math.Round((after.GcHeapBytes - before.GcHeapBytes) / Math.Max(1, ok), 0);
                    result.AddTarget("broker memory per idle MQTT connection (bytes)", perConnection, "<=", 2.5 * 1024);
                }
            }
            else
            {
                result.Notes.Add("memory: not measured for a --target broker (read its RSS with ps while the run holds the connections)");
            }

            result.AddTarget("connections held", ok, ">=", count);
            result.Notes.Add($"connect rate: from the first CONNECT to the last SUBACK, {Concurrency} connects at once, one process");
        }
        finally
        {
            foreach (var c in clients)
            {
                c?.Close();
            }
        }

        return result;
    }
}
