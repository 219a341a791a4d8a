using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// The order of a device's logins at different gateways. Each gateway posts a device's registration to the user's
/// home on its own stream, so when a device moves from gateway A to gateway B, A's registration can reach the home
/// after B's (A's link was slow or reconnecting). Arrival order would then let the older login take the device over
/// and close the newer, live session. Every login therefore carries a stamp, the gateway's unix time in microseconds
/// (one more than its previous stamp when the clock has not moved on), the same in its online and its offline
/// registration; the home keeps the newest stamp per device and treats an older login as stale: it closes that login's session at its gateway (the device has since connected
/// elsewhere) and leaves the newer one alone. Stamps of one gateway are strictly ordered; across gateways they are
/// ordered when the nodes' clocks differ by less than the time between the two logins (a reconnect takes at least a
/// TCP and a CONNECT round trip; NTP keeps clocks within milliseconds). If they are not, the outcome is what arrival
/// order gives: the live session is closed and the device reconnects.
/// </summary>
public sealed partial class ClusterNode
{
    // Gateway: the stamp of each open session's login (read again for its offline registration).
    private readonly ConditionalWeakTable<IDeviceLink, StrongBox<ulong>> _loginStamps = [];

    // Home: the newest login registered per (user, device), while that login's session is open. Bounded by the
    // devices online: an entry goes with its login's offline registration.
    private readonly ConcurrentDictionary<(string User, string Device), (ulong Login, string Gateway)> _logins = new();
    private long _lastLoginStamp;

    /// <summary>Gateway: a new stamp for a login (<paramref name="online"/>), or the stamp of the login now closing.</summary>
    private ulong LoginOf(IDeviceLink device, bool online)
    {
        if (!online)
        {
            return _loginStamps.TryGetValue(device, out var stamp) ? stamp.Value : 0;
        }

        // Microseconds, not milliseconds: a device that moves from one gateway to another within the same millisecond
        // (a reconnect on a fast network, or two nodes on one host) must still get a newer stamp at the second.
        var now = (DateTimeOffset.UtcNow - DateTimeOffset.UnixEpoch).Ticks / TimeSpan.TicksPerMicrosecond;
        long next;
        while (true)
        {
            var last = Volatile.Read(ref _lastLoginStamp);
            next = Math.Max(now, last + 1);
            if (Interlocked.CompareExchange(ref _lastLoginStamp, next, last) == last)
            {
                break;
            }
        }

        _loginStamps.AddOrUpdate(device, new StrongBox<ulong>((ulong)next));
        return (ulong)next;
    }

    /// <summary>
    /// Home: whether a registration takes effect. An online registration older than the newest known login of the
    /// device is stale: its session (at <paramref name="gateway"/>) is closed and false returned. An offline one of an
    /// older login is ignored; the offline of the newest login clears it. Registrations without a stamp pass.
    /// </summary>
    private bool AdmitLogin(DeviceRegistration registration, string gateway, RoutingState s)
    {
        if (registration.Login == 0)
        {
            return true;
        }

        var key = (registration.User, registration.Device);
        if (!registration.Online)
        {
            if (_logins.TryGetValue(key, out var newest) && newest.Login > registration.Login)
            {
                return false;
            }

            ForgetLogin(registration.User, registration.Device, registration.Login);
            return true;
        }

        while (true)
        {
            if (_logins.TryGetValue(key, out var newest))
            {
                if (newest.Login > registration.Login)
                {
                    CloseStaleLogin(registration, gateway, s);
                    return false;
                }

                if (_logins.TryUpdate(key, (registration.Login, gateway), newest))
                {
                    return true;
                }
            }
            else if (_logins.TryAdd(key, (registration.Login, gateway)))
            {
                return true;
            }
        }
    }

    private void ForgetLogin(string user, string device, ulong login)
    {
        if (login != 0 && _logins.TryGetValue((user, device), out var newest) && newest.Login == login)
        {
            _logins.TryRemove(new KeyValuePair<(string, string), (ulong, string)>((user, device), newest));
        }
    }

    /// <summary>Home: closes the session of a stale login at its gateway (only it and older ones: the gateway may
    /// have a newer session of the device by the time the close arrives).</summary>
    private void CloseStaleLogin(DeviceRegistration registration, string gateway, RoutingState s)
    {
        Interlocked.Increment(ref Metrics.StaleLogins);
        if (!string.Equals(gateway, NodeId, StringComparison.Ordinal))
        {
            s.LinkOf(gateway)?.TryPost(ClusterOpKind.DeviceTakenOver, s.Epoch,
                new DeviceRegistration { User = registration.User, Device = registration.Device, Login = registration.Login + 1 }.ToByteArray());
            return;
        }

        CloseSessionsBefore(registration.User, registration.Device, registration.Login + 1);
    }

    /// <summary>Gateway (or the home for its own sessions): closes this node's sessions of a device whose login came
    /// before <paramref name="login"/>, the login that took the device over; 0 closes every one (an unstamped takeover).</summary>
    private void CloseSessionsBefore(string user, string device, ulong login)
    {
        foreach (var local in _registry.DevicesOf(user))
        {
            if (string.Equals(local.DeviceId, device, StringComparison.Ordinal)
                && (login == 0 || !_loginStamps.TryGetValue(local, out var stamp) || stamp.Value < login))
            {
                local.Close(ReasonCode.SessionTakenOver, "this device connected at another node");
            }
        }
    }
}
