using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Observability;

namespace ChatBroker.Broker.Sessions;

/// <summary>What an <see cref="AbuseLimits"/> bound counts.</summary>
public enum AbuseLimit
{
    NewConversations,
    GroupCreations,
    MembershipChanges,
    PrekeyFetches,
}

/// <summary>
/// Per-user hourly limits (<c>abuse.*</c>) that a public service needs against spam and scraping: starting direct
/// conversations, creating groups, changing group membership, fetching others' prekeys. Each is a bucket of N an
/// hour per user (over all of the user's connections on this node), refilled continuously, starting full; N = 0
/// turns the limit off. A refusal is ERROR(RATE_LIMITED, retry_after_ms) counted in
/// <c>chatbroker_limits_rejected_total{limit="new_conversations"|...}</c>.
/// <para>
/// Memory: an entry per (user, limit) used in the last hour. Entries whose bucket has refilled are dropped when the
/// table grows past <see cref="SweepAt"/>, so idle users cost nothing.
/// </para>
/// </summary>
public sealed class AbuseLimits(AbuseOptions options, BrokerMetrics metrics, TimeProvider clock)
{
    private const int SweepAt = 100_000;
    private static readonly string[] Names = ["new_conversations", "group_creations", "membership_changes", "prekey_fetches"];

    private readonly Lock _lock = new();
    private readonly Dictionary<(string User, AbuseLimit Limit), Bucket> _buckets = new();
    private int _nextSweep = SweepAt;

    private int PerHour(AbuseLimit limit) => limit switch
    {
        AbuseLimit.NewConversations => options.NewConversationsPerHour,
        AbuseLimit.GroupCreations => options.GroupCreationsPerHour,
        AbuseLimit.MembershipChanges => options.MembershipChangesPerHour,
        _ => options.PrekeyFetchesPerHour,
    };

    /// <summary>Takes <paramref name="amount"/> from the user's bucket, or says when it would be there (and counts the refusal).</summary>
    public bool TryTake(string userId, AbuseLimit limit, int amount, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        var perHour = PerHour(limit);
        if (perHour <= 0 || amount <= 0)
        {
            return true;
        }

        var now = clock.GetUtcNow().ToUnixTimeMilliseconds();
        var ratePerMs = perHour / 3_600_000.0;
        lock (_lock)
        {
            if (_buckets.Count >= _nextSweep)
            {
                SweepLocked(now);
            }

            var key = (userId, limit);
            var tokens = _buckets.TryGetValue(key, out var bucket)
                ? Math.Min(perHour, bucket.Tokens + ((now - bucket.AtMs) * ratePerMs))
                : perHour;
            if (tokens >= amount)
            {
                _buckets[key] = new Bucket(tokens - amount, now);
                return true;
            }

            _buckets[key] = new Bucket(tokens, now);
            retryAfter = TimeSpan.FromMilliseconds(Math.Ceiling((amount - tokens) / ratePerMs));
        }

        metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", Names[(int)limit]));
        return false;
    }

    private void SweepLocked(long now)
    {
        List<(string, AbuseLimit)>? full = null;
        foreach (var (key, bucket) in _buckets)
        {
            if (bucket.Tokens + ((now - bucket.AtMs) * PerHour(key.Limit) / 3_600_000.0) >= PerHour(key.Limit))
            {
                (full ??= []).Add(key);
            }
        }

        if (full is not null)
        {
            foreach (var key in full)
            {
                _buckets.Remove(key);
            }
        }

        _nextSweep = Math.Max(SweepAt, _buckets.Count * 2);
    }

    private readonly record struct Bucket(double Tokens, long AtMs);
}
