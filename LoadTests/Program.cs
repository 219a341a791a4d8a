using System.CommandLine;

namespace ChatBroker.LoadTests;

/// <summary>
/// <c>dotnet run -c Release --project LoadTests -- &lt;scenario&gt; [options]</c>. Each run is bounded (duration
/// and/or count), starts its own broker unless --target is given, prints live progress, and ends with a
/// summary, optionally a JSON result and an HTML chart. Exit code 0 when the run passed its checks and targets.
/// </summary>
public static class Program
{
    /// <summary>Set for this process before any socket exists (System.Net.Sockets reads it once): socket
    /// completions run on the epoll thread instead of hopping to the thread pool. The harness shares the
    /// machine with the broker and must stay lean: this halves its CPU per message at a fixed rate
    /// (docs/performance.md). <see cref="BrokerLauncher"/> does not pass it on to the broker.</summary>
    internal const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    public static Task<int> Main(string[] args)
    {
        Environment.SetEnvironmentVariable(InlineCompletionsVariable, "1");
        var parse = Build().Parse(args);
        if (parse.Errors.Count == 0 && parse.GetValue<bool>("--netns") && Cluster.NetnsLayout.FromEnvironment() is null)
        {
            // The outer process: make the namespaces, run this same command inside the client one, remove them.
            return Cluster.NetnsLayout.RunOutsideAsync(args, parse.GetValue<int>("--cluster"), parse.GetValue<int>("--etcd-members"));
        }

        return parse.InvokeAsync();
    }

    /// <summary>Bound of --cluster: each node is a whole broker process on this machine.</summary>
    public const int MaxClusterNodes = 9;

