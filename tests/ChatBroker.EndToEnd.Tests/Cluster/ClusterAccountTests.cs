using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using Xunit.Abstractions;
using static ChatBroker.EndToEnd.Tests.Cluster.ClusterPackets;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>
/// Issue 18 on three real nodes: a device revoked through one node's admin API is disconnected at the node holding
/// its session and refused at every node; a privacy setting made through a gateway hides the user from a subscriber
/// at another node.
/// </summary>
[Collection(ThreeNodeCluster.Collection)]
public sealed class ClusterAccountTests(ThreeNodeCluster cluster, ITestOutputHelper output) : IClassFixture<ThreeNodeCluster>
{
    [Fact]
    public async Task A_revocation_at_one_node_ends_the_session_at_another_and_every_node_refuses_the_device()
    {
        output.WriteLine(cluster.Mode);
        var alice = cluster.UserAt("rv-alice", "n1");
        await using var phone = await cluster.LoginAsync(cluster["n3"], alice, "phone");
        var token = cluster.Token(alice, "phone");

        var n2 = cluster["n2"];
        var (exit, stdout, stderr) = await BrokerProcess.RunCliAsync(["device", "revoke", "--user", alice, "--device", "phone", "--admin", n2.Process!.AdminEndPoint.ToString()]);
        Assert.True(exit == 0, stdout + stderr);

        Assert.Equal(ReasonCode.DeviceRevoked, (await phone.ReceiveAsync<Disconnect>(ThreeNodeCluster.Patience)).Reason);
        foreach (var node in cluster.Nodes)
        {
            await using var again = await RawDevice.ConnectAsync(node.Process!.TcpEndPoint);
            Assert.Equal(ReasonCode.DeviceRevoked, (await again.LoginAsync(alice, "phone", token)).Reason);
        }
    }

    [Fact]
    public async Task A_privacy_setting_made_through_a_gateway_hides_the_user_from_a_subscriber_at_another_node()
    {
        var alice = cluster.UserAt("pv-alice", "n1");
        var bob = cluster.UserAt("pv-bob", "n2");
        await using var alicePhone = await cluster.LoginAsync(cluster["n3"], alice, "phone", capabilities: AllCapabilities);
        await alicePhone.SendAsync(Text(1, bob, "hi"));
        await alicePhone.ReceiveAsync<Sent>();
        await using var bobPhone = await cluster.LoginAsync(cluster["n2"], bob, "phone", capabilities: AllCapabilities);
        await bobPhone.SendAsync(new PresenceSubscribe { RequestId = 1, UserIds = { alice } });
        Assert.Equal(PresenceStatus.Online, (await bobPhone.ReceiveAsync<PresenceSubscribed>()).Current.Single().Status);

        await alicePhone.SendAsync(new Settings { RequestId = 2, SetPresenceVisibility = true, PresenceVisibility = PresenceVisibility.Nobody });
        Assert.Equal(PresenceVisibility.Nobody, (await alicePhone.ReceiveAsync<SettingsResult>()).PresenceVisibility);
        var hidden = await bobPhone.ReceiveAsync<Presence>(ThreeNodeCluster.Patience);
        Assert.Equal((alice, PresenceStatus.Hidden), (hidden.UserId, hidden.Status));
    }
}
