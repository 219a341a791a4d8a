using System.Reflection;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Host.Tests;

/// <summary>
/// Every log event of the broker's assemblies has a number of its own: operators grep and alert on them, and the docs
/// name them (docs/operations.md). Two messages under one number were found on 2026-12-07 (the mesh endpoint's and the
/// signal restore's 1018) only because a log was read by eye.
/// </summary>
public sealed class LogEventIdTests
{
    [Fact]
    public void No_two_log_messages_share_an_event_id()
    {
        var assemblies = new[]
        {
            typeof(Program).Assembly, // Host
            typeof(ChatBroker.Broker.Hosting.SignalMask).Assembly, // Broker
            typeof(ChatBroker.Cluster.ClusterOptions).Assembly, // Cluster
            typeof(ChatBroker.Storage.CommittedBatch).Assembly, // Storage
        };
        var seen = new Dictionary<int, string>();
        var duplicates = new List<string>();
        var count = 0;
        foreach (var assembly in assemblies.Distinct())
        {
            foreach (var type in assembly.GetTypes())
            {
                foreach (var method in type.GetMethods(BindingFlags.Static | BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                {
                    if (method.GetCustomAttribute<LoggerMessageAttribute>() is not { } message || message.EventId == -1)
                    {
                        continue;
                    }

                    count++;
                    var name = $"{type.FullName}.{method.Name}";
                    if (!seen.TryAdd(message.EventId, name))
                    {
                        duplicates.Add($"{message.EventId}: {seen[message.EventId]} and {name}");
                    }
                }
            }
        }

        Assert.True(count > 50, $"only {count} log messages found: the scan looks in the wrong place");
        Assert.True(duplicates.Count == 0, "event ids used twice: " + string.Join("; ", duplicates));
    }
}
