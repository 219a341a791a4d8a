using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Keeping a home's table of remote devices whole. A home learns where its users' devices are connected only from
/// the gateways' registrations, keeps that table in memory, and notifies those gateways of each new inbox entry
/// (<see cref="ClusterOpKind.DeviceDeliver"/>). Two events leave a home without entries it needs, and a device that
/// is sent nothing more would never notice the gap (a stream sees a gap only at its next message):
/// <list type="bullet">
/// <item>The home restarted: its table is empty while the devices stay connected at their gateways. Once it has its
/// first map it asks every other member to <see cref="ClusterOpKind.Reattach"/>.</item>
/// <item>The ring gave users a new home (a join or a leave): the gateways see it in the new map themselves.</item>
/// </list>
/// Either way the gateway registers each affected session again under its own login stamp (the home admits it as
/// the same login, so nothing is taken over) and then catches the session up from the home: the registration and the
/// catch-up's reads go on the same mesh stream, so the home has the registration before it answers the read, and
/// every entry is either in the read or notified after it.
/// </summary>
public sealed partial class ClusterNode
{
    private int _reattachAnnounced;

    /// <summary>Once, with this node's first map: every other member registers the sessions of this node's users
    /// again (after a restart this node has no table of them).</summary>
    private void AnnounceRestart(RoutingState s)
    {
        if (Interlocked.Exchange(ref _reattachAnnounced, 1) != 0)
        {
            return;
        }

        foreach (var link in s.Links)
        {
            link.TryPost(ClusterOpKind.Reattach, s.Epoch, []);
        }
    }

    /// <summary>Gateway: the node <paramref name="home"/> asks for the sessions of its users.</summary>
    private void ReattachSessionsOf(string home, RoutingState s)
    {
        foreach (var device in _registry.Sessions())
        {
            if (string.Equals(s.HomeOf(device.UserId), home, StringComparison.Ordinal))
            {
                Reattach(device, s);
            }
        }
    }

    /// <summary>Gateway: registers <paramref name="device"/>'s session with its user's home in <paramref name="s"/>
    /// under the login it has, then has it read its streams again.</summary>
    private void Reattach(IDeviceLink device, RoutingState s)
    {
        if (s.HomeOf(device.UserId) is not { } home)
        {
            return;
        }

        var login = _loginStamps.TryGetValue(device, out var stamp) ? stamp.Value : LoginOf(device, online: true);
        var registration = new DeviceRegistration { User = device.UserId, Device = device.DeviceId, Online = true, Login = login };
        if (string.Equals(home, NodeId, StringComparison.Ordinal))
        {
            Register(registration, NodeId, s);
            OnRegistered(registration, NodeId);
        }
        else
        {
            s.LinkOf(home)?.TryPost(ClusterOpKind.DeviceRegistration, s.Epoch, registration.ToByteArray());
        }

        Interlocked.Increment(ref Metrics.DevicesReattached);
        device.Resync();
    }

    /// <summary>
    /// A message stamped with a newer epoch than this node's map was judged by the sender against that map (it may
    /// be for a range this node has just been given): wait for it, bounded by <see cref="ClusterRoutingOptions.ForwardTimeout"/>,
    /// rather than refuse it as stale against an older map. Past the bound the batch is judged against the map there is.
    /// </summary>
    private async ValueTask<RoutingState?> WaitForSendersMapAsync(MeshInboundBatch batch, RoutingState? s, CancellationToken cancellationToken)
    {
        ulong newest = 0;
        for (var i = 0; i < batch.Count; i++)
        {
            newest = Math.Max(newest, batch[i].Epoch);
        }

        if (s is null || newest <= s.Epoch)
        {
            return s;
        }

        Interlocked.Increment(ref Metrics.NewerMapWaits);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_options.ForwardTimeout);
        try
        {
            await WaitForEpochAsync(newest, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
        }

        return State;
    }
}
