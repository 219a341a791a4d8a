using ChatBroker.Broker.Cluster;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// Groups while one node of three is unreachable (its mesh port closed): the groups of the other nodes keep
/// working, a device's CONNECT leaves the unreachable node's groups out instead of failing, and LIST, which must be
/// complete, is refused with a retryable error until the node is back.
/// </summary>
public sealed class GroupUnreachableNodeTests : IAsyncLifetime
{
    private ClusterHarness _cluster = null!;

    public async Task InitializeAsync() =>
        _cluster = await ClusterHarness.StartAsync(
            3,
            new ClusterRoutingOptions { ReadTimeout = TimeSpan.FromSeconds(2), ForwardTimeout = TimeSpan.FromSeconds(1) },
            o => o.Fanout.WriteThreshold = 2);

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task A_large_group_on_a_reachable_node_keeps_working_while_another_node_is_unreachable()
    {
        var alice = _cluster.UserAt("alice", "node1");
        var bob = await GroupDevice.ConnectAsync(_cluster["node2"], _cluster.UserAt("bob", "node2"));
        var carol = _cluster.UserAt("carol", "node2");
        _cluster["node2"].Cluster.GroupIdSource = () =>
        {
            while (true)
            {
                var id = ClusterNode.DrawGroupId();
                if (_cluster.Ring.ConversationOwner(id) == "node2")
                {
                    return id;
                }
            }
        };

        var create = new GroupCreate { Title = "big", MemberUserIds = { alice, carol } }; // 3 members: above the threshold
        var id = (await bob.GroupAsync(new GroupRequest { RequestId = 1, Create = create })).ConversationId;
        Assert.Equal(1UL, (await bob.NextDeliverAsync()).Seq);
        await bob.SendAsync(GroupDevice.ToGroup(1, id, "while alice was away"));
        Assert.Equal(2UL, (await bob.ExpectAsync<Sent>()).Seq);
        using (var timeout = new CancellationTokenSource(Sessions.TestDevice.Timeout))
        {
            await _cluster["node2"].Cluster.WhenForwardedAsync("node1", timeout.Token);
        }

        await _cluster["node3"].StopMeshAsync();

        // alice connects at node1: node3 does not say where her streams of its groups start, node2 does.
        var device = new GroupDevice(await _cluster["node1"].ConnectAsync(alice, "phone"), alice);
        await device.ExpectAsync<SyncDone>();
        var backlog = new[] { await device.NextDeliverAsync(), await device.NextDeliverAsync() };
        Assert.Equal([(1UL, ContentType.System), (2UL, ContentType.Text)], backlog.Select(d => (d.Seq, d.ContentType)).Order().ToArray());
        Assert.Equal(1, _cluster["node1"].Cluster.GroupMetrics.Snapshot().StreamStartsMissed);

        await bob.SendAsync(GroupDevice.ToGroup(2, id, "live"));
        Assert.Equal(3UL, (await bob.ExpectAsync<Sent>()).Seq);
        var live = await device.NextDeliverAsync();
        Assert.Equal((3UL, "live", 0UL), (live.Seq, live.Body.ToStringUtf8(), live.InboxSeq));

        // LIST needs every node: refused (retryable) while node3 is away, complete once it is back.
        await device.SendAsync(new GroupRequest { RequestId = 2, List = new GroupListRequest() });
        var refused = await device.ExpectAsync<Error>();
        Assert.Equal((ReasonCode.ServerUnavailable, 2UL), (refused.Reason, refused.RequestId));

        // The device retries as told: node1's link to node3 reconnects with its back-off, so the first retries may
        // still find it away (bounded: each attempt ends within the read timeout).
        await _cluster["node3"].RestartMeshAsync();
        GroupResult? list = null;
        for (ulong attempt = 3; list is null && attempt < 40; attempt++)
        {
            await device.SendAsync(new GroupRequest { RequestId = attempt, List = new GroupListRequest() });
            var answer = await device.Device.ReceiveAsync();
            if (answer is Error { Reason: ReasonCode.ServerUnavailable })
            {
                continue;
            }

            list = Assert.IsType<GroupResult>(answer);
        }

        Assert.Equal(id, Assert.Single(list!.Groups).ConversationId);
    }
}
