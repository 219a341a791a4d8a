using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Sessions;

/// <summary>The key directory for one session: KEYS_UPLOAD and FETCH_KEYS; see docs/protocol.md §5.</summary>
internal sealed partial class DeviceSession
{
    private async ValueTask<Handled> HandleKeysUploadAsync(KeysUpload upload, CancellationToken stopping)
    {
        try
        {
            var outcome = await _context.Keys.UploadAsync(this, upload, stopping).ConfigureAwait(false);
            if (outcome.Error != ReasonCode.Success)
            {
                WriteError(outcome.Error, outcome.Message!, upload.RequestId, PacketType.KeysUpload);
            }
            else
            {
                _outbox.TryWrite(outcome.Answer!);
            }
        }
        catch (Exception e) when (e is Storage.StorageException or Messaging.RouteUnavailableException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the keys could not be stored; retry", upload.RequestId, PacketType.KeysUpload, TimeSpan.FromSeconds(1));
        }

        return Handled.Ok;
    }

    private async ValueTask<Handled> HandleFetchKeysAsync(FetchKeys fetch, CancellationToken stopping)
    {
        if (!Rates.KeyFetches.TryTake(_context.Options.Limits.KeyFetchesPerSecond, 1, out var retry))
        {
            _context.Metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "key_fetches"));
            WriteError(ReasonCode.RateLimited, "key fetch rate limit reached", fetch.RequestId, PacketType.FetchKeys, retry);
            return Handled.Ok;
        }

        if (!_context.Abuse.TryTake(_user, AbuseLimit.PrekeyFetches, 1, out retry))
        {
            WriteError(ReasonCode.RateLimited, $"at most {_context.Options.Abuse.PrekeyFetchesPerHour} key fetches per user per hour (abuse.prekey_fetches_per_hour)", fetch.RequestId, PacketType.FetchKeys, retry);
            return Handled.Ok;
        }

        try
        {
            var outcome = await _context.Keys.FetchAsync(fetch, _maxFrameSize, stopping).ConfigureAwait(false);
            if (outcome.Error != ReasonCode.Success)
            {
                WriteError(outcome.Error, outcome.Message!, fetch.RequestId, PacketType.FetchKeys);
            }
            else
            {
                _outbox.TryWrite(outcome.Answer!);
            }
        }
        catch (Exception e) when (e is Storage.StorageException or Messaging.RouteUnavailableException)
        {
            WriteError(ReasonCode.ServerUnavailable, "keys are unavailable; retry", fetch.RequestId, PacketType.FetchKeys, TimeSpan.FromSeconds(1));
        }

        return Handled.Ok;
    }
}
