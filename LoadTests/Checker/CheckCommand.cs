using System.CommandLine;

namespace ChatBroker.LoadTests.Checker;

/// <summary>The `check` and `check-history` commands (registered by <see cref="Program"/>).</summary>
public static class CheckCommand
{
    public static void AddTo(RootCommand root, Func<ParseResult, RunOptions> readShared)
    {
        var targets = new Option<string?>("--targets") { Description = "check: host:port,host:port,... of the nodes (each client picks one by the seed, again after every reconnect); default: start a broker." };
        var seed = new Option<int?>("--seed") { Description = "check: seed of every choice (nodes, nemesis schedule, backoff); default: random, printed." };
        var nemesis = new Option<string>("--nemesis") { Description = "check: kill (kill -9 of one node + restart on the same data dir and port), pause (SIGSTOP/SIGCONT), etcd (kill -9 of etcd + restart; --cluster), join-leave (a new node joins, another leaves; --cluster 2+) or none.", DefaultValueFactory = _ => "none" };
        nemesis.AcceptOnlyFromAmong(CheckOptions.Nemeses);
        var hold = new Option<double?>("--nemesis-hold") { Description = "check: seconds each fault lasts before its heal (default: a seeded 0.2-1.5 s)." };
        var maxFaults = new Option<int>("--max-faults") { Description = "check: at most this many faults (0 = as many as --duration allows)." };
        var interval = new Option<double>("--nemesis-interval") { Description = "check: mean seconds between faults (each ± 50 %, from the seed).", DefaultValueFactory = _ => 5 };
        var historyPath = new Option<string?>("--history") { Description = "check: write the history (JSON lines) here; default: a file in the temp directory." };
        var drain = new Option<int>("--drain-timeout") { Description = "check: seconds after sending stops for every send to resolve and every receiver to catch up.", DefaultValueFactory = _ => 60 };
        var groups = new Option<int>("--groups") { Description = "check: groups besides the pairs, every member sending." };
        var groupMembers = new Option<int>("--group-members") { Description = "check: members per group (2-100).", DefaultValueFactory = _ => 5 };
        var concurrency = new Option<int>("--nemesis-concurrency") { Description = "check: mix: nodes each fault hits at once (at most N-1).", DefaultValueFactory = _ => 1 };
        var maxEvents = new Option<int>("--max-events") { Description = "check: bound of the history; sending stops at half of it (the final reads need the rest).", DefaultValueFactory = _ => 4_000_000 };

        var check = new Command("check", "Jepsen-style: pairs send continuously through a nemesis; a history of every SEND/SENT/DELIVER/ACK, final reads, and a checker (lost, duplicates, gaps, order, retries, inboxes).")
        {
            targets, seed, nemesis, interval, historyPath, drain, groups, groupMembers, maxEvents, maxFaults, hold, concurrency,
        };
        check.Validators.Add(r =>
        {
            var cluster = r.GetValue<int>("--cluster");
            var hasTargets = !string.IsNullOrEmpty(r.GetValue(targets));
            if (cluster > 0 && hasTargets)
            {
                r.AddError("--cluster starts its own nodes: it cannot be combined with --targets");
            }
            else if (CheckOptions.Validate(r.GetValue(nemesis)!, cluster, !hasTargets, r.GetValue<bool>("--netns")) is { } error)
            {
                r.AddError(error);
            }
        });
        check.SetAction(async (r, _) =>
        {
            var options = readShared(r);
            var outcome = await CheckScenario.RunAsync(options, new CheckOptions
            {
                Targets = r.GetValue(targets)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? [],
                Seed = r.GetValue(seed) ?? Random.Shared.Next(),
                Nemesis = r.GetValue(nemesis)!,
                NemesisInterval = TimeSpan.FromSeconds(Math.Max(0.1, r.GetValue(interval))),
                HistoryPath = r.GetValue(historyPath),
                DrainTimeout = TimeSpan.FromSeconds(Math.Max(1, r.GetValue(drain))),
                Groups = Math.Max(0, r.GetValue(groups)),
                GroupMembers = Math.Clamp(r.GetValue(groupMembers), 2, 100),
                MaxEvents = Math.Max(1000, r.GetValue(maxEvents)),
                MaxFaults = Math.Max(0, r.GetValue(maxFaults)),
                NemesisHold = r.GetValue(hold) is { } h ? TimeSpan.FromSeconds(Math.Clamp(h, 0, 600)) : null,
                NemesisConcurrency = Math.Max(1, r.GetValue(concurrency)),
            }, Console.Out).ConfigureAwait(false);
            CheckScenario.Print(outcome, Console.Out);
            Console.WriteLine($"  command: chatbroker-load {string.Join(' ', Environment.GetCommandLineArgs()[1..])}");
            return outcome.Report.Passed ? 0 : 1;
        });
        root.Subcommands.Add(check);

        var file = new Argument<string>("history") { Description = "A history file written by `check`." };
        var recheck = new Command("check-history", "Run the checker again over a history file (events and final reads).") { file };
        recheck.SetAction(r =>
        {
            var path = r.GetValue(file)!;
            var report = HistoryChecker.Check(HistoryEvent.ReadFile(path));
            CheckScenario.Print(new CheckOutcome(report, null, path, 0, TimeSpan.Zero), Console.Out);
            return report.Passed ? 0 : 1;
        });
        root.Subcommands.Add(recheck);
    }
}
