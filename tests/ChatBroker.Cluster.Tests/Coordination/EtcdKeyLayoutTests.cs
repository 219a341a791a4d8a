using System.Text;
using System.Text.Json;
using ChatBroker.Cluster.Coordination;
using dotnet_etcd;
using Grpc.Core;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>What an operator reads with etcdctl: the keys and values docs/cluster.md describes.</summary>
public sealed class EtcdKeyLayoutTests(EtcdFixture etcd) : IClassFixture<EtcdFixture>
{
    [Fact]
    public async Task The_map_and_the_registrations_are_json_under_the_documented_keys()
    {
        var prefix = "/layout-" + Guid.NewGuid().ToString("N")[..8];
        var options = new ClusterOptions
        {
            EtcdEndpoints = [etcd.Endpoint],
            EtcdPrefix = prefix,
            NodeId = "n1",
            LeaseTtl = TimeSpan.FromSeconds(5),
            AdvertiseMesh = "10.77.0.1:7890",
            AdvertiseClient = "10.77.0.1:7883",
        };
        await using var node = new EtcdCoordinator(options);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        await node.StartAsync(timeout.Token);
        var applied = await node.TryUpdateMapAsync(ClusterMap.Empty.WithMember(new ClusterMember("n1", "10.77.0.1:7890", "10.77.0.1:7883", MemberState.Active)), timeout.Token);

        using var client = new EtcdClient(etcd.Endpoint, configureChannelOptions: o => o.Credentials = ChannelCredentials.Insecure);
        var map = (await client.GetAsync(new Etcdserverpb.RangeRequest { Key = Google.Protobuf.ByteString.CopyFromUtf8(prefix + "/map") }, cancellationToken: timeout.Token)).Kvs.Single();
        var registration = (await client.GetAsync(new Etcdserverpb.RangeRequest { Key = Google.Protobuf.ByteString.CopyFromUtf8(prefix + "/nodes/n1") }, cancellationToken: timeout.Token)).Kvs.Single();

        Assert.Equal(applied.Map.Epoch, map.ModRevision); // the epoch is the map key's mod revision
        using var mapJson = JsonDocument.Parse(map.Value.ToByteArray());
        Assert.Equal(1, mapJson.RootElement.GetProperty("format").GetInt32());
        Assert.Equal(128, mapJson.RootElement.GetProperty("vnodes").GetInt32());
        Assert.Equal("n1", mapJson.RootElement.GetProperty("members")[0].GetProperty("id").GetString());
        Assert.Equal("{\"id\":\"n1\",\"mesh\":\"10.77.0.1:7890\",\"client\":\"10.77.0.1:7883\"}", Encoding.UTF8.GetString(registration.Value.Span));
        Assert.NotEqual(0, registration.Lease); // registrations live under the node's lease
        Assert.True(node is EtcdCoordinator e && e.LeaseValidUntil > DateTimeOffset.UtcNow);
    }
}
