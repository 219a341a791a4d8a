using ChatBroker.Broker.Mqtt;

namespace ChatBroker.Mqtt.Tests;

/// <summary>Topic names, filters and the subscription tree (MQTT 3.1.1 §4.7, 5.0 §4.7).</summary>
public sealed class TopicTests
{
    [Theory]
    [InlineData("a/b", "a/b", true)]
    [InlineData("a/+", "a/b", true)]
    [InlineData("a/+", "a/b/c", false)]
    [InlineData("a/#", "a", true)]
    [InlineData("a/#", "a/b/c", true)]
    [InlineData("#", "a/b", true)]
    [InlineData("+/+", "/b", true)]
    [InlineData("+", "/b", false)]
    [InlineData("#", "$SYS/x", false)]
    [InlineData("+/x", "$SYS/x", false)]
    [InlineData("$SYS/#", "$SYS/x", true)]
    [InlineData("a/b", "a/c", false)]
    public void Filters_match_as_the_spec_says(string filter, string topic, bool matches)
    {
        Assert.Equal(matches, MqttTopics.Matches(filter, topic));

        // The tree agrees with the rule.
        var tree = new MqttTopicTree();
        var session = new MqttSessionState("c", "");
        tree.Add(new MqttSubscription(session, filter, 1, false, false, 0));
        var found = new List<MqttSubscription>();
        tree.Match(topic, found);
        Assert.Equal(matches, found.Count == 1);
    }

    [Theory]
    [InlineData("a/#", true)]
    [InlineData("#", true)]
    [InlineData("a/+/c", true)]
    [InlineData("a/#/c", false)]
    [InlineData("a/b#", false)]
    [InlineData("a/b+", false)]
    [InlineData("", false)]
    public void Filters_are_validated(string filter, bool valid) => Assert.Equal(valid, MqttTopics.IsValidFilter(filter));

    [Theory]
    [InlineData("a/b", true)]
    [InlineData("a/+", false)]
    [InlineData("a/#", false)]
    [InlineData("", false)]
    public void Topic_names_are_validated(string topic, bool valid) => Assert.Equal(valid, MqttTopics.IsValidName(topic));

    [Fact]
    public void Removing_a_subscription_prunes_the_tree()
    {
        var tree = new MqttTopicTree();
        var session = new MqttSessionState("c", "");
        tree.Add(new MqttSubscription(session, "a/b/c", 1, false, false, 0));
        Assert.Equal(1, tree.Count);
        Assert.True(tree.Remove(session, "a/b/c"));
        Assert.Equal(0, tree.Count);
        var found = new List<MqttSubscription>();
        tree.Match("a/b/c", found);
        Assert.Empty(found);
    }
}
