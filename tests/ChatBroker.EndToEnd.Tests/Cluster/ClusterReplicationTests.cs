using System.Text.RegularExpressions;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Xunit.Abstractions;
using static ChatBroker.EndToEnd.Tests.Cluster.ClusterPackets;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>The three-node cluster with <c>cluster.replication_factor = 3</c>: every node replicates every other.</summary>
public sealed class ReplicatedThreeNodeCluster(IMessageSink diagnostics) : ThreeNodeCluster(diagnostics)
{
    public override int ReplicationFactor => 3;
}

/// <summary>
/// Replication with real processes, sockets, RocksDB and etcd (docs/cluster.md, "Replication"): three nodes, factor 3,
/// the nodes write the replica sets and catch each other up by themselves; messages are acknowledged; the primary of
/// their conversation is killed with kill -9; the conversation goes on at an in-sync replica, every acknowledged message
/// is there, and there is no gap and no duplicate.
/// </summary>
[Collection(ThreeNodeCluster.Collection)]
public sealed partial class ClusterReplicationTests(ReplicatedThreeNodeCluster cluster, ITestOutputHelper output) : IClassFixture<ReplicatedThreeNodeCluster>
{
    [Fact]
    public async Task Kill_9_of_a_conversations_primary_the_conversation_goes_on_at_an_in_sync_replica_with_every_acked_message_once()
    {
        output.WriteLine(cluster.Mode);
        // Every node has the map in which each primary's two replicas are in sync (written by the nodes: sets, catch-ups,
        // compare-and-sets).
        foreach (var node in cluster.Nodes)
        {
            await node.Process!.WaitForLineAsync(AllInSync()).WaitAsync(ThreeNodeCluster.Patience);
        }

        // `cluster status` shows the same from etcd (a generous etcd deadline: the machine may be loaded).
        var (exit, stdout, stderr) = await Host.Tests.Infrastructure.BrokerProcess.RunCliAsync(["cluster", "status", .. cluster.CliSettings, "--set", "cluster.etcd_timeout=15s"]);
        Assert.True(exit == 0, stderr);
        Assert.Matches(@"replication factor 3", stdout);
        Assert.Contains("replicas of n3: n1 (in sync), n2 (in sync)", stdout, StringComparison.Ordinal);

        var alice = cluster.UserAt("r-alice", "n1");
        var bob = cluster.UserAt("r-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        var n1 = cluster["n1"];
        var n2 = cluster["n2"];

        await using var alicePhone = await cluster.LoginAsync(n1, alice, "phone");
        await alicePhone.ReceiveAsync<SyncDone>();
        await using var bobPhone = await cluster.LoginAsync(n2, bob, "phone");
        await bobPhone.ReceiveAsync<SyncDone>();

        const int Acked = 30;
        ulong conversation = 0;
        for (var i = 1; i <= Acked; i++)
        {
            await alicePhone.SendAsync(Text((ulong)i, bob, $"m{i}"));
            var sent = await alicePhone.ReceiveAsync<Sent>();
            Assert.Equal((ulong)i, sent.Seq);
            conversation = sent.ConversationId;
        }

        // kill -9 of n3, the conversation's primary, right after its last SENT.
        var mark = n1.Process!.LineCount;
        await cluster.KillAsync(cluster["n3"]);
        await n1.Process.WaitForLineAsync(N3Failed(), mark).WaitAsync(ThreeNodeCluster.Patience);

        // The conversation goes on at an in-sync replica: every retry of a SEND (same client_msg_id, DUP) after a
        // retryable refusal gets one SENT, and the sequence continues from 30.
        const int Total = 40;
        for (var i = Acked + 1; i <= Total; i++)
        {
            var sent = await SendUntilSentAsync(alicePhone, Text((ulong)i, bob, $"m{i}"));
            Assert.Equal((conversation, (ulong)i), (sent.ConversationId, sent.Seq));
        }

        // bob got every message live, once each, in order (the copies n3 had not forwarded come from the new primary's
        // re-forward; his home stores each seq once).
        var delivered = new List<(ulong Seq, string Body)>();
        while (delivered.Count < Total)
        {
            var d = await bobPhone.ReceiveAsync<Deliver>();
            delivered.Add((d.Seq, d.Body.ToStringUtf8()));
        }

        var expected = Enumerable.Range(1, Total).Select(i => ((ulong)i, $"m{i}")).ToList();
        Assert.Equal(expected, delivered);

        // A new device of bob reads his inbox from 0 at the other node: every message once, in order.
        await using var reader = await cluster.LoginAsync(n1, bob, "tablet");
        var inbox = new List<(ulong Seq, string Body)>();
        while (inbox.Count < Total)
        {
            var d = await reader.ReceiveAsync<Deliver>();
            inbox.Add((d.Seq, d.Body.ToStringUtf8()));
        }

        Assert.Equal(expected, inbox);

        // The log at the new primary, read through that node: 1..40, each once, nothing acknowledged lost.
        await reader.SendAsync(new History { RequestId = 1, ConversationId = conversation, Limit = 100 });
        var page = await reader.ReceiveAsync<HistoryPage>();
        Assert.Equal(expected, page.Messages.OrderBy(m => m.Seq).Select(m => (m.Seq, m.Body.ToStringUtf8())));
    }

    /// <summary>Sends, and after each retryable refusal waits the retry_after the broker named and sends again with DUP,
    /// until SENT (bounded by the fixture's patience).</summary>
    private static async Task<Sent> SendUntilSentAsync(Infrastructure.RawDevice device, Send send)
    {
        using var deadline = new CancellationTokenSource(ThreeNodeCluster.Patience);
        var flags = FrameFlags.None;
        while (true)
        {
            await device.SendAsync(send, flags);
            while (true)
            {
                var answer = await device.ReceiveAnyAsync() ?? throw new IOException("the connection closed");
                if (answer is Sent sent && sent.ClientMsgId == send.ClientMsgId)
                {
                    return sent;
                }

                if (answer is Error { Reason: ReasonCode.ServerUnavailable } error && error.RequestId == send.ClientMsgId)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(Math.Max(50, error.RetryAfterMs)), deadline.Token);
                    flags = FrameFlags.Dup;
                    break;
                }

                Assert.False(answer is Error, $"unexpected {answer}");
            }
        }
    }

    /// <summary>A node's log line of a map in which each of the three primaries has both replicas in sync.</summary>
    [GeneratedRegex(@"Cluster map epoch \d+: .*; replicas: n1 \{n2, n3\} in sync \{n2, n3\}, n2 \{n1, n3\} in sync \{n1, n3\}, n3 \{n1, n2\} in sync \{n1, n2\}")]
    private static partial Regex AllInSync();

    /// <summary>A node's log line of a map with n3 Failed.</summary>
    [GeneratedRegex(@"Cluster map epoch \d+: .*\bn3 Failed\b")]
    private static partial Regex N3Failed();
}
