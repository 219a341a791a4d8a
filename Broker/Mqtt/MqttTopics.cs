namespace ChatBroker.Broker.Mqtt;

/// <summary>Topic names and filters (MQTT 3.1.1 §4.7, 5.0 §4.7): validation and matching.</summary>
internal static class MqttTopics
{
    /// <summary>A topic name a PUBLISH may carry: not empty, no wildcards, no U+0000 [MQTT-3.3.2-2, MQTT-4.7.3-1].</summary>
    public static bool IsValidName(string? topic) =>
        !string.IsNullOrEmpty(topic) && topic.AsSpan().IndexOfAny('+', '#', '\0') < 0 && topic.Length <= 65535;

    /// <summary>A valid filter: '#' alone in the last level, '+' alone in its level [MQTT-4.7.1-2, MQTT-4.7.1-3].</summary>
    public static bool IsValidFilter(string? filter)
    {
        if (string.IsNullOrEmpty(filter) || filter.Contains('\0', StringComparison.Ordinal))
        {
            return false;
        }

        var start = 0;
        while (true)
        {
            var end = filter.IndexOf('/', start);
            var level = end < 0 ? filter.AsSpan(start) : filter.AsSpan(start, end - start);
            if (level.Contains('#'))
            {
                if (level.Length != 1 || end >= 0)
                {
                    return false;
                }
            }
            else if (level.Contains('+') && level.Length != 1)
            {
                return false;
            }

            if (end < 0)
            {
                return true;
            }

            start = end + 1;
        }
    }

    /// <summary>
    /// True when <paramref name="filter"/> matches <paramref name="topic"/>. Wildcards in the first level never match a
    /// topic starting with '$' [MQTT-4.7.2-1]; "a/#" matches "a" too (§4.7.1.2).
    /// </summary>
    public static bool Matches(string filter, string topic)
    {
        if (topic.Length > 0 && topic[0] == '$' && filter.Length > 0 && (filter[0] == '+' || filter[0] == '#'))
        {
            return false;
        }

        int f = 0, t = 0;
        while (true)
        {
            var fEnd = filter.IndexOf('/', f);
            var fLevel = fEnd < 0 ? filter.AsSpan(f) : filter.AsSpan(f, fEnd - f);
            if (fLevel is "#")
            {
                return true;
            }

            if (t > topic.Length)
            {
                return false; // the topic ended; only "#" (handled above) matches the parent level
            }

            var tEnd = topic.IndexOf('/', t);
            var tLevel = tEnd < 0 ? topic.AsSpan(t) : topic.AsSpan(t, tEnd - t);
            if (fLevel is not "+" && !fLevel.SequenceEqual(tLevel))
            {
                return false;
            }

            if (fEnd < 0)
            {
                return tEnd < 0;
            }

            f = fEnd + 1;
            t = tEnd < 0 ? topic.Length + 1 : tEnd + 1;
        }
    }
}

/// <summary>One session's subscription to a filter.</summary>
internal sealed record MqttSubscription(MqttSessionState Session, string Filter, byte Qos, bool NoLocal, bool RetainAsPublished, uint Identifier);

/// <summary>
/// The subscriptions of the general topic space, as a tree of filter levels, so a PUBLISH visits only the branches
/// its levels name (plus '+' and '#'), whatever the number of subscribers. One lock: subscribe and unsubscribe are
/// rare next to matching, and matching holds it only while it collects.
/// </summary>
internal sealed class MqttTopicTree
{
    private readonly Lock _lock = new();
    private readonly Node _root = new();

    private sealed class Node
    {
        public Dictionary<string, Node>? Children;
        public List<MqttSubscription>? Subscriptions;
    }

    public int Count { get; private set; }

    /// <summary>Adds or replaces the session's subscription to the same filter; true when it replaced one.</summary>
    public bool Add(MqttSubscription subscription)
    {
        lock (_lock)
        {
            var node = _root;
            foreach (var level in subscription.Filter.Split('/'))
            {
                node.Children ??= new Dictionary<string, Node>(StringComparer.Ordinal);
                if (!node.Children.TryGetValue(level, out var child))
                {
                    child = new Node();
                    node.Children.Add(level, child);
                }

                node = child;
            }

            node.Subscriptions ??= [];
            for (var i = 0; i < node.Subscriptions.Count; i++)
            {
                if (node.Subscriptions[i].Session == subscription.Session)
                {
                    node.Subscriptions[i] = subscription;
                    return true;
                }
            }

            node.Subscriptions.Add(subscription);
            Count++;
            return false;
        }
    }

    public bool Remove(MqttSessionState session, string filter)
    {
        lock (_lock)
        {
            return RemoveAt(_root, filter.Split('/'), 0, session);
        }
    }

    private bool RemoveAt(Node node, string[] levels, int index, MqttSessionState session)
    {
        if (index == levels.Length)
        {
            var removed = node.Subscriptions?.RemoveAll(s => s.Session == session) > 0;
            if (removed)
            {
                Count--;
            }

            return removed;
        }

        if (node.Children is null || !node.Children.TryGetValue(levels[index], out var child))
        {
            return false;
        }

        var result = RemoveAt(child, levels, index + 1, session);
        if (child.Children is null or { Count: 0 } && child.Subscriptions is null or { Count: 0 })
        {
            node.Children.Remove(levels[index]); // prune empty branches
        }

        return result;
    }

    /// <summary>Every subscription matching <paramref name="topic"/>, added to <paramref name="into"/>.</summary>
    public void Match(string topic, List<MqttSubscription> into)
    {
        var levels = topic.Split('/');
        var dollar = topic.StartsWith('$');
        lock (_lock)
        {
            MatchAt(_root, levels, 0, into, dollar);
        }
    }

    private static void MatchAt(Node node, string[] levels, int index, List<MqttSubscription> into, bool dollar)
    {
        if (node.Children is null)
        {
            if (index == levels.Length && node.Subscriptions is not null)
            {
                into.AddRange(node.Subscriptions);
            }

            return;
        }

        var wildcardsAllowed = !(index == 0 && dollar);
        if (wildcardsAllowed && node.Children.TryGetValue("#", out var hash) && hash.Subscriptions is not null)
        {
            into.AddRange(hash.Subscriptions); // "a/#" matches "a" and everything below it
        }

        if (index == levels.Length)
        {
            if (node.Subscriptions is not null)
            {
                into.AddRange(node.Subscriptions);
            }

            return;
        }

        if (node.Children.TryGetValue(levels[index], out var exact))
        {
            MatchAt(exact, levels, index + 1, into, dollar);
        }

        if (wildcardsAllowed && node.Children.TryGetValue("+", out var plus))
        {
            MatchAt(plus, levels, index + 1, into, dollar);
        }
    }
}
