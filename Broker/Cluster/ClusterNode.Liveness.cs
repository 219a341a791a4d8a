using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Cluster.Coordination;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Which other members are alive: a member whose etcd lease is gone (crashed, cut off, stopped) stays in the map and
/// keeps its ranges (until replication, issue 16), but nothing sent to it will be answered before it is back. An
/// operation whose owner or home is such a node is therefore answered at once (SERVER_UNAVAILABLE with
/// retry_after) instead of after <see cref="ClusterRoutingOptions.ForwardTimeout"/>; what is already queued for the
/// node (forward queues, posted operations) stays queued and is resent when it is back.
/// </summary>
public sealed partial class ClusterNode
{
    private ClusterView? _view;

    /// <summary>
    /// False only when the view knows the live members and <paramref name="nodeId"/> is not among them. This node is
    /// always live to itself; a view without live members yet (none known) counts every member as live. One volatile
    /// read and a scan of a few entries: the live set is as small as the cluster.
    /// </summary>
    public bool IsLive(string nodeId)
    {
        var view = Volatile.Read(ref _view);
        if (view is null || string.Equals(nodeId, NodeId, StringComparison.Ordinal))
        {
            return true;
        }

        var live = view.LiveMembers;
        if (live.IsDefaultOrEmpty)
        {
            return true;
        }

        foreach (var member in live)
        {
            if (string.Equals(member.NodeId, nodeId, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    private Task _livenessLoop = Task.CompletedTask;

    /// <summary>
    /// Home: follows which members hold a lease. When a gateway's lease goes (crashed, stopped, cut off from etcd),
    /// the devices it registered here count as offline from then on (presence, push jobs), as they would when its
    /// sessions closed; when a member's lease comes back, it is asked to register the sessions of this node's users
    /// it holds again and to catch them up (<see cref="ClusterOpKind.Reattach"/>): a gateway that was only cut off
    /// from etcd kept its sessions, and nothing was notified to them meanwhile.
    /// </summary>
    private async Task FollowLivenessAsync(ClusterView view, CancellationToken stop)
    {
        HashSet<string>? live = null;
        try
        {
            await foreach (var members in view.WatchMembersAsync(stop).ConfigureAwait(false))
            {
                var now = new HashSet<string>(StringComparer.Ordinal);
                foreach (var member in members)
                {
                    now.Add(member.NodeId);
                }

                if (live is not null && State is { } s && now.Count > 0)
                {
                    foreach (var gone in live)
                    {
                        if (!now.Contains(gone) && !string.Equals(gone, NodeId, StringComparison.Ordinal))
                        {
                            ForgetDevicesAt(gone, s);
                        }
                    }

                    foreach (var back in now)
                    {
                        if (!live.Contains(back) && !string.Equals(back, NodeId, StringComparison.Ordinal))
                        {
                            s.LinkOf(back)?.TryPost(ClusterOpKind.Reattach, s.Epoch, []);
                        }
                    }
                }

                live = now.Count > 0 ? now : live;
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>Home: every device registered through <paramref name="gateway"/> goes offline here, as if its
    /// session had closed (its login is forgotten, its presence link dropped).</summary>
    private void ForgetDevicesAt(string gateway, RoutingState s)
    {
        var offline = new List<DeviceRegistration>();
        foreach (var (user, devices) in _remoteDevices)
        {
            foreach (var (device, at) in devices)
            {
                if (string.Equals(at, gateway, StringComparison.Ordinal))
                {
                    var login = _logins.TryGetValue((user, device), out var newest) && string.Equals(newest.Gateway, gateway, StringComparison.Ordinal) ? newest.Login : 0;
                    offline.Add(new DeviceRegistration { User = user, Device = device, Online = false, Login = login });
                }
            }
        }

        foreach (var registration in offline)
        {
            Register(registration, gateway, s);
            OnRegistered(registration, gateway);
        }

        Interlocked.Add(ref Metrics.DevicesForgotten, offline.Count);
    }
}
