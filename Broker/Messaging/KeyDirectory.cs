using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// The end-to-end encryption key directory: each (user, device) uploads an identity key, a signed prekey and a
/// supply of one-time prekeys; anyone starting a session with the device fetches a bundle that consumes one
/// one-time prekey. The store's take is atomic, so concurrent fetches never hand out the same one-time prekey.
/// Keys are opaque bytes to the broker: it checks sizes, never contents, and never logs them.
/// </summary>
public sealed class KeyDirectory(IChatStore store, SessionRegistry registry, BrokerMetrics metrics, KeysOptions options, TimeProvider? clock = null)
{
    private readonly TimeProvider _clock = clock ?? TimeProvider.System;

    // When each device last got a low-supply notice (UTC ticks). Held under its own lock; entries older than the
    // interval are pruned as it grows, so it holds about the devices notified within one interval.
    private readonly Dictionary<(string User, string Device), long> _lastLowNotice = [];
    private long _lowNoticesPrunedAt;

    /// <summary>Largest key or signature accepted: room for X25519/Ed25519 (32/64 bytes) with a wide margin, and
    /// small enough that a KEY_BUNDLE for dozens of devices fits one frame.</summary>
    public const int MaxKeyBytes = 256;

    /// <summary>Upper bound of one DeviceKeys in a KEY_BUNDLE: four key fields, ids, a device id, tags.</summary>
    private const int MaxDeviceKeysBytes = (4 * (MaxKeyBytes + 3)) + 128 + 32;

    public readonly record struct Outcome<T>(ReasonCode Error, string? Message, T? Answer)
        where T : class;

    private ISignalRouter? _router;

    /// <summary>Cluster mode: keys live on their user's home node; uploads and fetches for users whose home is
    /// another node go there (called once, before the node serves devices).</summary>
    public void UseRouter(ISignalRouter router) => _router = router ?? throw new ArgumentNullException(nameof(router));

