using System.Diagnostics;
using System.Globalization;
using System.Net;

namespace ChatBroker.LoadTests.Checker;

/// <summary>The check scenario's own settings (the shared ones — pairs, duration, durability, secret — are in <see cref="RunOptions"/>).</summary>
public sealed record CheckOptions
{
    /// <summary>host:port of each node; empty = start a broker.</summary>
    public IReadOnlyList<string> Targets { get; init; } = [];

    public int Seed { get; init; }

    public string Nemesis { get; init; } = "none";

    public TimeSpan NemesisInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Where the history goes; null = a file in the temp directory named after the run and the seed.</summary>
    public string? HistoryPath { get; init; }

    /// <summary>How long the run may take after the sending stops for every send to resolve and every receiver to catch up.</summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Bound of the history; the senders stop at half of it (the final reads need the rest).</summary>
    public int MaxEvents { get; init; } = 4_000_000;
}

/// <summary>The outcome of one check run.</summary>
public sealed record CheckOutcome(CheckReport Report, int Seed, string HistoryPath, int Faults, TimeSpan Elapsed);

/// <summary>
/// `check`: a Jepsen-style run. N pairs (sender → receiver, one direct conversation each) send continuously through
/// <see cref="CheckerDevice"/>s while a nemesis hurts the broker on a seeded schedule; every step goes to a history;
/// after the sending stops and the nemesis has healed, every send resolves and every receiver catches up (bounded),
/// then a fresh device of every user reads its inbox from cursor 0 and the receiver's one pages its conversation's
/// HISTORY from the start. <see cref="HistoryChecker"/> then judges the whole history.
/// </summary>
public static class CheckScenario
{
    public static async Task<CheckOutcome> RunAsync(RunOptions options, CheckOptions check, TextWriter log)
    {
        var clock = Stopwatch.StartNew();
        var runId = Guid.NewGuid().ToString("N")[..6];
        var historyPath = check.HistoryPath ?? Path.Combine(Path.GetTempPath(), $"chatbroker-check-{runId}-seed{check.Seed}.jsonl");
        var random = new Random(check.Seed);

        await using var broker = check.Targets.Count > 0
            ? BrokerLauncher.Target(check.Targets[0], options.Admin, options.SecretFile, options.TokenSecret)
            : await options.OpenBrokerAsync().ConfigureAwait(false);
        var endpoints = new List<IPEndPoint>();
        foreach (var t in check.Targets)
        {
            endpoints.Add(BrokerLauncher.ResolveEndPoint(t));
        }

        if (endpoints.Count == 0)
        {
            endpoints.Add(broker.TcpEndPoint);
        }

        var nemesis = CreateNemesis(check.Nemesis, broker);
        using var history = new HistoryRecorder(historyPath, check.MaxEvents);
        log.WriteLine($"check: seed {check.Seed}, run {runId}, {options.Pairs} pairs, {options.Duration.TotalSeconds:0} s, nemesis {nemesis.Name} every ~{check.NemesisInterval.TotalSeconds:0.#} s, nodes {string.Join(',', endpoints)}");
        log.WriteLine($"check: history {historyPath}");

        var senders = new CheckerDevice[options.Pairs];
        var receivers = new CheckerDevice[options.Pairs];
        for (var i = 0; i < options.Pairs; i++)
        {
            senders[i] = new CheckerDevice($"k{runId}s{i}", "d1", endpoints, broker.Token, history, random.Next(), CheckerDevice.Mode.Live, options.Window, options.BodySize);
            receivers[i] = new CheckerDevice($"k{runId}r{i}", "d1", endpoints, broker.Token, history, random.Next(), CheckerDevice.Mode.Live, options.Window, options.BodySize);
        }

        using var stopDevices = new CancellationTokenSource();
        var running = new List<Task>();
        foreach (var d in receivers)
        {
            running.Add(d.RunAsync(stopDevices.Token));
        }

        // Receivers first and synced, so each gets its conversation live from the first message.
        await Task.WhenAll(Array.ConvertAll(receivers, r => r.Synced)).WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
        foreach (var d in senders)
        {
            running.Add(d.RunAsync(stopDevices.Token));
        }

        using var stopSending = new CancellationTokenSource(options.Duration);
        var perSenderLimit = options.Count > 0 ? (options.Count + options.Pairs - 1) / options.Pairs : long.MaxValue;
        var sending = new Task[options.Pairs];
        for (var i = 0; i < options.Pairs; i++)
        {
            sending[i] = SendLoopAsync(senders[i], receivers[i].User, perSenderLimit, history, stopSending.Token);
        }

        var nemesisRandom = new Random(random.Next());
        var faulting = NemesisSchedule.RunAsync(nemesis, check.NemesisInterval, nemesisRandom, history, stopSending.Token);
        await Task.WhenAll(sending).ConfigureAwait(false);
        var faults = await faulting.ConfigureAwait(false);
        log.WriteLine($"check: sending stopped after {clock.Elapsed.TotalSeconds:0.0} s, {faults} faults, {history.Count:N0} events; draining ...");

        var drained = await DrainAsync(senders, receivers, check.DrainTimeout).ConfigureAwait(false);
        log.WriteLine(drained ? "check: drained" : $"check: drain timed out after {check.DrainTimeout.TotalSeconds:0} s (the checker will say what is missing)");
        await stopDevices.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(running).ConfigureAwait(false);

        await FinalReadAsync(senders, receivers, endpoints, broker, history, random).ConfigureAwait(false);
        var report = HistoryChecker.Check(history.Snapshot(), history.Overflowed);
        return new CheckOutcome(report, check.Seed, historyPath, faults, clock.Elapsed);
    }

