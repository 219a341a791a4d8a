using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// A home that restarts has lost its table of where its users' devices are connected; the devices stay connected at
/// their gateways and must still get what the home stores from then on, also when nothing else is ever sent to them
/// (a stream notices a gap only at its next message). Bob's home is node2, he is connected at node1; the
/// conversation with alice is owned by node3.
/// </summary>
public sealed class ResyncTests : IAsyncLifetime
{
    private ClusterHarness _cluster = null!;
    private string _alice = "";
    private string _bob = "";

    public async Task InitializeAsync()
    {
        // No presence debounce: a change is published at once, so the tests wait for packets, not for time.
        _cluster = await ClusterHarness.StartAsync(3, configure: o => o.Presence.Debounce = TimeSpan.Zero);
        _alice = _cluster.UserAt("alice", "node3");
        var alice = _alice;
        _bob = _cluster.UserAt("bob", "node2", bob => _cluster.Ring.ConversationOwner(ClusterOps.DirectConversationId(alice, bob)) == "node3");
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task A_device_at_another_gateway_gets_what_its_restarted_home_stores_after_the_restart()
    {
        var bob = await _cluster["node1"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var alice = await _cluster["node3"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "before"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(("before", 1UL), await NextDeliverAsync(bob));

        await _cluster.RestartAsync("node2");
        await alice.SendAsync(TestDevice.Text(2, _bob, "after"));
        Assert.Equal(2UL, (await alice.ExpectAsync<Sent>()).Seq);

        // Nothing else is sent: bob's stream would never see a gap. The restarted home asked node1 to register bob
        // again, and node1 caught him up from it.
        Assert.Equal(("after", 2UL), await NextDeliverAsync(bob));
        Assert.True(_cluster["node1"].Cluster.Metrics.Snapshot().DevicesReattached >= 1);
    }

    [Fact]
    public async Task Entries_a_dead_home_receives_when_it_is_back_reach_a_device_connected_elsewhere_without_another_message()
    {
        var bob = await _cluster["node1"].ConnectAsync(_bob, "phone");
        await bob.ExpectAsync<SyncDone>();
        var alice = await _cluster["node3"].ConnectAsync(_alice, "phone");
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "m1"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq);
        Assert.Equal(("m1", 1UL), await NextDeliverAsync(bob));

        // The home dies; the owner acknowledges and keeps the entries in its durable forward queue meanwhile.
        await _cluster.KillAsync("node2");
        for (ulong i = 2; i <= 4; i++)
        {
            await alice.SendAsync(TestDevice.Text(i, _bob, $"m{i}"));
            Assert.Equal(i, (await alice.ExpectAsync<Sent>()).Seq);
        }

        await _cluster.ReviveAsync("node2");
        for (ulong i = 2; i <= 4; i++)
        {
            Assert.Equal(($"m{i}", i), await NextDeliverAsync(bob));
        }
    }

    [Fact]
    public async Task The_devices_of_a_gateway_whose_lease_went_count_as_offline_at_their_home()
    {
        var alice = await ConnectWithPresenceAsync("node3", _alice);
        await alice.ExpectAsync<SyncDone>();
        await alice.SendAsync(TestDevice.Text(1, _bob, "let's talk"));
        await alice.ExpectAsync<Sent>();
        await alice.SendAsync(new PresenceSubscribe { RequestId = 5, UserIds = { _bob } });
        Assert.Equal(PresenceStatus.Offline, (await NextAsync<PresenceSubscribed>(alice)).Current.Single().Status);

        await ConnectWithPresenceAsync("node1", _bob);
        Assert.Equal(PresenceStatus.Online, (await NextAsync<Presence>(alice)).Status);

        // bob's gateway dies with his session: no offline registration ever comes from it. His home sees its lease
        // go and counts his device offline (presence now; push jobs for what comes next).
        await _cluster.KillAsync("node1");
        var offline = await NextAsync<Presence>(alice);
        Assert.Equal((_bob, PresenceStatus.Offline), (offline.UserId, offline.Status));
        Assert.False(_cluster["node2"].Cluster.IsOnlineElsewhere(_bob));
        Assert.Equal(1, _cluster["node2"].Cluster.Metrics.Snapshot().DevicesForgotten);
    }

    private async Task<TestDevice> ConnectWithPresenceAsync(string node, string user)
    {
        var harness = _cluster[node].Broker;
        var device = harness.Open();
        var connect = harness.ConnectPacket(user, "phone");
        connect.Capabilities = (ulong)Capability.Presence;
        await device.SendAsync(connect);
        Assert.Equal(ReasonCode.Success, (await device.ExpectAsync<Connack>()).Reason);
        return device;
    }

    private static async Task<T> NextAsync<T>(TestDevice device)
        where T : class, Google.Protobuf.IMessage
    {
        while (true)
        {
            var message = await device.ReceiveAsync();
            Assert.NotNull(message);
            if (message is T wanted)
            {
                return wanted;
            }
        }
    }

    /// <summary>The next DELIVER, skipping receipts; its body and seq.</summary>
    private static async Task<(string Body, ulong Seq)> NextDeliverAsync(TestDevice device)
    {
        while (true)
        {
            if (await device.ReceiveAsync() is Deliver deliver)
            {
                return (deliver.Body.ToStringUtf8(), deliver.Seq);
            }
        }
    }
}
