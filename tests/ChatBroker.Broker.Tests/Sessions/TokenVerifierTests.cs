using System.Security.Cryptography;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Sessions;
using ChatBroker.Protocol.Messages;
using ChatBroker.Tokens;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>Issue 18: the rotation window and the revocation time, at their edges.</summary>
public sealed class TokenVerifierTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 6, 3, 0, 0, TimeSpan.Zero);

    [Fact]
    public void The_previous_secret_counts_until_its_window_ends_and_never_without_an_end()
    {
        var currentKey = RandomNumberGenerator.GetBytes(32);
        var previousKey = RandomNumberGenerator.GetBytes(32);
        var previous = new TokenSecret(previousKey);
        var old = AccessToken.Issue(previous, "alice", "phone", TimeSpan.FromDays(1), Now);
        var auth = new AuthOptions { PreviousSecret = Convert.ToBase64String(previousKey), PreviousSecretUntil = Now.AddHours(1) };
        var verifier = new TokenVerifier(new TokenSecret(currentKey), auth);

        var outcome = verifier.Verify(old, Now.AddMinutes(59));
        Assert.Equal((ReasonCode.Success, true), (outcome.Reason, outcome.ByPreviousSecret));
        outcome = verifier.Verify(old, Now.AddHours(1));
        Assert.Equal((ReasonCode.BadToken, "previous_expired"), (outcome.Reason, outcome.RefusedAs));

        // An expired token of the previous secret is expired, not accepted.
        var shortLived = AccessToken.Issue(previous, "alice", "phone", TimeSpan.FromMinutes(1), Now);
        Assert.Equal(ReasonCode.TokenExpired, verifier.Verify(shortLived, Now.AddMinutes(2)).Reason);

        // Without an end time the previous secret is not accepted at all.
        var noWindow = new TokenVerifier(new TokenSecret(currentKey), new AuthOptions { PreviousSecret = Convert.ToBase64String(previousKey) });
        Assert.Equal(ReasonCode.BadToken, noWindow.Verify(old, Now).Reason);
    }

    [Fact]
    public void A_token_issued_in_or_before_the_second_of_a_revocation_is_revoked_and_one_issued_after_is_not()
    {
        var revokedAtMs = Now.ToUnixTimeMilliseconds() + 400;
        Assert.True(TokenVerifier.IsRevoked(revokedAtMs, Now.AddSeconds(-10)));
        Assert.True(TokenVerifier.IsRevoked(revokedAtMs, Now));
        Assert.False(TokenVerifier.IsRevoked(revokedAtMs, Now.AddSeconds(1)));
        Assert.False(TokenVerifier.IsRevoked(null, Now));
    }
}
