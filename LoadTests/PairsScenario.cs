using System.Diagnostics;
using System.Net;
using System.Text;
using ChatBroker.LoadTests.Cluster;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// `pairs`: N sender/receiver pairs, each a direct conversation between two users. Closed loop (--window:
/// messages a pair may have sent but not yet seen delivered) or a fixed total rate (--rate, paced from one
/// thread). Latency is send stamp → DELIVER at the receiver; receivers check every conversation's seqs run
/// 1, 2, 3 … without gap or repeat and ACK in batches (every 100 messages or 50 ms).
/// </summary>
public sealed class PairsScenario(RunOptions options)
{
    private const int MaxBatch = 64;

    public async Task<RunResult> RunAsync()
    {
        if (options.Transports is [ClientTransport.Tcp])
        {
            await using var broker = await options.OpenBrokersAsync().ConfigureAwait(false);
            return await RunOnAsync(broker, ClientTransport.Tcp, null).ConfigureAwait(false);
        }

        return await RunTransportsAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// --transport tls, ws or a list (tcp,tls,ws): one started broker with all three listeners (a self-signed certificate
    /// made for the run), the whole pairs run once per entry in the order given (a transport may come back: interleave
    /// them on a noisy machine), each with its own users; the figures of each pass, the medians per transport and
    /// their ratios to the first transport's are added to the returned result (the first pass's).
    /// </summary>
    private async Task<RunResult> RunTransportsAsync()
    {
        if (options.Rate > 0 || options.Cluster > 0 || options.Target is not null)
        {
            throw new InvalidOperationException("--transport tls|ws runs closed loop (--window) against a broker the harness starts: not with --rate, --cluster or --target");
        }

        var directory = Path.Combine(Path.GetTempPath(), "chatbroker-pairs-tls-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        try
        {
            var (certificateFile, keyFile) = IdleTransportsScenario.WriteCertificate(directory);
            var tls = new IPEndPoint(IPAddress.Loopback, IdleTransportsScenario.FreePort());
            var ws = new IPEndPoint(IPAddress.Loopback, IdleTransportsScenario.FreePort());
            Console.WriteLine($"starting broker (durability {options.Durability}) with tls.listen {tls} and ws.listen {ws} ...");
            var launcher = await BrokerLauncher.StartAsync(options.Durability,
            [
                .. options.BrokerSettings, $"tls.listen={tls}", $"tls.certificate_file={certificateFile}", $"tls.key_file={keyFile}", $"ws.listen={ws}",
            ]).ConfigureAwait(false);
            await using var broker = new BrokerNodes(launcher);
            var endPoints = new TransportEndPoints(launcher.TcpEndPoint, tls, ws);
            RunResult? first = null;
            var passes = new Dictionary<ClientTransport, List<RunResult>>();
            foreach (var transport in options.Transports)
            {
                Console.WriteLine($"--- pairs over {transport.Name()} ---");
                var run = await RunOnAsync(broker, transport, endPoints).ConfigureAwait(false);
                if (!passes.TryGetValue(transport, out var list))
                {
                    passes[transport] = list = [];
                }

                list.Add(run);
                var name = list.Count == 1 ? transport.Name() : $"{transport.Name()}{list.Count}";
                first ??= run;
                first.Figures[name + "_delivered_per_s"] = run.ThroughputPerS;
                first.Figures[name + "_p50_ms"] = run.LatencyMs?.P50Ms ?? 0;
                first.Figures[name + "_p99_ms"] = run.LatencyMs?.P99Ms ?? 0;
                first.Figures[name + "_broker_cpu_us_per_message"] = run.Figures.GetValueOrDefault("broker_cpu_us_per_message");
                first.Figures[name + "_harness_cpu_us_per_message"] = run.Figures.GetValueOrDefault("harness_cpu_us_per_message");
                if (!ReferenceEquals(run, first))
                {
                    first.Lost += run.Lost;
                    first.Gaps += run.Gaps;
                    first.Duplicates += run.Duplicates;
                    first.Errors += run.Errors;
                }

                Console.WriteLine($"{name}: {run.ThroughputPerS:N0} delivered/s, p50 {run.LatencyMs?.P50Ms:0.###} ms, p99 {run.LatencyMs?.P99Ms:0.###} ms, " +
                    $"broker {run.Figures.GetValueOrDefault("broker_cpu_us_per_message"):0.#} µs CPU/message, lost {run.Lost}, gaps {run.Gaps}, duplicates {run.Duplicates}, errors {run.Errors}");
            }

            // Medians over each transport's passes (list a transport several times, interleaved, on a noisy machine),
            // and their ratios to the first transport's.
            var baseline = options.Transports[0];
            foreach (var (transport, list) in passes)
            {
                var name = transport.Name();
                first!.Figures[name + "_median_delivered_per_s"] = Median(list, r => r.ThroughputPerS);
                first.Figures[name + "_median_p50_ms"] = Median(list, r => r.LatencyMs?.P50Ms ?? 0);
                first.Figures[name + "_median_p99_ms"] = Median(list, r => r.LatencyMs?.P99Ms ?? 0);
                first.Figures[name + "_median_broker_cpu_us_per_message"] = Median(list, r => r.Figures.GetValueOrDefault("broker_cpu_us_per_message"));
            }

            foreach (var transport in passes.Keys)
            {
                if (transport == baseline)
                {
                    continue;
                }

                var (name, baseName) = (transport.Name(), baseline.Name());
                foreach (var figure in new[] { "delivered_per_s", "p50_ms", "p99_ms", "broker_cpu_us_per_message" })
                {
                    first!.Figures[$"{name}_vs_{baseName}_{figure}"] = Ratio(first.Figures[$"{name}_median_{figure}"], first.Figures[$"{baseName}_median_{figure}"]);
                }

                Console.WriteLine($"{name} vs {baseName} (medians): delivered/s × {first!.Figures[$"{name}_vs_{baseName}_delivered_per_s"]}, " +
                    $"p50 × {first.Figures[$"{name}_vs_{baseName}_p50_ms"]}, p99 × {first.Figures[$"{name}_vs_{baseName}_p99_ms"]}, " +
                    $"broker CPU/message × {first.Figures[$"{name}_vs_{baseName}_broker_cpu_us_per_message"]}");
            }

            first!.Parameters["transports"] = string.Join(',', options.Transports.Select(t => t.Name()));
            first.Notes.Add($"transports: one broker process, the pairs run once per entry in the order listed (warm-up each); *_median_* over each transport's passes, *_vs_{baseline.Name()}_* their ratios; loss, gaps, duplicates and errors summed over all passes; the headline figures are the first pass's");
            return first;
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static double Ratio(double value, double baseline) => baseline == 0 ? 0 : Math.Round(value / baseline, 3);

    private static double Median(List<RunResult> runs, Func<RunResult, double> figure)
    {
        var values = runs.Select(figure).Order().ToArray();
        return values.Length % 2 == 1 ? values[values.Length / 2] : (values[(values.Length / 2) - 1] + values[values.Length / 2]) / 2;
    }

    private async Task<RunResult> RunOnAsync(BrokerNodes broker, ClientTransport transport, TransportEndPoints? endPoints)
    {
        var result = new RunResult
        {
            Scenario = "pairs",
            Parameters = options.Describe("pairs", options.Rate > 0 ? "rate" : "window", "body_size", "duration_s", "count", "durability"),
            Broker = broker.Describe(options),
        };
        result.Parameters["transport"] = transport.Name();
        var stats = new LoadStats();
        var runId = Guid.NewGuid().ToString("N")[..8];
        using var stopAll = new CancellationTokenSource();
        var pairs = new Pair[options.Pairs];
        for (var i = 0; i < pairs.Length; i++)
        {
            pairs[i] = new Pair(i, runId, options, stats, transport, endPoints);
        }

        Console.WriteLine($"connecting {pairs.Length} pairs ...");
        await ForEachAsync(pairs, 32, p => p.ConnectAsync(broker, stopAll.Token)).ConfigureAwait(false);
        var loops = new List<Task>();
        foreach (var p in pairs)
        {
            loops.Add(p.StartReceiving(stopAll.Token));
        }

        // The first message of each pair creates the direct conversation (to_user_id); its SENT names it.
        await ForEachAsync(pairs, 32, p => p.OpenConversationAsync(stopAll.Token)).ConfigureAwait(false);

        var perPairLimit = options.Count > 0 ? (options.Count + pairs.Length - 1) / pairs.Length : long.MaxValue;
        using var stopSending = new CancellationTokenSource();
        Task sending;
        BrokerMetricsSample? brokerBefore;
        TimeSpan harnessCpuBefore;
        var sampler = new BrokerSampler();
        using var stopSampling = new CancellationTokenSource();
        var sampling = Task.CompletedTask;
        long measureStart = 0;
        var measureStartUtc = DateTime.UtcNow;
        if (options.Rate > 0)
        {
            // One pacer for the warm-up and the measurement: the load goes on without a pause, and the pacer
            // starts numbering messages at its next send after the switch. (Stopping after the warm-up, letting
            // the broker drain and go idle, then starting again made the first measured 100 ms the worst of
            // most runs.)
            stats.Stalls = new StallRecorder(options.StallMs);
            var control = new PacerControl(perPairLimit);
            sending = Task.Factory.StartNew(() => Pace(pairs, options.Rate, control, stopSending.Token), TaskCreationOptions.LongRunning);
            if (options.WarmupSeconds > 0)
            {
                Console.WriteLine($"warm-up: {options.WarmupSeconds} s of the same load, not measured; the pacer then goes on into the measurement ...");
                await Task.WhenAny(Task.Delay(TimeSpan.FromSeconds(options.WarmupSeconds)), sending).ConfigureAwait(false);
            }

            brokerBefore = await broker.ScrapeAsync().ConfigureAwait(false);
            harnessCpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
            control.MeasureRequested = true;
            await Task.WhenAny(control.Measuring.Task, sending).ConfigureAwait(false);
            if (sending.IsFaulted)
            {
                await sending.ConfigureAwait(false); // the pacer failed: report why
            }

            measureStart = Stopwatch.GetTimestamp();
            measureStartUtc = DateTime.UtcNow;
            sampling = sampler.RunAsync(broker.ScrapeAsync, stopSampling.Token);
            stopSending.CancelAfter(options.Duration);
        }
        else
        {
            if (options.WarmupSeconds > 0)
            {
                // Same load, not counted: the broker's hot paths get JIT-compiled (tier 1 with PGO) and its pools filled.
                Console.WriteLine($"warm-up: {options.WarmupSeconds} s of the same load, not measured ...");
                using var stopWarmup = new CancellationTokenSource(TimeSpan.FromSeconds(options.WarmupSeconds));
                await DrainAfterAsync(StartSending(pairs, long.MaxValue, stopWarmup.Token), pairs).ConfigureAwait(false);
            }

            foreach (var p in pairs)
            {
                p.StartMeasuring();
            }

            brokerBefore = await broker.ScrapeAsync().ConfigureAwait(false);
            harnessCpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
            stopSending.CancelAfter(options.Duration);
            sending = StartSending(pairs, perPairLimit, stopSending.Token);
        }

        var drained = DrainAfterAsync(sending, pairs);
        var progress = new LiveProgress("pairs", "msgs", stats,
            () => $"in flight {Volatile.Read(ref stats.Sent) - Volatile.Read(ref stats.Completed):N0}");
        await progress.RunAsync(drained).ConfigureAwait(false);
        var elapsed = await drained.ConfigureAwait(false);
        result.DurationS = Math.Round(elapsed.TotalSeconds, 3);

        await stopSampling.CancelAsync().ConfigureAwait(false);
        await sampling.ConfigureAwait(false);
        var scrape = await broker.ScrapeAsync().ConfigureAwait(false);
        var harnessCpu = (Process.GetCurrentProcess().TotalProcessorTime - harnessCpuBefore).TotalSeconds;
        if (options.MetricsPath is not null && broker.LastMetricsText is not null)
        {
            await File.WriteAllTextAsync(options.MetricsPath, broker.LastMetricsText).ConfigureAwait(false);
        }
        await stopAll.CancelAsync().ConfigureAwait(false);
        foreach (var p in pairs)
        {
            p.Close();
        }

        await Task.WhenAll(loops).ConfigureAwait(false);

        result.Sent = Volatile.Read(ref stats.Sent);
        result.SentAcked = Volatile.Read(ref stats.Acked);
        result.Delivered = Volatile.Read(ref stats.Completed);
        result.Errors = Volatile.Read(ref stats.Errors);
        result.Gaps = Volatile.Read(ref stats.Gaps);
        result.Duplicates = Volatile.Read(ref stats.Duplicates);
        result.Lost = Math.Max(0, result.Sent - result.Delivered - result.Errors);
        result.ThroughputPerS = Math.Round(result.Delivered / elapsed.TotalSeconds, 1);
        result.LatencyMs = stats.Latency.Total().Summarize();
        result.Series = progress.Series;
        var delivered = Math.Max(1, result.Delivered);
        result.Figures["sent_out_of_order"] = Volatile.Read(ref stats.SentOutOfOrder);
        result.Figures["harness_cpu_cores"] = Math.Round(harnessCpu / elapsed.TotalSeconds, 2);
        result.Figures["harness_cpu_us_per_message"] = Math.Round(harnessCpu * 1e6 / delivered, 2);
        if (scrape is not null && brokerBefore is not null)
        {
            var brokerCpu = scrape.CpuSeconds - brokerBefore.CpuSeconds;
            result.Figures["broker_cpu_cores"] = Math.Round(brokerCpu / elapsed.TotalSeconds, 2);
            result.Figures["broker_cpu_us_per_message"] = Math.Round(brokerCpu * 1e6 / delivered, 2);
            var commits = scrape.Get("chatbroker_storage_commits_total") - brokerBefore.Get("chatbroker_storage_commits_total");
            if (commits > 0)
            {
                result.Figures["storage_commits_per_s"] = Math.Round(commits / elapsed.TotalSeconds, 1);
                result.Figures["storage_mean_batch_requests"] = Math.Round((scrape.Get("chatbroker_storage_batch_size_sum") - brokerBefore.Get("chatbroker_storage_batch_size_sum")) / commits, 1);
                result.Figures["storage_mean_commit_ms"] = Math.Round((scrape.Get("chatbroker_storage_commit_latency_milliseconds_sum") - brokerBefore.Get("chatbroker_storage_commit_latency_milliseconds_sum")) / commits, 3);
            }

            var sends = scrape.Get("chatbroker_send_duration_seconds_count") - brokerBefore.Get("chatbroker_send_duration_seconds_count");
            if (sends > 0)
            {
                result.Figures["broker_mean_send_to_sent_ms"] = Math.Round((scrape.Get("chatbroker_send_duration_seconds_sum") - brokerBefore.Get("chatbroker_send_duration_seconds_sum")) * 1000 / sends, 3);
            }

            result.Figures["broker_rss_mb_end"] = Math.Round(scrape.ResidentBytes / 1048576.0, 1);
            BrokerMetricsSample.AddGcFigures(result.Figures, brokerBefore, scrape, delivered, elapsed.TotalSeconds);
            result.Figures["broker_messages_in_total"] = scrape.MessagesIn;
            result.Figures["broker_messages_out_total"] = scrape.MessagesOut;
        }

        if (options.Rate > 0)
        {
            StallReport.Complete(result, stats.Stalls!, measureStart, measureStartUtc, sampler, broker.DataDirectory);
        }

        if (options.Rate > 0)
        {
            result.AddTarget("p50 at a fixed rate (ms)", result.LatencyMs.P50Ms, "<=", 0.5);
            result.AddTarget("p99 at a fixed rate (ms)", result.LatencyMs.P99Ms, "<=", 2);
            result.AddTarget("delivered rate vs --rate (messages/s)", result.ThroughputPerS, ">=", options.Rate * 0.95);
        }
        else
        {
            result.AddTarget("closed-loop delivered (messages/s)", result.ThroughputPerS, ">=", 50_000);
            result.AddTarget("closed-loop p99 (ms)", result.LatencyMs.P99Ms, "<=", 20);
        }

        if (result.Figures["sent_out_of_order"] > 0)
        {
            result.Notes.Add("BROKER BUG: SENTs of one conversation came back out of SEND order (docs/protocol.md §5 promises SEND order); counted in sent_out_of_order, not in errors");
        }

        result.Notes.Add("latency: body stamp (Stopwatch, taken just before the socket write) to DELIVER parsed at the receiver; the conversation-opening message of each pair is not counted");
        result.Notes.Add("throughput: messages delivered / (time from first SEND until every SENT and DELIVER arrived)");
        if (options.Rate > 0)
        {
            result.Notes.Add($"pacing: one message every {1e6 / options.Rate:0.#} µs, each sent when due (pairs phase-shifted, nanosleep between), not a burst per millisecond; the pacer reads the SENTs that have arrived right after each send (no harness thread wakes for a SENT)");
        }
        return result;
    }

    /// <summary>Closed loop: each pair keeps its window of SENDs in flight.</summary>
    private static Task StartSending(Pair[] pairs, long perPairLimit, CancellationToken stop)
    {
        var senders = new Task[pairs.Length];
        for (var i = 0; i < pairs.Length; i++)
        {
            senders[i] = pairs[i].SendClosedLoopAsync(perPairLimit, stop);
        }

        return Task.WhenAll(senders);
    }

    /// <summary>Stops when sending is done and every pair has its SENTs and DELIVERs (or 15 s passed); returns the measured time.</summary>
    private static async Task<TimeSpan> DrainAfterAsync(Task sending, Pair[] pairs)
    {
        var clock = Stopwatch.StartNew();
        await sending.ConfigureAwait(false);
        var deadline = clock.Elapsed + TimeSpan.FromSeconds(15);
        while (clock.Elapsed < deadline)
        {
            var done = true;
            foreach (var p in pairs)
            {
                p.ReadSents(); // a fixed rate's senders have no receive loop (the pacer has stopped)
                if (!p.Settled)
                {
                    done = false;
                }
            }

            if (done)
            {
                break;
            }

            await Task.Delay(5).ConfigureAwait(false);
        }

        return clock.Elapsed;
    }

    /// <summary>What the main thread tells the pacer, and what the pacer answers.</summary>
    private sealed class PacerControl(long perPairLimit)
    {
        /// <summary>Set by the main thread: from the pacer's next send on, messages are measured.</summary>
        public volatile bool MeasureRequested;

        /// <summary>Completed by the pacer when it has switched every pair to measuring.</summary>
        public TaskCompletionSource Measuring { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Measured messages per pair (--count), after which the pacer stops.</summary>
        public long PerPairLimit => perPairLimit;
    }

    /// <summary>
    /// Fixed rate: pair i's k-th message is due at (k - i/N) / (rate/N) seconds after the pacer started, so the
    /// pairs' messages are evenly spaced (100 µs apart at 10,000/s over 100 pairs). One thread sends each message
    /// when it is due and sleeps until the next one (<see cref="PreciseSleep"/>); a message found late is sent at
    /// once, so the total stays --rate per second. The schedule runs through the warm-up into the measurement:
    /// when <see cref="PacerControl.MeasureRequested"/> is set, this thread switches every pair to measuring
    /// between two sends, and from then on stops at the per-pair limit or when <paramref name="stop"/> fires.
    /// The pacer used to wake once per millisecond (Thread.Sleep(1)) and send whatever had come due, i.e.
    /// bursts of ~10 messages that queued behind each other in the broker (docs/performance.md has both).
    /// </summary>
    private static void Pace(Pair[] pairs, double rate, PacerControl control, CancellationToken stop)
    {
        PreciseSleep.UseFineTimerSlack();
        var perPair = rate / pairs.Length;
        var limit = control.PerPairLimit;
        var start = Stopwatch.GetTimestamp();
        var sentBefore = new long[pairs.Length];
        for (var i = 0; i < pairs.Length; i++)
        {
            sentBefore[i] = pairs[i].TotalSent;
        }

        var measuring = false;
        var buffer = new byte[MaxBatch * Wire.MaxSendLength(pairs[0].BodySize)];
        while (!stop.IsCancellationRequested)
        {
            if (!measuring && control.MeasureRequested)
            {
                foreach (var p in pairs)
                {
                    p.StartMeasuring();
                }

                measuring = true;
                control.Measuring.TrySetResult();
            }

            var elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var all = true;
            var nextDue = double.MaxValue;
            for (var i = 0; i < pairs.Length; i++)
            {
                var p = pairs[i];
                var phase = (double)i / pairs.Length;
                var paced = p.TotalSent - sentBefore[i];
                var due = (long)((elapsed * perPair) + phase) - paced;
                if (measuring)
                {
                    due = Math.Min(due, limit - p.PhaseSent);
                }

                if (due > 0)
                {
                    p.SendNow(buffer, (int)Math.Min(due, MaxBatch));
                    p.ReadSents(); // earlier SENTs of this pair, arrived long ago: no thread woke for them
                    paced = p.TotalSent - sentBefore[i];
                }

                if (!measuring || p.PhaseSent < limit)
                {
                    all = false;
                    // The next message of this pair is due when elapsed * perPair + phase reaches paced + 1.
                    nextDue = Math.Min(nextDue, (paced + 1 - phase) / perPair);
                }
            }

            if (all)
            {
                return;
            }

            PreciseSleep.Until(start, nextDue);
        }
    }

    private static async Task ForEachAsync<T>(IReadOnlyList<T> items, int parallel, Func<T, Task> action)
    {
        var next = -1;
        var workers = new Task[Math.Min(parallel, items.Count)];
        for (var w = 0; w < workers.Length; w++)
        {
            workers[w] = Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < items.Count)
                {
                    await action(items[i]).ConfigureAwait(false);
                }
            });
        }

        await Task.WhenAll(workers).ConfigureAwait(false);
    }

    /// <summary>One sender device and one receiver device of two users, and everything checked about their conversation.</summary>
    private sealed class Pair(int index, string runId, RunOptions options, LoadStats stats, ClientTransport transport, TransportEndPoints? endPoints)
    {
        private readonly string _sender = $"load-{runId}-s{index}";
        private readonly string _receiver = $"load-{runId}-r{index}";
        private readonly SendWindow _window = new(options.Window);
        private readonly TaskCompletionSource<ulong> _opened = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private SenderHandler? _senderHandlerInstance;
        private bool _senderClosed;
        private RawConnection _senderConnection = null!;
        private RawConnection _receiverConnection = null!;
        private ulong _conversationId;
        private ulong _nextClientMsgId;
        private long _sent;
        private long _phaseStart = 1;
        private bool _measuring;
        private ulong _firstMeasuredId = ulong.MaxValue;
        private long _acked;
        private long _delivered;
        private long _errors;

        public int BodySize => options.BodySize;

        public LoadStats Stats => stats;

        private SenderHandler SenderFrames => _senderHandlerInstance ??= new SenderHandler(this);

        /// <summary>SENDs since the current phase (warm-up or measurement) started.</summary>
        public long PhaseSent => Volatile.Read(ref _sent) - _phaseStart;

        /// <summary>SENDs since the pair connected, the conversation-opening one included.</summary>
        public long TotalSent => Volatile.Read(ref _sent);

        /// <summary>From now on messages carry their number (0 = not measured) and count in the run's figures.</summary>
        public void StartMeasuring()
        {
            _phaseStart = Volatile.Read(ref _sent);
            _firstMeasuredId = _nextClientMsgId + 1;
            _measuring = true;
        }

        /// <summary>Every SEND has its SENT (or ERROR) and every stored message its DELIVER.</summary>
        public bool Settled
        {
            get
            {
                var sent = Volatile.Read(ref _sent);
                var errors = Volatile.Read(ref _errors);
                return Volatile.Read(ref _acked) + errors >= sent && Volatile.Read(ref _delivered) + errors >= sent;
            }
        }

        public async Task ConnectAsync(BrokerNodes broker, CancellationToken cancellationToken)
        {
            // In a cluster the sender's node and the receiver's differ, so every message crosses the mesh.
            var (senderNode, receiverNode) = ClusterPlacement.Pair(index, broker.Count);
            _receiverConnection = await LoginAsync(broker.EndPoint(receiverNode), broker, _receiver, index * 2, cancellationToken).ConfigureAwait(false);
            if (options.Rate > 0)
            {
                // At a fixed rate the sender's socket is only ever used synchronously, so .NET never registers
                // it with its epoll thread: the SENTs that arrive on it wake no harness thread. The pacer reads
                // them without waiting, right after each send (ReadSents); by the time a pair's next message is
                // due (10 ms later at 10,000/s over 100 pairs) its earlier SENTs have long arrived. At 10,000
                // messages/s this saves about a quarter of the harness's socket wake-ups (LoadTests/README.md).
                _senderConnection = await Task.Run(() => Login(broker.EndPoint(senderNode), broker, _sender, (index * 2) + 1), cancellationToken).ConfigureAwait(false);
            }
            else
            {
                _senderConnection = await LoginAsync(broker.EndPoint(senderNode), broker, _sender, (index * 2) + 1, cancellationToken).ConfigureAwait(false);
            }
        }

        private RawConnection Login(IPEndPoint node, BrokerNodes broker, string user, long sourceIndex)
        {
            var connection = RawConnection.Connect(node, options.SourceAddress(node, sourceIndex), 128 * 1024);
            var connack = connection.Login(Wire.Connect(user, "d1", broker.Token(user, "d1"), 0, 1800));
            if (connack.Reason != ReasonCode.Success)
            {
                connection.Dispose();
                throw new InvalidOperationException($"login of {user} failed: {connack.Reason} {connack.Message}");
            }

            return connection;
        }

        private async Task<RawConnection> LoginAsync(IPEndPoint node, BrokerNodes broker, string user, long sourceIndex, CancellationToken cancellationToken)
        {
            var target = endPoints?.For(transport) ?? node;
            var connection = await RawConnection.ConnectAsync(transport, target, options.SourceAddress(target, sourceIndex), 128 * 1024, cancellationToken).ConfigureAwait(false);
            var connack = await connection.LoginAsync(Wire.Connect(user, "d1", broker.Token(user, "d1"), 0, 1800), cancellationToken).ConfigureAwait(false);
            if (connack.Reason != ReasonCode.Success)
            {
                connection.Dispose();
                throw new InvalidOperationException($"login of {user} failed: {connack.Reason} {connack.Message}");
            }

            return connection;
        }

        public Task StartReceiving(CancellationToken cancellationToken)
        {
            var receiving = Task.Run(() => _receiverConnection.ReceiveLoopAsync(new ReceiverHandler(this), cancellationToken), cancellationToken);
            return options.Rate > 0
                ? receiving // the sender's SENTs are read by ReadSents
                : Task.WhenAll(receiving, Task.Run(() => _senderConnection.ReceiveLoopAsync(SenderFrames, cancellationToken), cancellationToken));
        }

        /// <summary>
        /// At a fixed rate: reads the SENTs that have arrived on the sender's connection, without waiting. Called
        /// by one thread at a time: the pacer while it paces, else the thread that waits for the pair to settle.
        /// </summary>
        public void ReadSents()
        {
            if (options.Rate > 0 && !_senderClosed && !_senderConnection.ReceiveAvailable(SenderFrames))
            {
                _senderClosed = true; // its missing SENTs show as lost
                Console.Error.WriteLine($"pair {_sender}: the broker closed the connection");
            }
        }

        public async Task OpenConversationAsync(CancellationToken cancellationToken)
        {
            // The opening message holds a window credit like any other; its DELIVER gives it back.
            await _window.TakeAsync(1, cancellationToken).ConfigureAwait(false);
            var buffer = new byte[Wire.MaxSendLength(options.BodySize)];
            var n = Wire.WriteSend(buffer, ++_nextClientMsgId, 0, Encoding.UTF8.GetBytes(_receiver), LoadStats.Now(), 0, options.BodySize);
            Interlocked.Increment(ref _sent);
            if (options.Rate > 0)
            {
                _senderConnection.Send(buffer.AsSpan(0, n));
                var deadline = Stopwatch.GetTimestamp() + (30 * Stopwatch.Frequency);
                while (!_opened.Task.IsCompleted && Stopwatch.GetTimestamp() < deadline && !cancellationToken.IsCancellationRequested)
                {
                    await Task.Delay(1, cancellationToken).ConfigureAwait(false);
                    ReadSents();
                }
            }
            else
            {
                await _senderConnection.SendAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            }

            _conversationId = await _opened.Task.WaitAsync(TimeSpan.FromSeconds(30), cancellationToken).ConfigureAwait(false);
        }

        public async Task SendClosedLoopAsync(long limit, CancellationToken stop)
        {
            var buffer = new byte[MaxBatch * Wire.MaxSendLength(options.BodySize)];
            try
            {
                while (!stop.IsCancellationRequested && PhaseSent < limit)
                {
                    var n = await _window.TakeAsync((int)Math.Min(MaxBatch, limit - PhaseSent), stop).ConfigureAwait(false);
                    var length = Fill(buffer, n);
                    // Not cancellable: a write cut off by the stop signal would leave counted SENDs half sent.
                    await _senderConnection.SendAsync(buffer.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        /// <summary>The pacer's path: blocking write of <paramref name="n"/> SENDs.</summary>
        public void SendNow(byte[] buffer, int n) => _senderConnection.Send(buffer.AsSpan(0, Fill(buffer, n)));

        private int Fill(byte[] buffer, int n)
        {
            var length = 0;
            var stamp = LoadStats.Now();
            for (var k = 0; k < n; k++)
            {
                ++_nextClientMsgId;
                length += Wire.WriteSend(buffer.AsSpan(length), _nextClientMsgId, _conversationId, default, stamp, _measuring ? _nextClientMsgId : 0, options.BodySize);
            }

            Interlocked.Add(ref _sent, n);
            if (_measuring)
            {
                Interlocked.Add(ref stats.Sent, n);
            }
            return length;
        }

        public void Close()
        {
            _senderConnection.Close();
            _receiverConnection.Close();
        }

        private sealed class SenderHandler(Pair pair) : IFrameHandler
        {
            private ulong _lastSeq;

            public void OnFrame(PacketType type, ReadOnlySpan<byte> body)
            {
                switch (type)
                {
                    case PacketType.Sent:
                        if (!Wire.TryReadSent(body, out var sent))
                        {
                            Interlocked.Increment(ref pair.Stats.Errors);
                            return;
                        }

                        // SENTs of one conversation come back in SEND order with consecutive seqs.
                        if (_lastSeq != 0 && sent.Seq != _lastSeq + 1)
                        {
                            if (Interlocked.Increment(ref pair.Stats.SentOutOfOrder) <= 5)
                            {
                                Console.Error.WriteLine($"pair {pair._sender}: SENT seq {sent.Seq} (client_msg_id {sent.ClientMsgId}) after seq {_lastSeq}");
                            }
                        }

                        _lastSeq = sent.Seq;
                        Interlocked.Increment(ref pair._acked);
                        if (pair._conversationId == 0)
                        {
                            pair._opened.TrySetResult(sent.ConversationId);
                        }
                        else if (sent.ClientMsgId >= Volatile.Read(ref pair._firstMeasuredId))
                        {
                            Interlocked.Increment(ref pair.Stats.Acked);
                        }

                        break;
                    case PacketType.Error:
                        var error = Error.Parser.ParseFrom(body);
                        Console.Error.WriteLine($"pair {pair._sender}: ERROR {error.Reason} {error.Message}");
                        Interlocked.Increment(ref pair._errors);
                        Interlocked.Increment(ref pair.Stats.Errors);
                        pair._window.Return(1);
                        break;
                    case PacketType.Disconnect:
                        var disconnect = Disconnect.Parser.ParseFrom(body);
                        Console.Error.WriteLine($"pair {pair._sender}: DISCONNECT {disconnect.Reason} {disconnect.Message}");
                        Interlocked.Increment(ref pair.Stats.Errors);
                        break;
                }
            }

            public void OnReadDrained()
            {
            }
        }

        private sealed class ReceiverHandler(Pair pair) : IFrameHandler
        {
            private readonly byte[] _ack = new byte[16];
            private ulong _expectedSeq = 1;
            private ulong _inboxSeq;
            private ulong _ackedInboxSeq;
            private long _lastAckTicks = LoadStats.Now();
            private int _returned;

            public void OnFrame(PacketType type, ReadOnlySpan<byte> body)
            {
                switch (type)
                {
                    case PacketType.Deliver:
                        var now = LoadStats.Now();
                        if (!Wire.TryReadDeliver(body, out var deliver))
                        {
                            Interlocked.Increment(ref pair.Stats.Errors);
                            return;
                        }

                        _inboxSeq = Math.Max(_inboxSeq, deliver.InboxSeq);
                        if (deliver.Seq < _expectedSeq)
                        {
                            Interlocked.Increment(ref pair.Stats.Duplicates);
                            return;
                        }

                        if (deliver.Seq > _expectedSeq)
                        {
                            Interlocked.Add(ref pair.Stats.Gaps, (long)(deliver.Seq - _expectedSeq));
                        }

                        _expectedSeq = deliver.Seq + 1;
                        Interlocked.Increment(ref pair._delivered);
                        // Number 0 marks the conversation-opening and warm-up messages: not part of the measurement.
                        if (deliver.Body.Length >= Wire.StampBytes && System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(deliver.Body[8..]) != 0)
                        {
                            pair.Stats.RecordDelivery(Wire.ReadStamp(deliver.Body), now);
                        }

                        _returned++;
                        break;
                    case PacketType.Disconnect:
                        var disconnect = Disconnect.Parser.ParseFrom(body);
                        Console.Error.WriteLine($"pair {pair._receiver}: DISCONNECT {disconnect.Reason} {disconnect.Message}");
                        Interlocked.Increment(ref pair.Stats.Errors);
                        break;
                    case PacketType.Error:
                        var error = Error.Parser.ParseFrom(body);
                        Console.Error.WriteLine($"pair {pair._receiver}: ERROR {error.Reason} {error.Message}");
                        Interlocked.Increment(ref pair.Stats.Errors);
                        break;
                }
            }

            public void OnReadDrained()
            {
                if (_returned > 0)
                {
                    pair._window.Return(_returned);
                    _returned = 0;
                }

                // ACK in batches, as a phone would: every 100 messages or 50 ms, never per message.
                var now = LoadStats.Now();
                if (_inboxSeq > _ackedInboxSeq && (_inboxSeq - _ackedInboxSeq >= 100 || Stopwatch.GetElapsedTime(_lastAckTicks, now).TotalMilliseconds >= 50))
                {
                    var n = Wire.WriteAck(_ack, _inboxSeq);
                    try
                    {
                        pair._receiverConnection.Send(_ack.AsSpan(0, n));
                    }
                    catch (System.Net.Sockets.SocketException)
                    {
                    }

                    _ackedInboxSeq = _inboxSeq;
                    _lastAckTicks = now;
                }
            }
        }
    }
}
