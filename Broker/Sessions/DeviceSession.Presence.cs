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
        try
        {
            var outcome = await _context.Settings.ApplyAsync(_user, request, stopping).ConfigureAwait(false);
            if (outcome.Error != ReasonCode.Success)
            {
                WriteError(outcome.Error, outcome.Message!, request.RequestId, PacketType.Settings);
            }
            else
            {
                _outbox.TryWrite(outcome.Result!);
            }
        }
        catch (Exception e) when (e is Storage.StorageException or Messaging.RouteUnavailableException)
        {
            WriteError(ReasonCode.ServerUnavailable, "settings are unavailable; retry", request.RequestId, PacketType.Settings, TimeSpan.FromSeconds(1));
        }

        return Handled.Ok;
    }
}
