namespace ChatBroker.Client;

/// <summary>
/// Exponential backoff with full jitter: attempt n (0-based) waits a uniformly random time in
/// [0, min(<see cref="MaxDelay"/>, <see cref="InitialDelay"/> × 2^n)), and never less than the server's
/// retry_after_ms. Full jitter spreads a crowd of devices that lost the same server over the whole window
/// instead of having them return in waves.
/// </summary>
public sealed class ReconnectPolicy
{
    private readonly Lock _lock = new();
    private readonly Random _random;

    /// <param name="random">Source of jitter; pass a seeded <see cref="Random"/> for reproducible delays.</param>
    public ReconnectPolicy(Random? random = null) => _random = random ?? Random.Shared;

    public TimeSpan InitialDelay { get; init; } = TimeSpan.FromMilliseconds(250);

    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The upper bound of the jitter window for a 0-based attempt.</summary>
    public TimeSpan Ceiling(int attempt)
    {
        var ceiling = InitialDelay.TotalMilliseconds * Math.Pow(2, Math.Clamp(attempt, 0, 30));
        return TimeSpan.FromMilliseconds(Math.Min(ceiling, MaxDelay.TotalMilliseconds));
    }

    /// <summary>The delay before 0-based attempt <paramref name="attempt"/>, at least <paramref name="retryAfter"/>.</summary>
    public TimeSpan NextDelay(int attempt, TimeSpan retryAfter = default)
    {
        double fraction;
        lock (_lock)
        {
            fraction = _random.NextDouble();
        }

        var delay = TimeSpan.FromMilliseconds(Math.Floor(Ceiling(attempt).TotalMilliseconds * fraction));
        return delay < retryAfter ? retryAfter : delay;
    }
}