    /// <summary>KEYS_UPLOAD: replaces the identity key / signed prekey given, adds the one-time prekeys.</summary>
    public async Task<Outcome<KeysUploaded>> UploadAsync(IDeviceLink device, KeysUpload upload, CancellationToken cancellationToken)
    {
        if (_router is { } router && !router.IsHomeOf(device.UserId))
        {
            return await router.UploadKeysAsync(device, upload, cancellationToken).ConfigureAwait(false);
        }

        if (Fenced<KeysUploaded>() is { } before)
        {
            return before;
        }

        if (upload.IdentityKey.Length > MaxKeyBytes
            || (upload.SignedPrekey is { } s && (s.PublicKey.IsEmpty || s.Signature.IsEmpty || s.PublicKey.Length > MaxKeyBytes || s.Signature.Length > MaxKeyBytes)))
        {
            return new(ReasonCode.BadRequest, $"signed_prekey needs public_key and signature; keys and signatures are at most {MaxKeyBytes} bytes", null);
        }

        foreach (var key in upload.OneTimePrekeys)
        {
            if (key.PublicKey.IsEmpty || key.PublicKey.Length > MaxKeyBytes)
            {
                return new(ReasonCode.BadRequest, $"one-time prekey {key.KeyId}: public_key must be 1 to {MaxKeyBytes} bytes", null);
            }
        }

        var current = store.GetPrekeyBundle(device.UserId, device.DeviceId);
        const string FirstUpload = "a device's first KEYS_UPLOAD needs identity_key and signed_prekey";
        PrekeyBundle? bundle = null;
        if (!upload.IdentityKey.IsEmpty || upload.SignedPrekey is not null)
        {
            ReadOnlyMemory<byte>? identity = !upload.IdentityKey.IsEmpty ? upload.IdentityKey.Memory : current?.IdentityKey;
            if (upload.SignedPrekey is { } signed && identity is { } id)
            {
                bundle = new PrekeyBundle(id, signed.KeyId, signed.PublicKey.Memory, signed.Signature.Memory);
            }
            else if (current is not null && identity is { } kept)
            {
                bundle = current with { IdentityKey = kept };
            }
            else
            {
                return new(ReasonCode.BadRequest, FirstUpload, null);
            }
        }
        else if (current is null)
        {
            // Without both, a fetch could not start a session with this device: refuse a half-registered device.
            return new(ReasonCode.BadRequest, FirstUpload, null);
        }

        var stored = store.CountOneTimePrekeys(device.UserId, device.DeviceId);
        if (stored + upload.OneTimePrekeys.Count > options.MaxOneTimePrekeys)
        {
            metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "one_time_prekeys"));
            return new(ReasonCode.BadRequest, $"at most {options.MaxOneTimePrekeys} one-time prekeys per device; {stored} are stored", null);
        }

        var oneTime = new Storage.OneTimePrekey[upload.OneTimePrekeys.Count];
        for (var i = 0; i < oneTime.Length; i++)
        {
            var key = upload.OneTimePrekeys[i];
            oneTime[i] = new Storage.OneTimePrekey(key.KeyId, key.PublicKey.Memory);
        }

        await store.UploadPrekeysAsync(device.UserId, device.DeviceId, bundle, oneTime, cancellationToken).ConfigureAwait(false);
        metrics.KeyUploads.Add(1);
        if (oneTime.Length > 0)
        {
            lock (_lastLowNotice)
            {
                _lastLowNotice.Remove((device.UserId, device.DeviceId)); // topped up: the next time it runs low it hears at once
            }
        }

        if (Fenced<KeysUploaded>() is { } after)
        {
            return after; // stored here; the retry at whoever serves the user stores it again or finds it (same key ids)
        }

        return new(ReasonCode.Success, null, new KeysUploaded
        {
            RequestId = upload.RequestId,
            OneTimePrekeysRemaining = (uint)store.CountOneTimePrekeys(device.UserId, device.DeviceId),
        });
    }

    /// <summary>
    /// FETCH_KEYS: one DeviceKeys per device (the one asked for, or every device with keys, as many as fit in
    /// <paramref name="maxFrameBytes"/>), each consuming one one-time prekey. KEYS_NOT_FOUND when none.
    /// </summary>
    public async Task<Outcome<KeyBundle>> FetchAsync(FetchKeys fetch, int maxFrameBytes, CancellationToken cancellationToken)
    {
        if (_router is { } router && !router.IsHomeOf(fetch.UserId))
        {
            // The target's home keeps its keys: the one-time prekey is taken there, once.
            return await router.FetchKeysAsync(fetch, maxFrameBytes, cancellationToken).ConfigureAwait(false);
        }

        if (Fenced<KeyBundle>() is { } before)
        {
            return before;
        }

        IReadOnlyList<string> devices = fetch.DeviceId.Length > 0 ? [fetch.DeviceId] : store.ListKeyDevices(fetch.UserId);
        var count = Math.Min(devices.Count, Math.Max(1, (maxFrameBytes - 256) / MaxDeviceKeysBytes));
        var takes = new Task<FetchedPrekeys?>[count];
        for (var i = 0; i < count; i++)
        {
            takes[i] = store.TakePrekeysAsync(fetch.UserId, devices[i], cancellationToken);
        }

        await Task.WhenAll(takes).ConfigureAwait(false);
        if (Fenced<KeyBundle>() is { } after)
        {
            // Taken here but not handed out: a one-time prekey reaches one fetcher at most, from whoever serves the
            // user now (this node's take may never have reached its replicas).
            return after;
        }

        var answer = new KeyBundle { RequestId = fetch.RequestId, UserId = fetch.UserId };
        for (var i = 0; i < count; i++)
        {
            if (takes[i].Result is not { } taken)
            {
                continue;
            }

            var keys = new DeviceKeys
            {
                DeviceId = devices[i],
                IdentityKey = ByteString.CopyFrom(taken.Bundle.IdentityKey.Span),
                SignedPrekey = new SignedPrekey
                {
                    KeyId = taken.Bundle.SignedPrekeyId,
                    PublicKey = ByteString.CopyFrom(taken.Bundle.SignedPrekey.Span),
                    Signature = ByteString.CopyFrom(taken.Bundle.Signature.Span),
                },
            };
            if (taken.OneTimePrekey is { } otk)
            {
                keys.OneTimePrekey = new Protocol.Messages.OneTimePrekey { KeyId = otk.Id, PublicKey = ByteString.CopyFrom(otk.PublicKey.Span) };
            }

            answer.Devices.Add(keys);
            metrics.KeyFetches.Add(1, new KeyValuePair<string, object?>("one_time", taken.OneTimePrekey is not null));
            NotifyIfLow(fetch.UserId, devices[i]);
        }

        return answer.Devices.Count == 0
            ? new(ReasonCode.KeysNotFound, $"no keys for {fetch.UserId}" + (fetch.DeviceId.Length > 0 ? "/" + fetch.DeviceId : ""), null)
            : new(ReasonCode.Success, null, answer);
    }

    /// <summary>Cluster fencing (docs/cluster.md, "Fencing"): at the user's home, a node that cannot confirm its lease
    /// neither stores nor hands out keys (another node may serve the user already); null when it may.</summary>
    private Outcome<T>? Fenced<T>()
        where T : class =>
        _router?.RefuseAcknowledgement() is { } refused ? new Outcome<T>(refused.Error, refused.Message ?? "retry", null) : null;

    /// <summary>Tells a device that has keys and is running low (if online) to upload more: KEYS_UPLOADED, request_id 0.</summary>
    /// <param name="onConnect">The device just connected: it hears at once (once per connection), and the interval
    /// starts again from here.</param>
    public void NotifyIfLow(string userId, string deviceId, bool onConnect = false)
    {
        IDeviceLink? target = null;
        foreach (var device in registry.DevicesOf(userId))
        {
            if (device.DeviceId == deviceId)
            {
                target = device;
            }
        }

        // Cluster mode: the device may be connected at another node (this is its user's home, where the keys are).
        if (target is null && (_router is null || !_router.IsHomeOf(userId)))
        {
            return;
        }

        // A device that never uploaded keys is not told to upload more: one point read, and only then the count
        // (on every connect; it stops at the watermark, where the answer is known).
        if (store.GetPrekeyBundle(userId, deviceId) is null)
        {
            return;
        }

        var remaining = store.CountOneTimePrekeys(userId, deviceId, upTo: options.LowWatermark);
        if (remaining < options.LowWatermark)
        {
            // Every fetch below the watermark would send another notice (dozens while a group starts sessions):
            // one per interval tells the device all it needs.
            if (!TakeLowNoticeTurn(userId, deviceId, onConnect))
            {
                metrics.KeysLowSuppressed.Add(1);
                return;
            }

            var notice = new KeysUploaded { RequestId = 0, OneTimePrekeysRemaining = (uint)remaining };
            if (target is not null)
            {
                target.OnNotice(notice);
            }
            else if (!_router!.NotifyRemoteDevice(userId, deviceId, notice))
            {
                return;
            }

            metrics.KeysLow.Add(1);
        }
    }

    /// <summary>True when the device may get a low-supply notice now (none within keys.low_notice_interval).</summary>
    private bool TakeLowNoticeTurn(string userId, string deviceId, bool always)
    {
        var now = _clock.GetUtcNow().UtcTicks;
        var interval = options.LowNoticeInterval.Ticks;
        lock (_lastLowNotice)
        {
            if (_lastLowNotice.Count >= 1024 && now - _lowNoticesPrunedAt >= interval)
            {
                _lowNoticesPrunedAt = now;
                foreach (var (key, at) in _lastLowNotice)
                {
                    if (now - at >= interval)
                    {
                        _lastLowNotice.Remove(key);
                    }
                }
            }

            if (!always && _lastLowNotice.TryGetValue((userId, deviceId), out var last) && now - last < interval)
            {
                return false;
            }

            _lastLowNotice[(userId, deviceId)] = now;
            return true;
        }
    }
}
