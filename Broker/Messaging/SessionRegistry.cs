using System.Collections.Concurrent;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Which devices of which users are online on this node. A device id is online at most once: a second
/// login of the same (user, device) replaces the first, which is closed with SESSION_TAKEN_OVER.
/// </summary>
public sealed class SessionRegistry
{
    // user -> its online devices. Each entry's array is replaced (copy-on-write) under the entry's lock,
    // so readers on the delivery path iterate a stable snapshot without locking.
    private readonly ConcurrentDictionary<string, UserDevices> _users = new(StringComparer.Ordinal);
    private int _sessions;

    public int SessionCount => Volatile.Read(ref _sessions);

    public int UserCount => _users.Count;

    public enum RegisterOutcome
    {
        Registered,
        TooManyDevices,
    }

    /// <summary>
    /// Makes <paramref name="link"/> the online session of its device. <paramref name="replaced"/> is the
    /// earlier session of the same device, which the caller closes.
    /// </summary>
    public RegisterOutcome Register(IDeviceLink link, int maxDevicesPerUser, out IDeviceLink? replaced)
    {
        replaced = null;
        while (true)
        {
            var entry = _users.GetOrAdd(link.UserId, static _ => new UserDevices());
            lock (entry)
            {
                if (entry.Removed)
                {
                    continue; // raced with the removal of an empty entry; take the new one
                }

                var devices = entry.Devices;
                for (var i = 0; i < devices.Length; i++)
                {
                    if (devices[i].DeviceId == link.DeviceId)
                    {
                        replaced = devices[i];
                        var copy = (IDeviceLink[])devices.Clone();
                        copy[i] = link;
                        entry.Devices = copy;
                        return RegisterOutcome.Registered;
                    }
                }

                if (devices.Length >= maxDevicesPerUser)
                {
                    return RegisterOutcome.TooManyDevices;
                }

                entry.Devices = [.. devices, link];
                Interlocked.Increment(ref _sessions);
                return RegisterOutcome.Registered;
            }
        }
    }

    /// <summary>Removes the session if it is still the registered one of its device.</summary>
    public bool Unregister(IDeviceLink link)
    {
        if (!_users.TryGetValue(link.UserId, out var entry))
        {
            return false;
        }

        lock (entry)
        {
            var devices = entry.Devices;
            var index = Array.IndexOf(devices, link);
            if (index < 0)
            {
                return false;
            }

            if (devices.Length == 1)
            {
                entry.Devices = [];
                entry.Removed = true;
                _users.TryRemove(new KeyValuePair<string, UserDevices>(link.UserId, entry));
            }
            else
            {
                var copy = new IDeviceLink[devices.Length - 1];
                Array.Copy(devices, 0, copy, 0, index);
                Array.Copy(devices, index + 1, copy, index, devices.Length - index - 1);
                entry.Devices = copy;
            }

            Interlocked.Decrement(ref _sessions);
            return true;
        }
    }

    /// <summary>The online devices of a user: a snapshot, empty when none.</summary>
    public IDeviceLink[] DevicesOf(string userId) =>
        _users.TryGetValue(userId, out var entry) ? entry.Devices : [];

    public bool IsOnline(string userId) => _users.TryGetValue(userId, out var entry) && entry.Devices.Length > 0;

    /// <summary>
    /// Every online session, read live rather than copied: the keepalive sweep runs each second, and a snapshot
    /// list of a million sessions each time would be 8 MB of garbage a second. Sessions registered or removed
    /// during the walk may or may not be seen.
    /// </summary>
    public IEnumerable<IDeviceLink> Sessions()
    {
        foreach (var (_, entry) in _users)
        {
            foreach (var link in entry.Devices)
            {
                yield return link;
            }
        }
    }

    /// <summary>Every online session; a snapshot.</summary>
    public List<IDeviceLink> Snapshot()
    {
        var all = new List<IDeviceLink>(SessionCount);
        foreach (var entry in _users.Values)
        {
            all.AddRange(entry.Devices);
        }

        return all;
    }

    private sealed class UserDevices
    {
        public volatile IDeviceLink[] Devices = [];
        public bool Removed;
    }
}
