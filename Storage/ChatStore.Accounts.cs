using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>Who may see a user's presence (docs/protocol.md §5, SETTINGS).</summary>
public enum PresenceVisibility : byte
{
    /// <summary>Everyone who may subscribe (shares a conversation with the user).</summary>
    Everyone = 0,
    /// <summary>Only the users on the user's contact list.</summary>
    Contacts = 1,
    /// <summary>Nobody.</summary>
    Nobody = 2,
}

/// <summary>A user's settings kept by the broker: presence visibility and the contact list it refers to.</summary>
public sealed record UserSettings(PresenceVisibility Visibility, IReadOnlyList<string> Contacts)
{
    public static UserSettings Default { get; } = new(PresenceVisibility.Everyone, []);

    /// <summary>True when <paramref name="viewer"/> may see the presence of the user these settings belong to.</summary>
    public bool Shows(string owner, string viewer) => viewer == owner || Visibility switch
    {
        PresenceVisibility.Everyone => true,
        PresenceVisibility.Contacts => Contains(viewer),
        _ => false,
    };

    private HashSet<string>? _contactSet;

    private bool Contains(string user) =>
        (_contactSet ??= new HashSet<string>(Contacts, StringComparer.Ordinal)).Contains(user);
}

/// <summary>A device of a user that was revoked, and when (server time, unix ms).</summary>
public readonly record struct RevokedDevice(string DeviceId, long RevokedAtMs);

/// <summary>Per-user account records: settings and revoked devices (kept with presence, at the user's home).</summary>
public interface IAccountStore
{
    Task SetUserSettingsAsync(string userId, UserSettings settings, CancellationToken cancellationToken = default);

    /// <summary>The user's settings; <see cref="UserSettings.Default"/> when never set.</summary>
    UserSettings GetUserSettings(string userId);

    /// <summary>Records that tokens of the device issued at or before <paramref name="revokedAtMs"/> are refused.
    /// A later revocation moves the time forward; an earlier one changes nothing.</summary>
    Task RevokeDeviceAsync(string userId, string deviceId, long revokedAtMs, CancellationToken cancellationToken = default);

    /// <summary>When the device was last revoked (unix ms); null when never.</summary>
    long? GetDeviceRevokedAt(string userId, string deviceId);

    /// <summary>Every revoked device of the user, by device id.</summary>
    IReadOnlyList<RevokedDevice> ListRevokedDevices(string userId);
}

public abstract partial class ChatStore : IAccountStore
{
    public ulong? FindDirect(string userA, string userB)
    {
        ValidateIds(userA, userB);
        var mapping = _engine.Get(Cf.Directs, Records.DirectKey(new ByteWriter(), userA, userB).Span);
        return mapping is { Length: >= 8 } ? Records.TrailingU64(mapping) : null;
    }

    public async Task SetUserSettingsAsync(string userId, UserSettings settings, CancellationToken cancellationToken = default)
    {
        Records.ValidateId(userId, nameof(userId));
        ArgumentNullException.ThrowIfNull(settings);
        foreach (var contact in settings.Contacts)
        {
            Records.ValidateId(contact, nameof(settings));
        }

        await _writer.EnqueueAsync(new SetUserSettingsOp(userId, settings), null, cancellationToken).ConfigureAwait(false);
    }

    public UserSettings GetUserSettings(string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var value = _engine.Get(Cf.Presence, Records.SettingsKey(new ByteWriter(), userId).Span);
        return value is null ? UserSettings.Default : Records.ReadSettings(value);
    }

    public async Task RevokeDeviceAsync(string userId, string deviceId, long revokedAtMs, CancellationToken cancellationToken = default)
    {
        ValidateIds(userId, deviceId);
        await _writer.EnqueueAsync(new RevokeDeviceOp(userId, deviceId, revokedAtMs), null, cancellationToken).ConfigureAwait(false);
    }

    public long? GetDeviceRevokedAt(string userId, string deviceId)
    {
        ValidateIds(userId, deviceId);
        var value = _engine.Get(Cf.Presence, Records.RevokedKey(new ByteWriter(), userId, deviceId).Span);
        return value is { Length: 8 } ? (long)Records.TrailingU64(value) : null;
    }

    public IReadOnlyList<RevokedDevice> ListRevokedDevices(string userId)
    {
        Records.ValidateId(userId, nameof(userId));
        var prefix = Records.RevokedPrefix(new ByteWriter(), userId).ToArray();
        var result = new List<RevokedDevice>();
        using var cursor = _engine.OpenCursor(Cf.Presence, prefix, KeyRange.PrefixSuccessor(prefix));
        for (cursor.SeekToFirst(); cursor.Valid; cursor.Next())
        {
            if (cursor.Value.Length == 8)
            {
                var reader = new ByteReader(cursor.Key[prefix.Length..]);
                result.Add(new RevokedDevice(reader.Str(), (long)Records.TrailingU64(cursor.Value)));
            }
        }

        return result;
    }
}

internal sealed class SetUserSettingsOp(string userId, UserSettings settings) : WriteOp<bool>
{
    public override int EstimatedBytes => 64 + (settings.Contacts.Count * 32);

    public override void Apply(CommitWriter w)
    {
        w.Batch.Put(Cf.Presence, Records.SettingsKey(w.Key, userId).Span, Records.SettingsValue(w.Value, settings).Span);
        Result = true;
    }
}

internal sealed class RevokeDeviceOp(string userId, string deviceId, long revokedAtMs) : WriteOp<bool>
{
    public override string? ConflictKey => $"revoked|{userId}|{deviceId}";

    public override void Apply(CommitWriter w)
    {
        var key = Records.RevokedKey(w.Key, userId, deviceId);
        var existing = w.Engine.Get(Cf.Presence, key.Span);
        if (existing is { Length: 8 } && (long)Records.TrailingU64(existing) >= revokedAtMs)
        {
            Result = false;
            return;
        }

        w.Batch.Put(Cf.Presence, key.Span, w.Value.Reset().I64(revokedAtMs).Span);
        Result = true;
    }
}
