using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Messaging;

/// <summary>Cluster mode: carries a revocation to the other nodes, which may hold the device's session.</summary>
public interface IRevocationRouter
{
    /// <summary>Tells every other node; completes when each one that answered has stored it and closed its sessions.</summary>
    Task BroadcastRevocationAsync(string userId, string deviceId, long revokedAtMs, CancellationToken cancellationToken);
}

/// <summary>A device of a user as the operator sees it (<c>chatbroker device list</c>, <c>GET /devices</c>).</summary>
public sealed record DeviceInfo(string DeviceId, bool Online, bool HasKeys, long? RevokedAtMs);

/// <summary>
/// Device revocation: the operator (admin API, <c>chatbroker device revoke</c>) revokes a device, or every device of
/// a user. The revocation time is stored (it survives restarts); every open session of the device is closed at once
/// with DISCONNECT(DEVICE_REVOKED); a CONNECT whose token was issued at or before that time gets
/// CONNACK(DEVICE_REVOKED) (<see cref="Sessions.TokenVerifier"/>). A token issued later admits the device again:
/// that is signing in anew. In cluster mode the revocation is stored on every node and reaches the node holding the
/// session through <see cref="IRevocationRouter"/>.
/// </summary>
public sealed class DeviceRevocations(IChatStore store, SessionRegistry registry, BrokerMetrics metrics, TimeProvider clock)
{
    /// <summary>The device id under which "every device of the user" is recorded ('#' ids are never a device's).</summary>
    public const string AllDevices = "#all";

    private IRevocationRouter? _router;

    public void UseRouter(IRevocationRouter router) => _router = router ?? throw new ArgumentNullException(nameof(router));

    /// <summary>Revokes the device (null: every device of the user); returns the revocation time (unix ms).</summary>
    public async Task<long> RevokeAsync(string userId, string? deviceId, CancellationToken cancellationToken = default)
    {
        var device = deviceId ?? AllDevices;
        var at = clock.GetUtcNow().ToUnixTimeMilliseconds();
        await ApplyAsync(userId, device, at, cancellationToken).ConfigureAwait(false);
        if (_router is { } router)
        {
            await router.BroadcastRevocationAsync(userId, device, at, cancellationToken).ConfigureAwait(false);
        }

        return at;
    }

    /// <summary>Stores the revocation here and closes this node's sessions of the device (also for one from another node).</summary>
    public async Task ApplyAsync(string userId, string deviceId, long revokedAtMs, CancellationToken cancellationToken = default)
    {
        await store.RevokeDeviceAsync(userId, deviceId, revokedAtMs, cancellationToken).ConfigureAwait(false);
        metrics.DevicesRevoked.Add(1);
        foreach (var link in registry.DevicesOf(userId))
        {
            if (deviceId == AllDevices || link.DeviceId == deviceId)
            {
                link.Close(ReasonCode.DeviceRevoked, "this device was revoked; sign in again");
            }
        }
    }

    /// <summary>When the device's tokens stop counting (unix ms): its own revocation or the user's, whichever is later.</summary>
    public static long? RevokedAt(IAccountStore store, string userId, string deviceId)
    {
        var own = store.GetDeviceRevokedAt(userId, deviceId);
        var all = store.GetDeviceRevokedAt(userId, AllDevices);
        return own is null ? all : all is null ? own : Math.Max(own.Value, all.Value);
    }

    /// <summary>The user's devices this node knows of: online here, with E2E keys, or revoked.</summary>
    public IReadOnlyList<DeviceInfo> List(string userId)
    {
        var devices = new SortedDictionary<string, DeviceInfo>(StringComparer.Ordinal);
        foreach (var link in registry.DevicesOf(userId))
        {
            devices[link.DeviceId] = new DeviceInfo(link.DeviceId, true, false, null);
        }

        foreach (var device in store.ListKeyDevices(userId))
        {
            devices[device] = (devices.GetValueOrDefault(device) ?? new DeviceInfo(device, false, false, null)) with { HasKeys = true };
        }

        foreach (var revoked in store.ListRevokedDevices(userId))
        {
            devices[revoked.DeviceId] = (devices.GetValueOrDefault(revoked.DeviceId) ?? new DeviceInfo(revoked.DeviceId, false, false, null)) with { RevokedAtMs = revoked.RevokedAtMs };
        }

        return [.. devices.Values];
    }
}