    public static void Print(CheckOutcome outcome, TextWriter output)
    {
        var r = outcome.Report;
        output.WriteLine();
        output.WriteLine($"check {(r.Passed ? "PASSED" : "FAILED")}: seed {outcome.Seed}, {outcome.Faults} faults, {outcome.Elapsed.TotalSeconds:0.0} s");
        foreach (var (name, value) in r.Counts())
        {
            output.WriteLine($"  {name,-24} {value.ToString("N0", CultureInfo.InvariantCulture),12}");
        }

        if (r.HistoryOverflowed)
        {
            output.WriteLine("  the history hit --max-events: it is incomplete");
        }

        output.WriteLine($"  history: {outcome.HistoryPath}");
        output.WriteLine($"  re-check: dotnet run -c Release --project LoadTests -- check-history {outcome.HistoryPath}");
    }

    private static INemesis CreateNemesis(string name, BrokerLauncher broker)
    {
        if (name == "none")
        {
            return new NoNemesis();
        }

        if (!broker.CanInjectFaults)
        {
            throw new InvalidOperationException($"--nemesis {name} needs a broker the harness started (no --targets); cluster nemeses come with issue 16");
        }

        IReadOnlyList<IFaultableNode> nodes = [new LocalBrokerNode(broker)];
        return name switch
        {
            "kill" => new KillNemesis(nodes),
            "pause" => new PauseNemesis(nodes),
            _ => throw new ArgumentException("unknown nemesis: " + name),
        };
    }

    private static async Task SendLoopAsync(CheckerDevice sender, string toUser, long limit, HistoryRecorder history, CancellationToken stop)
    {
        try
        {
            for (long n = 0; n < limit && !history.NearlyFull; n++)
            {
                await sender.SendAsync(toUser, stop).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Until every send has an outcome and every receiver has every acked message of its conversation, or the timeout.</summary>
    private static async Task<bool> DrainAsync(CheckerDevice[] senders, CheckerDevice[] receivers, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        while (deadline.Elapsed < timeout)
        {
            var done = true;
            for (var i = 0; i < senders.Length && done; i++)
            {
                if (senders[i].PendingSends > 0)
                {
                    done = false;
                    break;
                }

                foreach (var (conv, maxSeq) in senders[i].AckedMaxSeq())
                {
                    if ((ulong)receivers[i].SurfacedCount(conv) < maxSeq)
                    {
                        done = false;
                        break;
                    }
                }
            }

            if (done)
            {
                return true;
            }

            await tick.WaitForNextTickAsync().ConfigureAwait(false);
        }

        return false;
    }

    /// <summary>A fresh device per user reads its inbox from cursor 0; the receiver's also pages its conversation's HISTORY from seq 1.</summary>
    private static async Task FinalReadAsync(CheckerDevice[] senders, CheckerDevice[] receivers, List<IPEndPoint> endpoints, BrokerLauncher broker, HistoryRecorder history, Random random)
    {
        using var gate = new SemaphoreSlim(16);
        var reads = new List<Task>();
        for (var i = 0; i < senders.Length; i++)
        {
            var conversations = new HashSet<ulong>(senders[i].AckedMaxSeq().Keys);
            conversations.UnionWith(receivers[i].SurfacedConversations());
            foreach (var conv in conversations)
            {
                history.Record(new HistoryEvent { Op = HistoryEvent.Members, Conv = conv, MemberUsers = [senders[i].User, receivers[i].User] });
            }

            reads.Add(ReadAsUserAsync(senders[i].User, [], random.Next()));
            reads.Add(ReadAsUserAsync(receivers[i].User, conversations, random.Next()));
        }

        await Task.WhenAll(reads).ConfigureAwait(false);

        async Task ReadAsUserAsync(string user, IEnumerable<ulong> conversations, int seed)
        {
            await gate.WaitAsync().ConfigureAwait(false);
            try
            {
                var reader = new CheckerDevice(user, "final", endpoints, broker.Token, history, seed, CheckerDevice.Mode.FinalReader, 1, CheckerDevice.BodyIdBytes);
                using var stop = new CancellationTokenSource();
                var run = reader.RunAsync(stop.Token);
                try
                {
                    await reader.Synced.WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
                    foreach (var conv in conversations)
                    {
                        await reader.ReadConversationAsync(conv, TimeSpan.FromSeconds(60), stop.Token).ConfigureAwait(false);
                    }
                }
                finally
                {
                    await stop.CancelAsync().ConfigureAwait(false);
                    await run.ConfigureAwait(false);
                }
            }
            finally
            {
                gate.Release();
            }
        }
    }
}
