using ChatBroker.Protocol.Messages;
using Google.Protobuf;
using Xunit.Abstractions;
using static ChatBroker.EndToEnd.Tests.Cluster.ClusterPackets;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>
/// Presence, typing and prekeys (PresenceTypingKeysTests of the single-node suite) on three real nodes: alice's home
/// is n1, bob's n2, their direct conversation is owned by n3, and their devices connect at nodes other than their
/// homes, so every signal crosses the mesh between gateway, owner and homes. The nodes publish presence changes at
/// once (<c>presence.debounce=0s</c>).
/// </summary>
[Collection(ThreeNodeCluster.Collection)]
public sealed class ClusterSignalTests(ThreeNodeCluster cluster, ITestOutputHelper output) : IClassFixture<ThreeNodeCluster>
{
    private (string Alice, string Bob, string Carol) Users(string prefix)
    {
        var alice = cluster.UserAt(prefix + "-alice", "n1");
        var bob = cluster.UserAt(prefix + "-bob", "n2", b => cluster.OwnerOfDirect(alice, b) == "n3");
        return (alice, bob, cluster.UserAt(prefix + "-carol", "n3"));
    }

    private static KeysUpload Upload(ulong requestId, int oneTimeKeys)
    {
        var upload = new KeysUpload
        {
            RequestId = requestId,
            IdentityKey = ByteString.CopyFrom(new byte[32]),
            SignedPrekey = new SignedPrekey { KeyId = 5, PublicKey = ByteString.CopyFrom(new byte[32]), Signature = ByteString.CopyFrom(new byte[64]) },
        };
        for (var i = 1; i <= oneTimeKeys; i++)
        {
            upload.OneTimePrekeys.Add(new OneTimePrekey { KeyId = (uint)i, PublicKey = ByteString.CopyFrom(BitConverter.GetBytes(i)) });
        }

        return upload;
    }

