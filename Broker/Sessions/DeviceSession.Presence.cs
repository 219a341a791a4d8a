using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Sessions;

/// <summary>Presence (PRESENCE_SET, PRESENCE_SUBSCRIBE) and typing (TYPING) for one session; see docs/protocol.md §5.</summary>
internal sealed partial class DeviceSession
{
    /// <summary>An ephemeral packet (PRESENCE, TYPING_NOTICE, low-prekeys KEYS_UPLOADED): queued, never stored.</summary>
    public void OnNotice(IMessage packet) => _outbox.TryWrite(packet);

    /// <summary>CONNECT succeeded: the device is ONLINE, and hears whether its one-time prekeys run low.</summary>
    private void OnSessionOpened()
    {
        _context.Presence.DeviceOnline(this);
        try
        {
            _context.Keys.NotifyIfLow(_user, _device, onConnect: true);
        }
        catch (Storage.StorageException)
        {
            // Only a hint; the next fetch of its keys checks again.
        }
    }

    private void HandlePresenceSet(PresenceSet set)
    {
        switch (set.Status)
        {
            case PresenceStatus.Online:
                _context.Presence.SetAway(this, away: false);
                break;
            case PresenceStatus.Away:
                _context.Presence.SetAway(this, away: true);
                break;
            default:
                // OFFLINE is what the broker says when the session ends; a connected device cannot claim it.
                WriteError(ReasonCode.BadRequest, "status must be ONLINE or AWAY; disconnect to go offline", 0, PacketType.PresenceSet);
                break;
        }
    }

    private async ValueTask<Handled> HandlePresenceSubscribeAsync(PresenceSubscribe subscribe, CancellationToken stopping)
    {
        try
        {
            var result = await _context.Presence.SubscribeAsync(this, subscribe, stopping).ConfigureAwait(false);
            if (result.Error != ReasonCode.Success)
            {
                WriteError(result.Error, result.Message!, subscribe.RequestId, PacketType.PresenceSubscribe,
                    result.Error == ReasonCode.ServerUnavailable ? TimeSpan.FromSeconds(1) : default);
                return Handled.Ok;
            }

            _outbox.TryWrite(result.Answer!);
        }
        catch (Exception e) when (e is Storage.StorageException or Messaging.RouteUnavailableException)
        {
            WriteError(ReasonCode.ServerUnavailable, "presence is unavailable; retry", subscribe.RequestId, PacketType.PresenceSubscribe, TimeSpan.FromSeconds(1));
        }

        return Handled.Ok;
    }

    private void HandleTyping(Typing typing)
    {
        if (!Rates.Typing.TryTake(_context.Options.Limits.TypingPerSecond, 1, out _))
        {
            // Typing is a hint that expires on its own: an extra one is dropped, not answered.
            _context.Metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "typing"));
            return;
        }

        try
        {
            if (_context.Typing.Relay(this, typing) != ReasonCode.Success)
            {
                WriteError(ReasonCode.NotAMember, "not a member of this conversation", typing.ConversationId, PacketType.Typing);
            }
        }
        catch (Storage.StorageException)
        {
            // Typing is best effort: a store that cannot say who the members are drops it.
        }
    }

    /// <summary>SETTINGS (docs/protocol.md §5): read or change the user's presence visibility and contact list.</summary>
    private async ValueTask<Handled> HandleSettingsAsync(Settings request, CancellationToken stopping)
    {
        if (_context.Chat.Signals is { } signals && !signals.IsHomeOf(_user))
        {
            WriteError(ReasonCode.BadRequest, "settings are kept at the user's home node; this version changes them only through it", request.RequestId, PacketType.Settings);
            return Handled.Ok;
        }

        var store = _context.Chat.Store;
        try
        {
            var current = store.GetUserSettings(_user);
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

            foreach (var contact in request.RemoveContacts)
            {
                if (seen.Remove(contact))
                {
                    contacts.Remove(contact);
                }
            }

            var max = _context.Options.Privacy.MaxContacts;
            if (contacts.Count > max)
            {
                _context.Metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "contacts"));
                WriteError(ReasonCode.BadRequest, $"at most {max} contacts (privacy.max_contacts); the list would hold {contacts.Count}", request.RequestId, PacketType.Settings);
                return Handled.Ok;
            }

            var next = new Storage.UserSettings(visibility, contacts);
            if (visibility != current.Visibility || !contacts.SequenceEqual(current.Contacts, StringComparer.Ordinal))
            {
                await store.SetUserSettingsAsync(_user, next, stopping).ConfigureAwait(false);
                _context.Metrics.SettingsChanged.Add(1);
                _context.Presence.SettingsChanged(_user, next);
            }

            _outbox.TryWrite(new SettingsResult
            {
                RequestId = request.RequestId,
                PresenceVisibility = (PresenceVisibility)visibility,
                ContactCount = (uint)contacts.Count,
            });
        }
        catch (Storage.StorageException)
        {
            WriteError(ReasonCode.ServerUnavailable, "settings are unavailable; retry", request.RequestId, PacketType.Settings, TimeSpan.FromSeconds(1));
        }

        return Handled.Ok;
    }
}
