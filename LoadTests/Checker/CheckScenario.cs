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

    /// <summary>Groups of <see cref="GroupMembers"/> users each, every member sending (besides the pairs).</summary>
    public int Groups { get; init; }

    /// <summary>Members per group, at most the broker's fan-out threshold (100: inbox fan-out; larger groups resume by per-group cursors, which the checker's devices do not keep).</summary>
    public int GroupMembers { get; init; } = 5;

    /// <summary>Bound of the history; the senders stop at half of it (the final reads need the rest).</summary>
    public int MaxEvents { get; init; } = 4_000_000;
}

/// <summary>The outcome of one check run; <see cref="Seed"/> is null when a saved history is judged again (the file name has it).</summary>
public sealed record CheckOutcome(CheckReport Report, int? Seed, string HistoryPath, int Faults, TimeSpan Elapsed);

/// <summary>
/// `check`: a Jepsen-style run. N pairs (sender → receiver, one direct conversation each) and optional groups (every
/// member sends) send continuously through
/// <see cref="CheckerDevice"/>s while a nemesis hurts the broker on a seeded schedule; every step goes to a history;
/// after the sending stops and the nemesis has healed, every send resolves and every receiver catches up (bounded),
/// then a fresh device of every user reads its inbox from cursor 0 and one member's (a pair's receiver) pages each conversation's
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
        log.WriteLine($"check: seed {check.Seed}, run {runId}, {options.Pairs} pairs, {check.Groups} groups of {check.GroupMembers}, {options.Duration.TotalSeconds:0} s, nemesis {nemesis.Name} every ~{check.NemesisInterval.TotalSeconds:0.#} s, nodes {string.Join(',', endpoints)}");
        log.WriteLine($"check: history {historyPath}");

        var conversations = new List<CheckedConversation>();
        var devices = new List<CheckerDevice>();
        CheckerDevice NewDevice(string user)
        {
            var device = new CheckerDevice(user, "d1", endpoints, broker.Token, history, random.Next(), CheckerDevice.Mode.Live, options.Window, options.BodySize);
            devices.Add(device);
            return device;
        }

        for (var i = 0; i < options.Pairs; i++)
        {
            var sender = NewDevice($"k{runId}s{i}");
            var receiver = NewDevice($"k{runId}r{i}");
            conversations.Add(new CheckedConversation([sender, receiver], [sender], receiver.User));
        }

        for (var g = 0; g < check.Groups; g++)
        {
            var members = new CheckerDevice[check.GroupMembers];
            for (var j = 0; j < members.Length; j++)
            {
                members[j] = NewDevice($"k{runId}g{g}m{j}");
            }

            conversations.Add(new CheckedConversation(members, members, null));
        }

        using var stopDevices = new CancellationTokenSource();
        var running = new List<Task>();
        foreach (var d in devices)
        {
            running.Add(d.RunAsync(stopDevices.Token));
        }

        // Everyone connected and synced first, so each receiver gets its conversations live from the first message.
        await Task.WhenAll(devices.ConvertAll(d => d.Synced)).WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
        foreach (var c in conversations)
        {
            if (c.DirectTo is null)
            {
                // Group creation is not idempotent: it happens before the nemesis starts.
                c.Id = await c.Members[0].CreateGroupAsync("check", Array.ConvertAll(c.Members[1..], m => m.User), TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            }
        }

        using var stopSending = new CancellationTokenSource(options.Duration);
        var senderCount = 0;
        foreach (var c in conversations)
        {
            senderCount += c.Senders.Length;
        }

        var perSenderLimit = options.Count > 0 ? (options.Count + senderCount - 1) / Math.Max(1, senderCount) : long.MaxValue;
        var sending = new List<Task>();
        foreach (var c in conversations)
        {
            foreach (var sender in c.Senders)
            {
                sending.Add(SendLoopAsync(sender, c.DirectTo, c.Id, perSenderLimit, history, stopSending.Token));
            }
        }

        var nemesisRandom = new Random(random.Next());
        var faulting = NemesisSchedule.RunAsync(nemesis, check.NemesisInterval, nemesisRandom, history, stopSending.Token);
        await Task.WhenAll(sending).ConfigureAwait(false);
        var faults = await faulting.ConfigureAwait(false);
        log.WriteLine($"check: sending stopped after {clock.Elapsed.TotalSeconds:0.0} s, {faults} faults, {history.Count:N0} events{(history.NearlyFull ? " (the history reached half of --max-events: sending stopped there)" : "")}; draining ...");

        var drained = await DrainAsync(conversations, check.DrainTimeout).ConfigureAwait(false);
        log.WriteLine(drained ? "check: drained" : $"check: drain timed out after {check.DrainTimeout.TotalSeconds:0} s (the checker will say what is missing)");
        await stopDevices.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(running).ConfigureAwait(false);

        await FinalReadAsync(conversations, devices, endpoints, broker, history, random).ConfigureAwait(false);
        var report = HistoryChecker.Check(history.Snapshot(), history.Overflowed);
        return new CheckOutcome(report, check.Seed, historyPath, faults, clock.Elapsed);
    }

    public static void Print(CheckOutcome outcome, TextWriter output)
    {
        var r = outcome.Report;
        output.WriteLine();
        output.WriteLine(outcome.Seed is { } seed
            ? $"check {(r.Passed ? "PASSED" : "FAILED")}: seed {seed}, {outcome.Faults} faults, {outcome.Elapsed.TotalSeconds:0.0} s"
            : $"check {(r.Passed ? "PASSED" : "FAILED")} (a saved history)");
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

    private static async Task SendLoopAsync(CheckerDevice sender, string? toUser, ulong conversation, long limit, HistoryRecorder history, CancellationToken stop)
    {
        try
        {
            for (long n = 0; n < limit && !history.NearlyFull; n++)
            {
                await sender.SendAsync(toUser, conversation, stop).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Until every send has an outcome and every member has every acked message of its conversation, or the timeout.</summary>
    private static async Task<bool> DrainAsync(List<CheckedConversation> conversations, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        while (deadline.Elapsed < timeout)
        {
            var done = true;
            foreach (var c in conversations)
            {
                if (!c.IsCaughtUp())
                {
                    done = false;
                    break;
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

    /// <summary>
    /// A fresh device per user reads its inbox from cursor 0; the last member's one also pages its conversation's
    /// HISTORY back to seq 1 (one reader per conversation, so the final read holds each message once).
    /// </summary>
    private static async Task FinalReadAsync(List<CheckedConversation> conversations, List<CheckerDevice> devices, List<IPEndPoint> endpoints, BrokerLauncher broker, HistoryRecorder history, Random random)
    {
        var pagedBy = new Dictionary<string, List<ulong>>();
        foreach (var c in conversations)
        {
            var ids = c.KnownIds();
            var users = Array.ConvertAll(c.Members, m => m.User);
            var reader = c.Members[^1].User;
            if (!pagedBy.TryGetValue(reader, out var list))
            {
                pagedBy[reader] = list = [];
            }

            foreach (var id in ids)
            {
                history.Record(new HistoryEvent { Op = HistoryEvent.Members, Conv = id, MemberUsers = users });
                list.Add(id);
            }
        }

        using var gate = new SemaphoreSlim(16);
        var reads = new List<Task>();
        foreach (var d in devices)
        {
            reads.Add(ReadAsUserAsync(d.User, pagedBy.GetValueOrDefault(d.User) ?? [], random.Next()));
        }

        await Task.WhenAll(reads).ConfigureAwait(false);

        async Task ReadAsUserAsync(string user, List<ulong> page, int seed)
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
                    foreach (var conv in page)
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

    /// <summary>
    /// A conversation of the run: a pair (one sender, a direct chat to <see cref="DirectTo"/>; its id comes with the
    /// first SENT) or a group (every member sends; <see cref="Id"/> set at creation).
    /// </summary>
    private sealed class CheckedConversation(CheckerDevice[] members, CheckerDevice[] senders, string? directTo)
    {
        public CheckerDevice[] Members { get; } = members;

        public CheckerDevice[] Senders { get; } = senders;

        public string? DirectTo { get; } = directTo;

        public ulong Id { get; set; }

        public HashSet<ulong> KnownIds()
        {
            var ids = new HashSet<ulong>();
            if (Id != 0)
            {
                ids.Add(Id);
            }

            foreach (var m in Members)
            {
                ids.UnionWith(m.AckedMaxSeq().Keys);
                ids.UnionWith(m.SurfacedConversations());
            }

            return ids;
        }

        /// <summary>No send without an outcome, and every member has surfaced as many seqs as the highest acked one.</summary>
        public bool IsCaughtUp()
        {
            var maxAcked = new Dictionary<ulong, ulong>();
            foreach (var m in Members)
            {
                if (m.PendingSends > 0)
                {
                    return false;
                }

                foreach (var (conv, seq) in m.AckedMaxSeq())
                {
                    maxAcked[conv] = Math.Max(maxAcked.GetValueOrDefault(conv), seq);
                }
            }

            foreach (var (conv, seq) in maxAcked)
            {
                foreach (var m in Members)
                {
                    if ((ulong)m.SurfacedCount(conv) < seq)
                    {
                        return false;
                    }
                }
            }

            return true;
        }
    }
}
