using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Messaging;

/// <summary>Cluster mode: a user's settings are kept at the user's home, with its presence.</summary>
public interface ISettingsRouter
{
    /// <summary>True when this node is the user's home.</summary>
    bool IsHomeOf(string userId);

    /// <summary>Applies the request at the user's home. Throws <see cref="RouteUnavailableException"/> when it does not answer.</summary>
    Task<UserSettingsService.Outcome> ApplyAtHomeAsync(string userId, Settings request, CancellationToken cancellationToken);
}

/// <summary>
/// SETTINGS (docs/protocol.md §5): reads and changes a user's settings (presence visibility, contact list), stores
/// them, and tells presence so that subscribers whose view changed hear it at once. On the user's home in cluster mode.
/// </summary>
public sealed class UserSettingsService(IChatStore store, PresenceService presence, BrokerMetrics metrics, PrivacyOptions options)
{
    private ISettingsRouter? _router;

    // One user's read-modify-write at a time (two devices changing the list at once must not lose a change): a gate
    // per user while someone uses it, counted so that an idle user holds nothing here.
    private readonly Lock _gate = new();
    private readonly Dictionary<string, UserGate> _users = new(StringComparer.Ordinal);

    private sealed class UserGate
    {
        public readonly SemaphoreSlim Semaphore = new(1, 1);
        public int Users;
    }

    public readonly record struct Outcome(ReasonCode Error, string? Message, SettingsResult? Result);

    public void UseRouter(ISettingsRouter router) => _router = router ?? throw new ArgumentNullException(nameof(router));

    /// <summary>Applies the request wherever the user's settings are kept (here, or its home in cluster mode).</summary>
    public Task<Outcome> ApplyAsync(string userId, Settings request, CancellationToken cancellationToken) =>
        _router is { } router && !router.IsHomeOf(userId)
            ? router.ApplyAtHomeAsync(userId, request, cancellationToken)
            : ApplyHereAsync(userId, request, cancellationToken);

    /// <summary>Applies the request to the settings in this node's store. Throws <see cref="StorageException"/>.</summary>
    public async Task<Outcome> ApplyHereAsync(string userId, Settings request, CancellationToken cancellationToken)
    {
        UserGate user;
        lock (_gate)
        {
            if (!_users.TryGetValue(userId, out user!))
            {
                user = new UserGate();
                _users[userId] = user;
            }

            user.Users++;
        }

        try
        {
            await user.Semaphore.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                return await ApplyLockedAsync(userId, request, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                user.Semaphore.Release();
            }
        }
        finally
        {
            lock (_gate)
            {
                if (--user.Users == 0)
                {
                    _users.Remove(userId);
                    user.Semaphore.Dispose();
                }
            }
        }
    }

    private async Task<Outcome> ApplyLockedAsync(string userId, Settings request, CancellationToken cancellationToken)
    {
        var current = store.GetUserSettings(userId);
        var visibility = request.SetPresenceVisibility ? (Storage.PresenceVisibility)request.PresenceVisibility : current.Visibility;
        var contacts = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var contact in request.ReplaceContacts ? request.Contacts : (IEnumerable<string>)current.Contacts)
        {
            if (seen.Add(contact))
            {
                contacts.Add(contact);
            }
        }

        foreach (var contact in request.AddContacts)
        {
            if (seen.Add(contact))
            {
                contacts.Add(contact);
            }
        }

        if (request.RemoveContacts.Count > 0)
        {
            var removed = new HashSet<string>(request.RemoveContacts, StringComparer.Ordinal);
            contacts.RemoveAll(removed.Contains);
        }

        if (contacts.Count > options.MaxContacts)
        {
            metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "contacts"));
            return new(ReasonCode.BadRequest, $"at most {options.MaxContacts} contacts (privacy.max_contacts); the list would hold {contacts.Count}", null);
        }

        if (visibility != current.Visibility || !contacts.SequenceEqual(current.Contacts, StringComparer.Ordinal))
        {
            var next = new UserSettings(visibility, contacts);
            await store.SetUserSettingsAsync(userId, next, cancellationToken).ConfigureAwait(false);
            metrics.SettingsChanged.Add(1);
            presence.SettingsChanged(userId, next);
        }

        return new(ReasonCode.Success, null, new SettingsResult
        {
            RequestId = request.RequestId,
            PresenceVisibility = (Protocol.Messages.PresenceVisibility)visibility,
            ContactCount = (uint)contacts.Count,
        });
    }
}
