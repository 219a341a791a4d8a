using ChatBroker.Broker.Cluster;
using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// A device's registrations from two gateways travel two streams, so the older login's can reach the home last.
/// Logins carry a stamp; the home lets only the newest login hold the device and closes a stale one at its gateway.
/// </summary>
public sealed class TakeoverOrderTests
{
    [Fact]
    public async Task A_registration_of_an_older_login_arriving_last_does_not_take_the_device_over_a_newer_one_does()
    {
        await using var cluster = await ClusterHarness.StartAsync(3);
        var aliceId = cluster.UserAt("alice", "node2");
        var carolId = cluster.UserAt("carol", "node1");
        var alice = await cluster["node3"].ConnectAsync(aliceId, "phone");
        await alice.ExpectAsync<SyncDone>();
        var carol = await cluster["node1"].ConnectAsync(carolId, "phone");
        await carol.ExpectAsync<SyncDone>();

        // A live delivery reaches alice at node3 through her home: the home has node3 as the phone's gateway.
        await carol.SendAsync(TestDevice.Text(1, aliceId, "one"));
        await carol.ExpectAsync<Sent>();
        Assert.Equal("one", (await alice.ExpectAsync<Deliver>()).Body.ToStringUtf8());

        // node1 (as a gateway the phone had left) reports a login older than the one at node3, late.
        var link = cluster["node1"].Cluster.LinkTo("node2")!;
        var epoch = cluster["node1"].Cluster.CurrentEpoch;
        var stale = new DeviceRegistration { User = aliceId, Device = "phone", Online = true, Login = 1 };
        await link.TryRequest(ClusterOpKind.DeviceRegistration, epoch, stale.ToByteArray())!.WaitAsync(TestDevice.Timeout);
        Assert.Equal(1, cluster["node2"].Cluster.Metrics.Snapshot().StaleLogins);

        // The session at node3 is untouched and still the one the home delivers to.
        await carol.SendAsync(TestDevice.Text(2, aliceId, "two"));
        await carol.ExpectAsync<Sent>();
        Assert.Equal("two", (await alice.ExpectAsync<Deliver>()).Body.ToStringUtf8());

        // A newer login elsewhere does take the device over: the session at node3 is closed.
        var newer = new DeviceRegistration { User = aliceId, Device = "phone", Online = true, Login = ulong.MaxValue >> 1 };
        await link.TryRequest(ClusterOpKind.DeviceRegistration, epoch, newer.ToByteArray())!.WaitAsync(TestDevice.Timeout);
        var ended = await alice.ReadToEndAsync();
        Assert.Contains(ended, m => m is Disconnect { Reason: ReasonCode.SessionTakenOver });
    }
}
