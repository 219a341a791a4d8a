using ChatBroker.Broker.Messaging;

namespace ChatBroker.Broker.Tests.Core;

public sealed class SessionRegistryTests
{
    [Fact]
    public void Second_login_of_a_device_replaces_the_first()
    {
        var registry = new SessionRegistry();
        var first = new FakeDevice("alice", "phone");
        var second = new FakeDevice("alice", "phone");

        Assert.Equal(SessionRegistry.RegisterOutcome.Registered, registry.Register(first, 10, out var replaced));
        Assert.Null(replaced);
        Assert.Equal(SessionRegistry.RegisterOutcome.Registered, registry.Register(second, 10, out replaced));

        Assert.Same(first, replaced);
        Assert.Same(second, Assert.Single(registry.DevicesOf("alice")));
        Assert.Equal(1, registry.SessionCount);
    }

    [Fact]
    public void Unregistering_a_replaced_session_leaves_its_successor()
    {
        var registry = new SessionRegistry();
        var first = new FakeDevice("alice", "phone");
        var second = new FakeDevice("alice", "phone");
        registry.Register(first, 10, out _);
        registry.Register(second, 10, out _);

        Assert.False(registry.Unregister(first));
        Assert.True(registry.IsOnline("alice"));
        Assert.True(registry.Unregister(second));
        Assert.False(registry.IsOnline("alice"));
        Assert.Equal(0, registry.SessionCount);
        Assert.Equal(0, registry.UserCount);
    }

    [Fact]
    public void Devices_beyond_the_limit_are_refused()
    {
        var registry = new SessionRegistry();
        registry.Register(new FakeDevice("alice", "a"), 2, out _);
        registry.Register(new FakeDevice("alice", "b"), 2, out _);

        Assert.Equal(SessionRegistry.RegisterOutcome.TooManyDevices, registry.Register(new FakeDevice("alice", "c"), 2, out _));
        // A known device may still log in again (takeover does not add a device).
        Assert.Equal(SessionRegistry.RegisterOutcome.Registered, registry.Register(new FakeDevice("alice", "b"), 2, out _));
        Assert.Equal(2, registry.DevicesOf("alice").Length);
    }

    [Fact]
    public async Task Concurrent_logins_and_logouts_keep_the_count_exact()
    {
        var registry = new SessionRegistry();
        var devices = Enumerable.Range(0, 2000).Select(i => new FakeDevice("user" + (i % 50), "d" + i)).ToArray();

        await Task.WhenAll(devices.Select(d => Task.Run(() => registry.Register(d, 1000, out _))));
        Assert.Equal(2000, registry.SessionCount);
        await Task.WhenAll(devices.Take(1500).Select(d => Task.Run(() => registry.Unregister(d))));

        Assert.Equal(500, registry.SessionCount);
        Assert.Equal(500, registry.Snapshot().Count);
        Assert.Equal(registry.Snapshot().ToHashSet(), registry.Sessions().ToHashSet());
    }
}