    /// <summary>The command line (internal for the parsing tests).</summary>
    internal static RootCommand Build()
    {
        var duration = new Option<int>("--duration") { Description = "Seconds of load (sending, connecting or churning); runs also stop at --count.", DefaultValueFactory = _ => 20, Recursive = true };
        var count = new Option<long>("--count") { Description = "Stop after this many messages (pairs: total; resume: messages stored then drained). 0 = no limit.", Recursive = true };
        var pairs = new Option<int>("--pairs") { Description = "Sender/receiver pairs.", DefaultValueFactory = _ => 100, Recursive = true };
        var rate = new Option<double>("--rate") { Description = "Fixed total rate, messages/s (pairs) or connects/s (churn). 0 = closed loop.", Recursive = true };
        var window = new Option<int>("--window") { Description = "Closed loop: messages a pair (or the resume filler) may have in flight.", DefaultValueFactory = _ => 16, Recursive = true };
        var bodySize = new Option<int>("--body-size") { Description = "Message body bytes (at least 16: send stamp and number).", DefaultValueFactory = _ => 256, Recursive = true };
        var durability = new Option<string>("--durability") { Description = "Broker durability when the harness starts it: sync or async.", DefaultValueFactory = _ => "sync", Recursive = true };
        durability.AcceptOnlyFromAmong("sync", "async");
        var target = new Option<string?>("--target") { Description = "host:port of a running broker (default: start one as a child process).", Recursive = true };
        var admin = new Option<string?>("--admin") { Description = "host:port of the target's admin endpoint, for its metrics.", Recursive = true };
        var secretFile = new Option<string?>("--secret-file") { Description = "The target's token secret file.", Recursive = true };
        var tokenSecret = new Option<string?>("--token-secret") { Description = "The target's token secret, base64.", Recursive = true };
        var connections = new Option<int>("--connections") { Description = "Connections (connections: held idle; churn: pool of users cycling).", DefaultValueFactory = _ => 15_000, Recursive = true };
        var processes = new Option<int>("--processes") { Description = "Client processes to spread connections over (each stays under 19,000 open files).", DefaultValueFactory = _ => 2, Recursive = true };
        var sources = new Option<int>("--sources") { Description = "Client source addresses 127.0.0.2 … 127.0.0.(1+N) for a loopback target (0 = let the OS pick).", DefaultValueFactory = _ => 16, Recursive = true };
        var set = new Option<string[]>("--broker-set") { Description = "Extra broker setting for a started broker, e.g. --broker-set session.resume_batch=1024 (repeatable).", Recursive = true };
        var json = new Option<string?>("--json") { Description = "Write the result as JSON to this file.", Recursive = true };
        var html = new Option<string?>("--html") { Description = "Write a self-contained HTML chart (inline SVG) to this file.", Recursive = true };
        var gcdump = new Option<string?>("--gcdump") { Description = "connections, churn, idle-transports: before each memory reading, take a heap dump of the broker into this directory with dotnet-gcdump (forces a full GC; shows what holds memory).", Recursive = true };
        var warmup = new Option<int>("--warmup") { Description = "connections: connect/disconnect cycles before measuring, so the broker's connect path is JIT-compiled (0 = measure a cold broker).", DefaultValueFactory = _ => 5000, Recursive = true };
        var warmupSeconds = new Option<int>("--warmup-s") { Description = "pairs: seconds of the same load before measuring, not counted (JIT tier-up, pools); resume: a separate small backlog is drained first when > 0.", DefaultValueFactory = _ => 3, Recursive = true };
        var metricsOut = new Option<string?>("--metrics-out") { Description = "Write the broker's last /metrics scrape of the run to this file.", Recursive = true };

        var cluster = new Option<int>("--cluster") { Description = "pairs, fanout, check: start a cluster of N nodes and a single-member etcd on 127.0.0.1 (pairs: sender and receiver on different nodes; fanout: members round robin; check: clients on every node). 0 = one broker.", Recursive = true };
        cluster.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() is < 0 or > MaxClusterNodes)
            {
                r.AddError($"--cluster must be 0 (one broker) to {MaxClusterNodes}");
            }
            else if (r.GetValueOrDefault<int>() > 0 && r.GetResult(target) is not null)
            {
                r.AddError("--cluster starts its own nodes: it cannot be combined with --target");
            }
        });

        var netns = new Option<bool>("--netns") { Description = "With --cluster (root): the nodes in network namespaces of scripts/netns-cluster.sh (10.77.0.x, one per node, etcd members in namespaces of their own), the harness in one more; all removed at the end.", Recursive = true };
        netns.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<bool>() && r.GetResult(cluster) is null)
            {
                r.AddError("--netns needs --cluster N");
            }
        });

        var etcdMembers = new Option<int>("--etcd-members") { Description = "With --netns: members of the run's etcd (1, 3 or 5), each in a namespace of its own; the etcd nemesis then kills one member at a time while a quorum is left.", DefaultValueFactory = _ => 1, Recursive = true };
        etcdMembers.Validators.Add(r =>
        {
            var m = r.GetValueOrDefault<int>();
            if (m is not (1 or 3 or 5))
            {
                r.AddError("--etcd-members must be 1, 3 or 5");
            }
            else if (m > 1 && r.GetResult(netns) is null)
            {
                r.AddError("--etcd-members above 1 needs --netns (one namespace per member)");
            }
        });

        var transport = new Option<string>("--transport")
        {
            Description = "pairs: tcp, tls or ws, or a list run in turn against one started broker (e.g. tcp,tls,ws: TLS and WebSocket against cleartext in one run; closed loop only).",
            DefaultValueFactory = _ => "tcp",
            Recursive = true,
        };
        transport.Validators.Add(r =>
        {
            if (!ClientTransports.TryParse(r.GetValueOrDefault<string>(), out _, out var error))
            {
                r.AddError(error!);
            }
        });
        // MQTT client mode (LoadTests/Mqtt): pairs against any MQTT broker.
        var protocol = new Option<string>("--protocol") { Description = "pairs, fanout, connections: native (the chat protocol) or mqtt (MQTT 3.1.1 QoS 1; with --target any MQTT broker, else ChatBroker's MQTT listener).", DefaultValueFactory = _ => "native", Recursive = true };
        protocol.AcceptOnlyFromAmong("native", "mqtt");
        var mqttTopics = new Option<string>("--mqtt-topics") { Description = "pairs --protocol mqtt: chat (chat/u/{user} and inbox/{user}/#, needs tokens), plain (pairs/{run}/{i}, any broker) or auto (chat when a token secret is known).", DefaultValueFactory = _ => "auto", Recursive = true };
        mqttTopics.AcceptOnlyFromAmong("auto", "chat", "plain");

        var stallMs = new Option<double>("--stall-ms") { Description = "pairs at a fixed rate: deliveries later than this are reported as stalls (when, how long, the broker's GC, thread pool and RocksDB LOG around each).", DefaultValueFactory = _ => 10, Recursive = true };
        var peerPid = new Option<int>("--peer-pid") { Description = "pairs with --target: pid of the target broker on this machine (e.g. mosquitto), whose CPU over the measured interval is read from /proc.", Recursive = true };
        var members = new Option<int>("--members") { Description = "fanout: members of the group, all online (the sender included).", DefaultValueFactory = _ => 1024, Recursive = true };

        var root = new RootCommand("ChatBroker load harness: pairs, fanout, connections, resume, churn.");
        foreach (var o in new Option[] { stallMs, peerPid, protocol, mqttTopics, cluster, netns, etcdMembers, transport, members, duration, count, pairs, rate, window, bodySize, durability, target, admin, secretFile, tokenSecret, connections, processes, sources, set, json, html, metricsOut, gcdump, warmup, warmupSeconds })
        {
            root.Options.Add(o);
        }

        RunOptions Read(ParseResult r) => new()
        {
            Duration = TimeSpan.FromSeconds(r.GetValue(duration)),
            Count = r.GetValue(count),
            Pairs = r.GetValue(pairs),
            Rate = r.GetValue(rate),
            Window = Math.Max(1, r.GetValue(window)),
            BodySize = Math.Max(Wire.StampBytes, r.GetValue(bodySize)),
            Durability = r.GetValue(durability)!,
            Target = r.GetValue(target),
            Admin = r.GetValue(admin),
            SecretFile = r.GetValue(secretFile),
            TokenSecret = r.GetValue(tokenSecret),
            Connections = r.GetValue(connections),
            Members = Math.Max(2, r.GetValue(members)),
            Processes = Math.Max(1, r.GetValue(processes)),
            Sources = r.GetValue(sources),
            BrokerSettings = r.GetValue(set) ?? [],
            JsonPath = r.GetValue(json),
            HtmlPath = r.GetValue(html),
            MetricsPath = r.GetValue(metricsOut),
            GcDumpDirectory = r.GetValue(gcdump),
            Warmup = r.GetValue(warmup),
            WarmupSeconds = r.GetValue(warmupSeconds),
            Cluster = r.GetValue(cluster),
            StallMs = r.GetValue(stallMs),
            PeerPid = r.GetValue(peerPid),
            Transports = ClientTransports.TryParse(r.GetValue(transport), out var transports, out _) ? transports : [ClientTransport.Tcp],
        };

        Command Scenario(string name, string description, Func<RunOptions, Task<RunResult>> run)
        {
            var command = new Command(name, description);
            command.SetAction(async (r, _) =>
            {
                var options = Read(r);
                var result = await run(options).ConfigureAwait(false);
                await ReportWriter.WriteAsync(result, options.JsonPath, options.HtmlPath).ConfigureAwait(false);
                return result.Passed ? 0 : 1;
            });
            return command;
        }

        var pairsCommand = new Command("pairs", "N sender/receiver pairs, closed loop (--window) or fixed rate (--rate); --protocol mqtt for any MQTT broker.");
        pairsCommand.SetAction(async (r, _) =>
        {
            var options = Read(r);
            var result = r.GetValue(protocol) == "mqtt"
                ? await new Mqtt.MqttPairsScenario(options, r.GetValue(mqttTopics)!).RunAsync().ConfigureAwait(false)
                : await new PairsScenario(options).RunAsync().ConfigureAwait(false);
            await ReportWriter.WriteAsync(result, options.JsonPath, options.HtmlPath).ConfigureAwait(false);
            return result.Passed ? 0 : 1;
        });
        root.Subcommands.Add(pairsCommand);

        var connectionsCommand = new Command("connections", "C idle authenticated connections over --processes client processes: connect rate and broker memory per connection; --protocol mqtt: C idle MQTT clients (in this process, at most 19,000) of any MQTT broker (--target) or ChatBroker's MQTT listener.");
        connectionsCommand.SetAction(async (r, _) =>
        {
            var options = Read(r);
            var result = r.GetValue(protocol) == "mqtt"
                ? await new Mqtt.MqttConnectionsScenario(options).RunAsync().ConfigureAwait(false)
                : await new ConnectionsScenario(options).RunAsync().ConfigureAwait(false);
            await ReportWriter.WriteAsync(result, options.JsonPath, options.HtmlPath).ConfigureAwait(false);
            return result.Passed ? 0 : 1;
        });
        root.Subcommands.Add(connectionsCommand);
        root.Subcommands.Add(Scenario("idle-transports", "--connections idle logged-in connections over TCP, then TLS, then WebSocket: broker memory per connection on each.", o => new IdleTransportsScenario(o).RunAsync()));
        root.Subcommands.Add(Scenario("resume", "--count messages stored for an offline device, then drained by it on reconnect.", o => new ResumeScenario(o).RunAsync()));
        root.Subcommands.Add(Scenario("churn", "Connect/disconnect at --rate per second for --duration; memory must return to its baseline.", o => new ChurnScenario(o).RunAsync()));

        // The child side of `connections`: started by the harness itself, not by hand.
        var userPrefix = new Option<string>("--user-prefix") { Required = true };
        var first = new Option<long>("--first");
        var holdCount = new Option<long>("--hold-count") { Required = true };
        var concurrency = new Option<int>("--concurrency") { DefaultValueFactory = _ => 256 };
        var hold = new Command("hold", "(internal) hold a share of a connections run in a child process.") { userPrefix, first, holdCount, concurrency };
        hold.Hidden = true;
        hold.SetAction(async (r, _) =>
        {
            var options = Read(r);
            await using var broker = BrokerLauncher.Target(options.Target!, null, null, options.TokenSecret);
            return await ConnectionHolder.RunAsync(broker, options, r.GetValue(userPrefix)!, r.GetValue(first), r.GetValue(holdCount), r.GetValue(concurrency)).ConfigureAwait(false);
        });
        root.Subcommands.Add(hold);

        Checker.CheckCommand.AddTo(root, Read);
        var fanoutCommand = new Command("fanout", "One sender into a group of --members online members (closed loop, --window messages in flight); --protocol mqtt: one topic, --members subscribers, any MQTT broker.");
        fanoutCommand.SetAction(async (r, _) =>
        {
            var options = Read(r);
            var result = r.GetValue(protocol) == "mqtt"
                ? await new Mqtt.MqttFanoutScenario(options).RunAsync().ConfigureAwait(false)
                : await new FanoutScenario(options).RunAsync().ConfigureAwait(false);
            await ReportWriter.WriteAsync(result, options.JsonPath, options.HtmlPath).ConfigureAwait(false);
            return result.Passed ? 0 : 1;
        });
        root.Subcommands.Add(fanoutCommand);
        return root;
    }
}
