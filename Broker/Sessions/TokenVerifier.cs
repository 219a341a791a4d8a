using ChatBroker.Broker.Configuration;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using ChatBroker.Tokens;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// Checks a CONNECT's token: its signature by the current secret, or during a rotation by
/// <c>auth.previous_secret</c> until <c>auth.previous_secret_until</c>; then whether the device was revoked after
/// the token was issued (<c>iat</c> at or before the revocation time in the store: refused, also across restarts).
/// </summary>
public sealed class TokenVerifier
{
    private readonly TokenSecret _secret;
    private readonly TokenSecret? _previous;
    private readonly DateTimeOffset _previousUntil;

    public TokenVerifier(TokenSecret secret, AuthOptions options)
    {
        _secret = secret;
        if (options.PreviousSecret.Length > 0 && options.PreviousSecretUntil is { } until)
        {
            _previous = TokenSecret.FromBase64(options.PreviousSecret);
            _previousUntil = until;
        }
    }

    public readonly record struct Outcome(ReasonCode Reason, string? Message, TokenClaims Claims, bool ByPreviousSecret, string? RefusedAs);

    public Outcome Verify(string token, DateTimeOffset now)
    {
        var status = AccessToken.Verify(_secret, token, now, out var claims);
        var previous = false;
        if (status is TokenStatus.WrongKey or TokenStatus.BadSignature && _previous is not null)
        {
            // A token of the secret being replaced: good only inside the rotation window.
            var old = AccessToken.Verify(_previous, token, now, out var oldClaims);
            if (old is TokenStatus.Valid or TokenStatus.Expired)
            {
                if (now >= _previousUntil)
                {
                    return new(ReasonCode.BadToken, "token was signed with the previous secret, whose rotation window has ended; fetch a new one", default, false, "previous_expired");
                }

                status = old;
                claims = oldClaims;
                previous = true;
            }
        }

        return status switch
        {
            TokenStatus.Valid => new(ReasonCode.Success, null, claims, previous, null),
            TokenStatus.Expired => new(ReasonCode.TokenExpired, "token expired; fetch a new one", default, false, "expired"),
            TokenStatus.Malformed => new(ReasonCode.BadToken, "token is malformed", default, false, "bad_token"),
            TokenStatus.WrongKey => new(ReasonCode.BadToken, "token was signed with another secret", default, false, "bad_token"),
            _ => new(ReasonCode.BadToken, "token signature does not match", default, false, "bad_token"),
        };
    }

    /// <summary>True when a token issued at <paramref name="issuedAt"/> predates the device's revocation: tokens carry
    /// whole seconds, so one issued in the second of the revocation is refused too.</summary>
    public static bool IsRevoked(long? revokedAtMs, DateTimeOffset issuedAt) =>
        revokedAtMs is { } at && issuedAt.ToUnixTimeSeconds() <= at / 1000;

    /// <summary>The revocation check against the store (single node, or the user's home).</summary>
    public static bool IsRevoked(IAccountStore store, string userId, string deviceId, DateTimeOffset issuedAt) =>
        IsRevoked(Messaging.DeviceRevocations.RevokedAt(store, userId, deviceId), issuedAt);
}