    [Fact]
    public async Task Presence_is_kept_by_the_users_home_seen_by_subscribers_at_other_nodes_and_refused_without_a_shared_conversation()
    {
        output.WriteLine(cluster.Mode);
        var (alice, bob, carol) = Users("p1");
        await using var alicePhone = await cluster.LoginAsync(cluster["n3"], alice, "phone", capabilities: AllCapabilities);
        await alicePhone.SendAsync(Text(1, bob, "let's talk"));
        await alicePhone.ReceiveAsync<Sent>();

        // Nobody shares a conversation with carol: refused, as on one node.
        await alicePhone.SendAsync(new PresenceSubscribe { RequestId = 7, UserIds = { carol } });
        var refused = await alicePhone.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, 7UL, PacketType.PresenceSubscribe), (refused.Reason, refused.RequestId, refused.InReplyTo));

        await alicePhone.SendAsync(new PresenceSubscribe { RequestId = 8, UserIds = { bob } });
        var subscribed = await alicePhone.ReceiveAsync<PresenceSubscribed>();
        Assert.Equal((8UL, bob, PresenceStatus.Offline), (subscribed.RequestId, subscribed.Current.Single().UserId, subscribed.Current.Single().Status));

        // bob connects at n1; his home n2 counts the device and tells alice's node.
        var bobPhone = await cluster.LoginAsync(cluster["n1"], bob, "phone", capabilities: AllCapabilities);
        var before = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        Assert.Equal((bob, PresenceStatus.Online), await alicePhone.ReceiveAsync<Presence>() is var on ? (on.UserId, on.Status) : default);
        await bobPhone.SendAsync(new PresenceSet { Status = PresenceStatus.Away });
        Assert.Equal(PresenceStatus.Away, (await alicePhone.ReceiveAsync<Presence>()).Status);
        await bobPhone.SendAsync(new Disconnect { Reason = ReasonCode.NormalDisconnect });
        await bobPhone.DisposeAsync();
        var offline = await alicePhone.ReceiveAsync<Presence>();
        Assert.Equal(PresenceStatus.Offline, offline.Status);
        Assert.InRange((long)offline.LastSeenMs, before - 1000, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());

        // A subscriber at a third node reads the same last-seen from the home (stored there).
        await using var aliceLaptop = await cluster.LoginAsync(cluster["n2"], alice, "laptop", capabilities: AllCapabilities);
        await aliceLaptop.SendAsync(new PresenceSubscribe { RequestId = 9, UserIds = { bob } });
        var current = (await aliceLaptop.ReceiveAsync<PresenceSubscribed>()).Current.Single();
        Assert.Equal((PresenceStatus.Offline, offline.LastSeenMs), (current.Status, current.LastSeenMs));

        // bob back at n3: both subscribers hear it. The phone unsubscribes; the laptop still hears him go.
        var bobTablet = await cluster.LoginAsync(cluster["n3"], bob, "tablet", capabilities: AllCapabilities);
        Assert.Equal(PresenceStatus.Online, (await alicePhone.ReceiveAsync<Presence>()).Status);
        Assert.Equal(PresenceStatus.Online, (await aliceLaptop.ReceiveAsync<Presence>()).Status);
        await alicePhone.SendAsync(new PresenceSubscribe { RequestId = 10, UserIds = { bob }, Unsubscribe = true });
        Assert.Equal(10UL, (await alicePhone.ReceiveAsync<PresenceSubscribed>()).RequestId);
        await bobTablet.DisposeAsync(); // the connection drops without a DISCONNECT
        Assert.Equal(PresenceStatus.Offline, (await aliceLaptop.ReceiveAsync<Presence>()).Status);
        Assert.DoesNotContain(await DrainAsync(alicePhone), m => m is Presence);
    }

    [Fact]
    public async Task Typing_reaches_the_other_member_at_his_node_both_ways_is_never_stored_and_a_non_member_is_refused()
    {
        output.WriteLine(cluster.Mode);
        var (alice, bob, carol) = Users("t1");
        await using var alicePhone = await cluster.LoginAsync(cluster["n3"], alice, "phone", capabilities: AllCapabilities);
        await using var bobPhone = await cluster.LoginAsync(cluster["n1"], bob, "phone", capabilities: AllCapabilities);
        await using var bobWatch = await cluster.LoginAsync(cluster["n2"], bob, "watch"); // no TYPING capability
        await alicePhone.SendAsync(Text(1, bob, "hi"));
        var conversation = (await alicePhone.ReceiveAsync<Sent>()).ConversationId;
        await bobPhone.ReceiveAsync<Deliver>();

        // From the owner's node (n3) to bob at n1, through his home n2.
        await alicePhone.SendAsync(new Typing { ConversationId = conversation });
        var notice = await bobPhone.ReceiveAsync<TypingNotice>();
        Assert.Equal((conversation, alice, false), (notice.ConversationId, notice.UserId, notice.Stopped));

        // From n1, which does not own the conversation: forwarded to the owner first.
        await bobPhone.SendAsync(new Typing { ConversationId = conversation, Stopped = true });
        var back = await alicePhone.ReceiveAsync<TypingNotice>();
        Assert.Equal((conversation, bob, true), (back.ConversationId, back.UserId, back.Stopped));
        Assert.DoesNotContain(await DrainAsync(bobWatch), m => m is TypingNotice);

        // A non-member at another node is refused by the owner, with the error a single node gives.
        await using var carolPhone = await cluster.LoginAsync(cluster["n2"], carol, "phone", capabilities: AllCapabilities);
        await carolPhone.SendAsync(new Typing { ConversationId = conversation });
        var refused = await carolPhone.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.NotAMember, PacketType.Typing, conversation), (refused.Reason, refused.InReplyTo, refused.RequestId));

        // Never stored: the conversation holds only the message, and a device connecting later gets no notice.
        await alicePhone.SendAsync(new History { RequestId = 1, ConversationId = conversation });
        Assert.Equal(1UL, Assert.Single((await alicePhone.ReceiveAsync<HistoryPage>()).Messages).Seq);
        await using var bobLaptop = await cluster.LoginAsync(cluster["n3"], bob, "laptop", capabilities: AllCapabilities);
        Assert.DoesNotContain(await DrainAsync(bobLaptop), m => m is TypingNotice);
    }

    [Fact]
    public async Task Prekeys_uploaded_at_one_node_are_fetched_through_the_two_others_concurrently_and_each_one_time_key_is_handed_out_once()
    {
        output.WriteLine(cluster.Mode);
        var (alice, bob, carol) = Users("k1");
        await using var bobPhone = await cluster.LoginAsync(cluster["n1"], bob, "phone"); // his home is n2
        await bobPhone.SendAsync(Upload(1, oneTimeKeys: 40));
        Assert.Equal((1UL, 40U), await bobPhone.ReceiveAsync<KeysUploaded>() is var u ? (u.RequestId, u.OneTimePrekeysRemaining) : default);

        // Ten fetchers, five at n3 and five at n2 (bob's home), four fetches each: 40 bundles, each one-time key once.
        var fetchers = await Task.WhenAll(Enumerable.Range(0, 10).Select(i => cluster.LoginAsync(cluster[i % 2 == 0 ? "n3" : "n2"], i % 2 == 0 ? alice : carol, "fetcher" + i)));
        try
        {
            var bundles = await Task.WhenAll(fetchers.Select(async fetcher =>
            {
                for (ulong r = 1; r <= 4; r++)
                {
                    await fetcher.SendAsync(new FetchKeys { RequestId = r, UserId = bob });
                }

                var got = new List<KeyBundle>();
                for (var r = 0; r < 4; r++)
                {
                    got.Add(await fetcher.ReceiveAsync<KeyBundle>());
                }

                return got;
            }));

            var devices = bundles.SelectMany(b => b).Select(b => Assert.Single(b.Devices)).ToList();
            Assert.Equal(40, devices.Count);
            Assert.All(devices, d => Assert.Equal(("phone", 5U), (d.DeviceId, d.SignedPrekey.KeyId)));
            var handedOut = devices.Where(d => d.OneTimePrekey is not null).Select(d => d.OneTimePrekey.KeyId).ToList();
            Assert.Equal(Enumerable.Range(1, 40).Select(i => (uint)i), handedOut.Order());
        }
        finally
        {
            foreach (var fetcher in fetchers)
            {
                await fetcher.DisposeAsync();
            }
        }

        // bob's device at n1 hears from his home that it runs low (keys.low_watermark 10), as a device at the home would.
        var low = await NextAsync<KeysUploaded>(bobPhone, k => k.RequestId == 0);
        Assert.True(low.OneTimePrekeysRemaining < 10);

        // None left: the next fetch gets the bundle without a one-time key; a user with no keys is KEYS_NOT_FOUND.
        await using var alicePhone = await cluster.LoginAsync(cluster["n1"], alice, "phone");
        await alicePhone.SendAsync(new FetchKeys { RequestId = 41, UserId = bob, DeviceId = "phone" });
        var last = Assert.Single((await alicePhone.ReceiveAsync<KeyBundle>()).Devices);
        Assert.Null(last.OneTimePrekey);
        await alicePhone.SendAsync(new FetchKeys { RequestId = 42, UserId = carol });
        var error = await alicePhone.ReceiveAsync<Error>();
        Assert.Equal((ReasonCode.KeysNotFound, 42UL, PacketType.FetchKeys), (error.Reason, error.RequestId, error.InReplyTo));

        // An upload through a third node tops bob's keys up at his home.
        await using var bobAgain = await cluster.LoginAsync(cluster["n3"], bob, "phone");
        await bobAgain.SendAsync(new KeysUpload { RequestId = 2, OneTimePrekeys = { new OneTimePrekey { KeyId = 99, PublicKey = ByteString.CopyFrom(1) } } });
        Assert.Equal((2UL, 1U), await NextAsync<KeysUploaded>(bobAgain, k => k.RequestId == 2) is var top ? (top.RequestId, top.OneTimePrekeysRemaining) : default);
        await alicePhone.SendAsync(new FetchKeys { RequestId = 43, UserId = bob });
        Assert.Equal(99U, Assert.Single((await alicePhone.ReceiveAsync<KeyBundle>()).Devices).OneTimePrekey.KeyId);
    }
}
