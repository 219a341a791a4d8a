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
    /// <summary>Said by join and leave until ranges move with their data (range hand-over, issue 15).</summary>
    internal const string NoDataMoved =
        "note: no data is moved yet: ownership follows the new map at once, and stored conversations and users stay where they were written until range hand-over exists";

    public static void Add(RootCommand root, Option<string?> configOption, Option<string[]> setOption)
    {
        var jsonOption = new Option<bool>("--json") { Description = "Print the map as JSON (the shape of the admin endpoint's /cluster)." };
        var status = new Command("status", "Print the cluster map from etcd: epoch, members with state, addresses and liveness, vnodes, replication factor.")
        {
            jsonOption,
        };
        status.SetAction((result, token) => StatusAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(jsonOption), token));

        var joinNode = new Option<string?>("--node") { Description = "Node id to add (default: this configuration's cluster.node_id, else node.name)." };
        var join = new Command("join", "Add a node to the cluster map (Joining, then Active). Its addresses come from its live registration, else from this configuration.")
        {
            joinNode,
        };
        join.SetAction((result, token) => JoinAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(joinNode), token));

        var leaveNode = new Option<string?>("--node") { Description = "Node id to remove (default: this configuration's cluster.node_id, else node.name)." };
        var leave = new Command("leave", "Remove a node from the cluster map (Leaving, then removed).") { leaveNode };
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
            var map = await coordinator.ReadMapAsync(cancellationToken).ConfigureAwait(false);
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
            var live = await coordinator.ReadLiveMembersAsync(cancellationToken).ConfigureAwait(false);
            var map = await coordinator.ReadMapAsync(cancellationToken).ConfigureAwait(false);
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

        var result = await new ClusterMembership(coordinator).JoinAsync(member, options.VirtualNodes, options.ReplicationFactor, cancellationToken)
            .ConfigureAwait(false);
        return Report("join", result);
    }

    private static async Task<int> LeaveAsync(string? file, string[]? overrides, string? nodeId, CancellationToken cancellationToken)
    {
        if (Connect("leave", file, overrides) is not { } cluster || !ValidNode("leave", nodeId))
        {
            return Program.ExitUsage;
        }

        await using var coordinator = cluster.Coordinator;
        var result = await new ClusterMembership(coordinator).LeaveAsync(nodeId ?? cluster.Options.NodeId, cancellationToken).ConfigureAwait(false);
        return Report("leave", result);
    }

    private static int Report(string command, MapChangeResult result)
    {
        if (!result.Succeeded)
        {
            Console.Error.WriteLine($"chatbroker cluster {command}: {result.Message}");
            return Program.ExitFailure;
        }

        Console.Out.WriteLine(result.Message);
        if (result.Status == MapChangeStatus.Applied)
        {
            Console.Out.WriteLine(NoDataMoved);
        }

        return Program.ExitOk;
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
