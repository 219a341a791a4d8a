using System.Diagnostics;
using System.Globalization;
using System.Net;
using ChatBroker.LoadTests.Cluster;

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

    /// <summary>How long each fault lasts before its heal; null = a seeded 0.2–1.5 s.</summary>
    public TimeSpan? NemesisHold { get; init; }

    /// <summary>At most this many faults (0 = as many as the duration allows).</summary>
    public int MaxFaults { get; init; }

    /// <summary>mix: nodes each fault hits at once.</summary>
    public int NemesisConcurrency { get; init; } = 1;

    /// <summary>The nemeses `check --nemesis` knows.</summary>
    public static readonly string[] Nemeses = ["none", "kill", "pause", "etcd", "join-leave", "partition", "mix"];

    /// <summary>
    /// Why <paramref name="nemesis"/> cannot run here, or null when it can: kill and pause need processes the
    /// harness started (one broker or a cluster), etcd and join-leave need a cluster it started (--cluster N;
    /// join-leave needs at least 2 nodes, so that one can leave).
    /// </summary>
    public static string? Validate(string nemesis, int clusterNodes, bool harnessStartedBroker, bool netns = false)
    {
        if (Array.IndexOf(Nemeses, nemesis) < 0)
        {
            return $"unknown nemesis '{nemesis}' (one of {string.Join(", ", Nemeses)})";
        }

        return nemesis switch
        {
            "kill" or "pause" when clusterNodes == 0 && !harnessStartedBroker =>
                $"--nemesis {nemesis} needs processes the harness started: no --targets (one broker) or --cluster N",
            "etcd" when clusterNodes == 0 => "--nemesis etcd needs a cluster the harness started (--cluster N)",
            "join-leave" when clusterNodes < 2 => "--nemesis join-leave needs --cluster 2 or more (one node joins, another leaves)",
            "partition" when clusterNodes < 2 || !netns => "--nemesis partition needs --cluster 2 or more and --netns (cuts between the nodes' namespaces)",
            "mix" when clusterNodes < 2 => "--nemesis mix needs --cluster 2 or more",
            _ => null,
        };
    }
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
        log = TextWriter.Synchronized(log); // the nemesis and the final readers write from their own tasks
        var clock = Stopwatch.StartNew();
        var runId = Guid.NewGuid().ToString("N")[..6];
        var historyPath = check.HistoryPath ?? Path.Combine(Path.GetTempPath(), $"chatbroker-check-{runId}-seed{check.Seed}.jsonl");
        var random = new Random(check.Seed);
        BrokerLog.Directory ??= Path.Combine(Path.GetTempPath(), $"chatbroker-check-{runId}-seed{check.Seed}-logs");
        log.WriteLine($"check: broker logs in {BrokerLog.Directory}");

        // One broker (started, or the first of --targets), or a cluster the harness starts (--cluster N).
        await using var cluster = options.Cluster > 0
            ? await ClusterLauncher.StartAsync(options.Cluster, options.Durability, options.BrokerSettings, log, NetnsLayout.FromEnvironment()).ConfigureAwait(false)
            : null;
        await using var broker = cluster is not null ? null
            : check.Targets.Count > 0
            ? BrokerLauncher.Target(check.Targets[0], options.Admin, options.SecretFile, options.TokenSecret)
            : await options.OpenBrokerAsync().ConfigureAwait(false);
        var endpoints = new List<IPEndPoint>();
        foreach (var t in check.Targets)
        {
            endpoints.Add(BrokerLauncher.ResolveEndPoint(t));
        }

        if (cluster is not null)
        {
            foreach (var n in cluster.Nodes)
            {
                endpoints.Add(n.Client);
            }
        }
        else if (endpoints.Count == 0)
        {
            endpoints.Add(broker!.TcpEndPoint);
        }

        var targets = new TargetSet(endpoints);
        var secret = Tokens.TokenSecret.FromBase64(cluster?.SecretBase64 ?? broker!.SecretBase64);
        string Token(string user, string device) => Tokens.AccessToken.Issue(secret, user, device, TimeSpan.FromHours(2), DateTimeOffset.UtcNow);

        using var history = new HistoryRecorder(historyPath, check.MaxEvents);
        var nemesis = CreateNemesis(check.Nemesis, check.NemesisConcurrency, broker, cluster, targets, history, log);
        if (cluster is not null)
        {
            // The ring at the start; the join-leave nemesis records every later one.
            await JoinLeaveNemesis.RecordMapAsync(cluster, history).ConfigureAwait(false);
        }

        log.WriteLine($"check: seed {check.Seed}, run {runId}, {options.Pairs} pairs, {check.Groups} groups of {check.GroupMembers}, {options.Duration.TotalSeconds:0} s, nemesis {nemesis.Name} every ~{check.NemesisInterval.TotalSeconds:0.#} s{(check.MaxFaults > 0 ? $" (at most {check.MaxFaults})" : "")}, nodes {string.Join(',', endpoints)}");
        log.WriteLine($"check: history {historyPath}");

        var conversations = new List<CheckedConversation>();
        var devices = new List<CheckerDevice>();
        CheckerDevice NewDevice(string user)
        {
            var device = new CheckerDevice(user, "d1", targets, Token, history, random.Next(), CheckerDevice.Mode.Live, options.Window, options.BodySize);
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
        var faulting = NemesisSchedule.RunAsync(nemesis, check.NemesisInterval, nemesisRandom, history, check.MaxFaults, check.NemesisHold, stopSending.Token);
        await Task.WhenAll(sending).ConfigureAwait(false);
        var faults = await faulting.ConfigureAwait(false);
        log.WriteLine($"check: sending stopped after {clock.Elapsed.TotalSeconds:0.0} s, {faults} faults, {history.Count:N0} events{(history.NearlyFull ? " (the history reached half of --max-events: sending stopped there)" : "")}; draining ...");

        var drained = await DrainAsync(conversations, check.DrainTimeout).ConfigureAwait(false);
        log.WriteLine(drained ? "check: drained" : $"check: drain timed out after {check.DrainTimeout.TotalSeconds:0} s (the checker will say what is missing)");
        if (cluster is not null)
        {
            await DumpMetricsAsync(cluster, log).ConfigureAwait(false);
        }
        await stopDevices.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(running).ConfigureAwait(false);

        await FinalReadAsync(conversations, devices, targets, Token, history, random, log).ConfigureAwait(false);
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

        if (r.Owners.Owners.Count > 0)
        {
            // Issue 15 (c): a node killed, the others' ranges unaffected. Refused/failed count the SENDs of the
            // conversations each node owned that the broker refused; interrupted ones lost their session.
            output.WriteLine("  per owner node (SENDs of the conversations it owned):");
            output.WriteLine($"    {"node",-6} {"sends",10} {"acked",10} {"refused",8} {"failed",7} {"interrupted",12}  {"faulted",-7} | gateway {"disconnects",11} {"interrupted",11}");
            for (var i = 0; i < r.Owners.Owners.Count; i++)
            {
                var o = r.Owners.Owners[i];
                var g = r.Owners.Gateways[i];
                output.WriteLine($"    {o.Node,-6} {o.Sends,10:N0} {o.Acked,10:N0} {o.Refused,8:N0} {o.Failed,7:N0} {o.Interrupted,12:N0}  {(o.Faulted ? "yes" : "no"),-7} | {"",7} {g.Disconnects,11:N0} {g.Interrupted,11:N0}");
            }

            output.WriteLine(r.Owners.RingChanged
                ? "  the ring changed during the run: other_owner_failures is reported, not judged (ranges were moving)"
                : r.Owners.NetworkFaults
                ? "  the network was cut or an etcd member killed: other_owner_failures is reported, not judged (gateways cut off, leases lapsing)"
                : "  other_owner_failures: refused + failed of the owners no nemesis touched (judged: must be 0)");
            foreach (var sample in r.Owners.Samples)
            {
                output.WriteLine("    " + sample);
            }
        }

        if (r.Recoveries.Count > 0)
        {
            // Issue 16: after kill -9 of a primary, how long until sends to its conversations succeed again.
            output.WriteLine("  kill -9 → first SENT of each conversation the killed node owned (ms; 'failover' = all before its restart;");
            output.WriteLine("  'behind': conversations whose sender was on a node another fault had cut off or paused, not counted):");
            output.WriteLine($"    {"node",-6} {"at s",8} {"down s",7} {"convs",6} {"recovered",9} {"behind",6} {"median",8} {"max",8}  by");
            foreach (var k in r.Recoveries)
            {
                output.WriteLine($"    {k.Node,-6} {k.At / 1000,8:0.0} {(k.DownMs is { } d ? (d / 1000).ToString("0.0", CultureInfo.InvariantCulture) : "-"),7} {k.Conversations,6} {k.Recovered,9} {k.BehindFaultedGateway,6} {k.MedianMs,8:0} {k.MaxMs,8:0}  {(k.Recovered == 0 ? "-" : k.BeforeRestart ? "failover" : "restart")}");
            }

            var failovers = r.Recoveries.Where(k => k.BeforeRestart).Select(k => k.MaxMs).Order().ToList();
            if (failovers.Count > 0)
            {
                output.WriteLine($"  failover recovery (per kill, the slowest conversation): median {failovers[failovers.Count / 2]:0} ms, max {failovers[^1]:0} ms over {failovers.Count} kills");
            }
        }

        if (r.HistoryOverflowed)
        {
            output.WriteLine("  the history hit --max-events: it is incomplete");
        }

        output.WriteLine($"  history: {outcome.HistoryPath}");
        output.WriteLine($"  re-check: dotnet run -c Release --project LoadTests -- check-history {outcome.HistoryPath}");
    }

    private static INemesis CreateNemesis(string name, int concurrency, BrokerLauncher? broker, ClusterLauncher? cluster, TargetSet targets, HistoryRecorder history, TextWriter log)
    {
        if (CheckOptions.Validate(name, cluster?.Nodes.Count ?? 0, broker?.CanInjectFaults ?? true, cluster?.Netns is not null) is { } error)
        {
            throw new InvalidOperationException(error);
        }

        if (name == "none")
        {
            return new NoNemesis();
        }

        var nodes = new List<IFaultableNode>();
        if (cluster is not null)
        {
            foreach (var n in cluster.Nodes)
            {
                nodes.Add(new ClusterFaultNode(n));
            }
        }
        else
        {
            nodes.Add(new LocalBrokerNode(broker!));
        }

        return name switch
        {
            "kill" => new KillNemesis(nodes),
            "pause" => new PauseNemesis(nodes),
            "etcd" => new EtcdNemesis(cluster!, log),
            "join-leave" => new JoinLeaveNemesis(cluster!, targets, history, log),
            "partition" => new PartitionNemesis(cluster!, log),
            "mix" => new MixNemesis(cluster!, Math.Clamp(concurrency, 1, cluster!.Nodes.Count - 1), log),
            _ => throw new ArgumentException("unknown nemesis: " + name),
        };
    }

    /// <summary>
    /// Every running node's /metrics after the drain, into the log directory (&lt;node&gt;.metrics.txt), and the
    /// gauges that say what is still on its way (forward queues, mesh bytes) on the console.
    /// </summary>
    private static async Task DumpMetricsAsync(ClusterLauncher cluster, TextWriter log)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        foreach (var node in cluster.Nodes)
        {
            if (node.Down || node.Broker.AdminUri is null || BrokerLog.Directory is null)
            {
                continue;
            }

            try
            {
                var text = await http.GetStringAsync(new Uri(node.Broker.AdminUri, "/metrics")).ConfigureAwait(false);
                await File.WriteAllTextAsync(Path.Combine(BrokerLog.Directory, node.Id + ".metrics.txt"), text).ConfigureAwait(false);
                var backlog = text.Split('\n').Where(l => l.StartsWith("chatbroker_cluster_inbox_forward_backlog", StringComparison.Ordinal)
                    || l.StartsWith("chatbroker_mesh_queued_bytes ", StringComparison.Ordinal) || l.StartsWith("chatbroker_mesh_queued ", StringComparison.Ordinal));
                log.WriteLine($"check: {node.Id} after the drain: {string.Join(", ", backlog)}");
                if (Environment.GetEnvironmentVariable("CHATBROKER_CHECK_DUMP") == "1" && node.Broker.Pid is { } pid
                    && backlog.Any(l => l.StartsWith("chatbroker_cluster_inbox_forward_backlog", StringComparison.Ordinal) && !l.EndsWith(" 0", StringComparison.Ordinal)))
                {
                    // Entries still waiting after the drain: a process dump (dotnet-dump, `dumpasync` shows what waits).
                    var dump = Path.Combine(BrokerLog.Directory, node.Id + ".dmp");
                    using var collect = System.Diagnostics.Process.Start("dotnet-dump", ["collect", "-p", pid.ToString(CultureInfo.InvariantCulture), "-o", dump]);
                    if (collect is not null)
                    {
                        await collect.WaitForExitAsync().ConfigureAwait(false);
                        log.WriteLine($"check: {node.Id} dumped to {dump} (exit {collect.ExitCode})");
                    }
                }
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
            {
                log.WriteLine($"check: {node.Id}: no metrics ({e.Message})");
            }
        }
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
    private static async Task FinalReadAsync(List<CheckedConversation> conversations, List<CheckerDevice> devices, TargetSet targets, Func<string, string, string> token, HistoryRecorder history, Random random, TextWriter log)
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
                var reader = new CheckerDevice(user, "final", targets, token, history, seed, CheckerDevice.Mode.FinalReader, 1, CheckerDevice.BodyIdBytes);
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
                catch (Exception e) when (e is IOException or TimeoutException)
                {
                    // Not retried: a second read would record the pages it already got twice. What it could not
                    // read counts as lost (or missing) in the checker, which is what a failed final read means.
                    log.WriteLine($"check: final read as {user} failed: {e.Message}");
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
