using ChatBroker.Cluster.Ring;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>Test users placed on a ring (also compiled into the end-to-end cluster tests).</summary>
internal static class RingPlacement
{
    /// <summary>The first user id of the form <paramref name="prefix"/>N whose home is <paramref name="home"/> (and that
    /// passes <paramref name="also"/>).</summary>
    public static string UserAt(HashRing ring, string prefix, string home, Func<string, bool>? also = null)
    {
        for (var i = 0; i < 100_000; i++)
        {
            var user = prefix + i;
            if (ring.UserHome(user) == home && (also is null || also(user)))
            {
                return user;
            }
        }

        throw new InvalidOperationException($"no user {prefix}N has home {home}");
    }
}
