using System.Diagnostics;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// A per-connection rate limit: <c>rate</c> tokens a second, bursts up to twice that. The rate is a setting
/// shared by every connection, so it is passed in rather than stored: a bucket is 16 bytes of every session.
/// Starts full. Not thread-safe: a connection's read loop is its only user.
/// </summary>
internal struct TokenBucket
{
    private double _spent; // tokens below a full bucket (0 = full), as of _last
    private long _last;

    /// <summary>Takes <paramref name="amount"/> tokens, or says how long until they would be there.</summary>
    public bool TryTake(double ratePerSecond, double amount, out TimeSpan retryAfter)
    {
        var now = Stopwatch.GetTimestamp();
        var burst = ratePerSecond * 2;
        var tokens = _last == 0 ? burst : Math.Min(burst, burst - _spent + (Stopwatch.GetElapsedTime(_last, now).TotalSeconds * ratePerSecond));
        _last = now;
        if (tokens >= amount)
        {
            _spent = burst - (tokens - amount);
            retryAfter = TimeSpan.Zero;
            return true;
        }

        _spent = burst - tokens;
        retryAfter = TimeSpan.FromSeconds((amount - tokens) / ratePerSecond);
        return false;
    }
}
