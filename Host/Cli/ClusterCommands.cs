using System.CommandLine;
using ChatBroker.Cluster;
using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Host.Cli;

/// <summary>
/// <c>chatbroker cluster status|join|leave</c>: the operator's view and changes of the cluster map. They talk to
/// etcd directly with the same configuration as <c>serve</c> (<c>cluster.etcd_endpoints</c>, the prefix, the
/// node id), without registering, so they work with every node down. Changes go through
/// <see cref="ClusterMembership"/>, the same compare-and-set steps a node takes when it joins on start.
/// </summary>
internal static class ClusterCommands
{
    /// <summary>How long join and leave wait for the moving node to finish the hand-over before they return.</summary>
    private static readonly TimeSpan DefaultWait = TimeSpan.FromMinutes(2);

    public static void Add(RootCommand root, Option<string?> configOption, Option<string[]> setOption)
    {
        var jsonOption = new Option<bool>("--json") { Description = "Print the map as JSON (the shape of the admin endpoint's /cluster)." };
        var status = new Command("status", "Print the cluster map from etcd: epoch, members with state, addresses and liveness, vnodes, replication factor.")
        {
            jsonOption,
        };
        status.SetAction((result, token) => StatusAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(jsonOption), token));

        var joinNode = new Option<string?>("--node") { Description = "Node id to add (default: this configuration's cluster.node_id, else node.name)." };
        var join = new Command("join", "Add a node to the cluster map: Joining while the ranges it will own are handed to it, then Active. Its addresses come from its live registration, else from this configuration. Waits for the hand-over (at most 2 minutes).")
        {
            joinNode,
        };
        join.SetAction((result, token) => JoinAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(joinNode), token));

        var leaveNode = new Option<string?>("--node") { Description = "Node id to remove (default: this configuration's cluster.node_id, else node.name)." };
        var leave = new Command("leave", "Remove a node from the cluster map: Leaving while its ranges are handed to the other members, then removed. The node must be running. Waits for the hand-over (at most 2 minutes).") { leaveNode };
        leave.SetAction((result, token) => LeaveAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(leaveNode), token));

        root.Subcommands.Add(new Command("cluster", "Cluster map commands (talk to etcd directly; the nodes may be down).") { status, join, leave });
    }

    private static async Task<int> StatusAsync(string? file, string[]? overrides, bool json, CancellationToken cancellationToken)
    {
        if (Connect("status", file, overrides) is not { } cluster)
        {
            return Program.ExitUsage;
        }

        await using var coordinator = cluster.Coordinator;
        try
        {
            var map = await coordinator.ReadMapPatientlyAsync(cancellationToken).ConfigureAwait(false);
            var live = await coordinator.ReadLiveMembersAsync(cancellationToken).ConfigureAwait(false);
            Console.Out.Write(json
                ? ClusterStatus.MapJson(map, live) + "\n"
                : ClusterStatus.Table(map, live, $"etcd {string.Join(",", cluster.Options.EtcdEndpoints)}, prefix {cluster.Options.EtcdPrefix}"));
            return Program.ExitOk;
        }
        catch (ClusterCoordinationException e)
        {
            Console.Error.WriteLine($"chatbroker cluster status: {e.Message}");
            return Program.ExitFailure;
        }
    }

    private static async Task<int> JoinAsync(string? file, string[]? overrides, string? nodeId, CancellationToken cancellationToken)
    {
        if (Connect("join", file, overrides) is not { } cluster || !ValidNode("join", nodeId))
        {
            return Program.ExitUsage;
        }

        var options = cluster.Options;
        var id = nodeId ?? options.NodeId;
        await using var coordinator = cluster.Coordinator;
        ClusterMember member;
        try
        {
            // The node's own registration says where it is; a node that is down is known by the map or, if
            // it is this configuration's node, by the configuration.
            var map = await coordinator.ReadMapPatientlyAsync(cancellationToken).ConfigureAwait(false);
            var live = await coordinator.ReadLiveMembersAsync(cancellationToken).ConfigureAwait(false);
            if (FindLive(live, id) is { } registration)
            {
                member = new ClusterMember(id, registration.MeshAddress, registration.ClientAddress, MemberState.Joining);
            }
            else if (map.FindMember(id) is { } listed)
            {
                member = listed;
            }
            else if (id == options.NodeId)
            {
                member = new ClusterMember(id, options.ResolvedAdvertiseMesh, options.AdvertiseClient, MemberState.Joining);
            }
            else
            {
                Console.Error.WriteLine(
                    $"chatbroker cluster join: node {id} is not live in etcd and not in the map, and this configuration is node {options.NodeId}: " +
                    $"its addresses are unknown. Start it (it registers itself), or run join with its configuration.");
                return Program.ExitFailure;
            }
        }
        catch (ClusterCoordinationException e)
        {
            Console.Error.WriteLine($"chatbroker cluster join: refused, nothing changed: {e.Message}");
            return Program.ExitFailure;
        }

        var result = await new ClusterMembership(coordinator) { HandOverRanges = true }
            .JoinAsync(member, options.VirtualNodes, options.ReplicationFactor, cancellationToken).ConfigureAwait(false);
        return await ReportAsync("join", id, result, coordinator, cancellationToken).ConfigureAwait(false);
    }

    private static async Task<int> LeaveAsync(string? file, string[]? overrides, string? nodeId, CancellationToken cancellationToken)
    {
        if (Connect("leave", file, overrides) is not { } cluster || !ValidNode("leave", nodeId))
        {
            return Program.ExitUsage;
        }

        await using var coordinator = cluster.Coordinator;
        var id = nodeId ?? cluster.Options.NodeId;
        try
        {
            // The first request waits out a busy etcd (and this process's first gRPC call); the leave reads again.
            await coordinator.ReadMapPatientlyAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ClusterCoordinationException e)
        {
            Console.Error.WriteLine($"chatbroker cluster leave: leave {id}: refused, the map cannot be read: {e.Message}");
            return Program.ExitFailure;
        }

        var result = await new ClusterMembership(coordinator) { HandOverRanges = true }.LeaveAsync(id, cancellationToken).ConfigureAwait(false);
        return await ReportAsync("leave", id, result, coordinator, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Prints the first step's outcome and, when it put the node in Joining or Leaving, follows the map until the
    /// node itself has handed its ranges over and taken the second step (Active, or out of the map), or the join or
    /// leave was undone, or <see cref="DefaultWait"/> passed (the move goes on without the command: status shows it).
    /// </summary>
    private static async Task<int> ReportAsync(string command, string nodeId, MapChangeResult result, EtcdCoordinator coordinator, CancellationToken cancellationToken)
    {
        if (!result.Succeeded)
        {
            Console.Error.WriteLine($"chatbroker cluster {command}: {result.Message}");
            return Program.ExitFailure;
        }

        Console.Out.WriteLine(result.Message);
        var moving = command == "join" ? MemberState.Joining : MemberState.Leaving;
        if (result.Map.FindMember(nodeId)?.State != moving)
        {
            return Program.ExitOk;
        }

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(DefaultWait);
        try
        {
            while (true)
            {
                // The CLI holds no watch: it reads the map a few times a second until the node's state settles.
                await Task.Delay(TimeSpan.FromMilliseconds(250), deadline.Token).ConfigureAwait(false);
                var map = await coordinator.ReadMapAsync(deadline.Token).ConfigureAwait(false);
                var member = map.FindMember(nodeId);
                if (member?.State == moving)
                {
                    continue;
                }

                var done = command == "join" ? member?.State == MemberState.Active : member is null;
                if (done)
                {
                    Console.Out.WriteLine(command == "join"
                        ? $"{nodeId} joined: Active, its ranges handed over (epoch {map.Epoch})"
                        : $"{nodeId} left the cluster, its ranges handed over (epoch {map.Epoch})");
                    return Program.ExitOk;
                }

                Console.Error.WriteLine($"chatbroker cluster {command}: the hand-over of {nodeId} was undone (now {(member is null ? "not a member" : member.State.ToString())}, epoch {map.Epoch}); see the node's log");
                return Program.ExitFailure;
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            Console.Error.WriteLine(
                $"chatbroker cluster {command}: {nodeId} is still {moving} after {DefaultWait.TotalSeconds:0} s: the node hands its ranges over " +
                "itself and must be running; `chatbroker cluster status` shows when it is done");
            return Program.ExitFailure;
        }
        catch (ClusterCoordinationException e)
        {
            Console.Error.WriteLine($"chatbroker cluster {command}: {nodeId} is {moving}, but etcd cannot be read to follow it: {e.Message}");
            return Program.ExitFailure;
        }
    }

    private static bool ValidNode(string command, string? nodeId)
    {
        if (nodeId is null || NodeRegistration.IsValidNodeId(nodeId))
        {
            return true;
        }

        Console.Error.WriteLine($"chatbroker cluster {command}: --node \"{nodeId}\" is not a valid node id (1 to 64 of a-z A-Z 0-9 . _ -)");
        return false;
    }

    private static NodeRegistration? FindLive(System.Collections.Immutable.ImmutableArray<NodeRegistration> live, string id)
    {
        foreach (var n in live)
        {
            if (n.NodeId == id)
            {
                return n;
            }
        }

        return null;
    }

    /// <summary>The configuration's cluster settings and a coordinator on them (not started: it registers nothing).</summary>
    private static (ClusterOptions Options, EtcdCoordinator Coordinator)? Connect(string command, string? file, string[]? overrides)
    {
        if (Program.LoadConfiguration(file, overrides) is not { } configuration)
        {
            return null;
        }

        ClusterOptions options;
        try
        {
            options = ClusterNode.OptionsFrom(configuration.Options);
        }
        catch (InvalidDataException e)
        {
            Console.Error.WriteLine($"chatbroker cluster {command}: {e.Message}");
            return null;
        }

        if (!options.Enabled)
        {
            Console.Error.WriteLine(
                $"chatbroker cluster {command}: no cluster configured: cluster.etcd_endpoints is empty " +
                "(set it in broker.toml, or --set cluster.etcd_endpoints=http://HOST:2379)");
            return null;
        }

        return (options, new EtcdCoordinator(options));
    }
}
