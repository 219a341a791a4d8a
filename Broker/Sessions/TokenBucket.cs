using System.Diagnostics;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// A per-connection rate limit: <c>rate</c> tokens a second, bursts up to twice that. Not thread-safe: a
/// connection's read loop is its only user.
/// </summary>
internal struct TokenBucket(double ratePerSecond)
{
    private readonly double _rate = ratePerSecond;
    private readonly double _burst = ratePerSecond * 2;
    private double _tokens = ratePerSecond * 2;
    private long _last = Stopwatch.GetTimestamp();

    /// <summary>Takes <paramref name="amount"/> tokens, or says how long until they would be there.</summary>
    public bool TryTake(double amount, out TimeSpan retryAfter)
    {
        var now = Stopwatch.GetTimestamp();
        _tokens = Math.Min(_burst, _tokens + (Stopwatch.GetElapsedTime(_last, now).TotalSeconds * _rate));
        _last = now;
        if (_tokens >= amount)
        {
            _tokens -= amount;
            retryAfter = TimeSpan.Zero;
            return true;
        }

        retryAfter = TimeSpan.FromSeconds((amount - _tokens) / _rate);
        return false;
    }
}
