using System.Diagnostics.Metrics;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>Issue 18: the per-user hourly abuse limits, each a setting, refused with RATE_LIMITED and counted.</summary>
public sealed class AbuseLimitTests
{
    private static Task<Error> ExpectErrorAsync(TestDevice device) => NextAsync<Error>(device);

    /// <summary>The next <typeparamref name="T"/>, past the SYNC_DONE, DELIVERs and notices a session also gets.</summary>
    private static async Task<T> NextAsync<T>(TestDevice device)
        where T : class, IMessage
    {
        while (true)
        {
            var message = await device.ReceiveAsync() ?? throw new IOException($"the connection ended before a {typeof(T).Name}");
            if (message is T wanted)
            {
                return wanted;
            }

            Assert.True(message is SyncDone or Deliver or KeysUploaded or Receipt, $"unexpected {message.Descriptor.Name} while waiting for {typeof(T).Name}");
        }
    }

    /// <summary>chatbroker.limits.rejected by limit, as the Prometheus exporter reads it.</summary>
    private sealed class Rejections : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly Dictionary<string, long> _counts = [];

        public Rejections()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Name == "chatbroker.limits.rejected")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
            {
                foreach (var tag in tags)
                {
                    if (tag.Key == "limit")
                    {
                        lock (_counts)
                        {
                            _counts[(string)tag.Value!] = _counts.GetValueOrDefault((string)tag.Value!) + value;
                        }
                    }
                }
            });
            _listener.Start();
        }

        public long this[string limit]
        {
            get
            {
                lock (_counts)
                {
                    return _counts.GetValueOrDefault(limit);
                }
            }
        }

        public void Dispose() => _listener.Dispose();
    }

    [Fact]
    public async Task New_conversations_past_the_hourly_limit_are_refused_while_existing_ones_go_on()
    {
        using var rejections = new Rejections();
        await using var harness = new SessionHarness(o => o.Abuse.NewConversationsPerHour = 2);
        var alice = await harness.ConnectAsync("alice", "phone");
        await alice.SendAsync(TestDevice.Text(1, "bob", "hi"));
        await NextAsync<Sent>(alice);
        await alice.SendAsync(TestDevice.Text(2, "carol", "hi"));
        await NextAsync<Sent>(alice);

        await alice.SendAsync(TestDevice.Text(3, "dave", "hi"));
        var error = await ExpectErrorAsync(alice);
        Assert.Equal((ReasonCode.RateLimited, 3UL, PacketType.Send), (error.Reason, error.RequestId, error.InReplyTo));
        Assert.InRange(error.RetryAfterMs, 1u, 3_600_000u);
        Assert.Contains("abuse.new_conversations_per_hour", error.Message, StringComparison.Ordinal);
        Assert.Equal(1, rejections["new_conversations"]);

        // A conversation that exists is not new, whichever way it is addressed.
        await alice.SendAsync(TestDevice.Text(4, "bob", "again"));
        Assert.Equal(4UL, (await NextAsync<Sent>(alice)).ClientMsgId);
    }

    [Fact]
    public async Task Group_creations_and_membership_changes_past_their_hourly_limits_are_refused()
    {
        using var rejections = new Rejections();
        await using var harness = new SessionHarness(o =>
        {
            o.Abuse.GroupCreationsPerHour = 1;
            o.Abuse.MembershipChangesPerHour = 3;
        });
        var alice = await harness.ConnectAsync("alice", "phone");
        await alice.SendAsync(new GroupRequest { RequestId = 1, Create = new GroupCreate { Title = "a", MemberUserIds = { "bob" } } });
        var group = (await NextAsync<GroupResult>(alice)).ConversationId;
        await alice.SendAsync(new GroupRequest { RequestId = 2, Create = new GroupCreate { Title = "b" } });
        var error = await ExpectErrorAsync(alice);
        Assert.Equal((ReasonCode.RateLimited, 2UL, PacketType.GroupRequest), (error.Reason, error.RequestId, error.InReplyTo));
        Assert.Contains("abuse.group_creations_per_hour", error.Message, StringComparison.Ordinal);

        // bob (at create) + carol = 2 of 3; dave and erin would make 4.
        await alice.SendAsync(new GroupRequest { RequestId = 3, AddMembers = new GroupMembers { ConversationId = group, UserIds = { "carol" } } });
        await NextAsync<GroupResult>(alice);
        await alice.SendAsync(new GroupRequest { RequestId = 4, AddMembers = new GroupMembers { ConversationId = group, UserIds = { "dave", "erin" } } });
        error = await ExpectErrorAsync(alice);
        Assert.Equal((ReasonCode.RateLimited, 4UL), (error.Reason, error.RequestId));
        Assert.Contains("abuse.membership_changes_per_hour", error.Message, StringComparison.Ordinal);
        Assert.Equal((1, 1), (rejections["group_creations"], rejections["membership_changes"]));
    }

    [Fact]
    public async Task Prekey_fetches_past_the_requesters_hourly_limit_are_refused_on_any_of_its_connections()
    {
        using var rejections = new Rejections();
        await using var harness = new SessionHarness(o => o.Abuse.PrekeyFetchesPerHour = 1);
        var bob = await harness.ConnectAsync("bob", "phone");
        await bob.SendAsync(new KeysUpload
        {
            RequestId = 1,
            IdentityKey = ByteString.CopyFrom(new byte[32]),
            SignedPrekey = new SignedPrekey { KeyId = 1, PublicKey = ByteString.CopyFrom(new byte[32]), Signature = ByteString.CopyFrom(new byte[64]) },
        });
        await NextAsync<KeysUploaded>(bob);

        var phone = await harness.ConnectAsync("alice", "phone");
        await phone.SendAsync(new FetchKeys { RequestId = 1, UserId = "bob" });
        await NextAsync<KeyBundle>(phone);
        var laptop = await harness.ConnectAsync("alice", "laptop");
        await laptop.SendAsync(new FetchKeys { RequestId = 2, UserId = "bob" });
        var error = await ExpectErrorAsync(laptop);
        Assert.Equal((ReasonCode.RateLimited, 2UL, PacketType.FetchKeys), (error.Reason, error.RequestId, error.InReplyTo));
        Assert.Equal(1, rejections["prekey_fetches"]);
    }

    [Fact]
    public void Zero_turns_a_limit_off()
    {
        var limits = new ChatBroker.Broker.Sessions.AbuseLimits(new ChatBroker.Broker.Configuration.AbuseOptions { NewConversationsPerHour = 0 }, new ChatBroker.Broker.Observability.BrokerMetrics("t"), TimeProvider.System);
        for (var i = 0; i < 10_000; i++)
        {
            Assert.True(limits.TryTake("alice", ChatBroker.Broker.Sessions.AbuseLimit.NewConversations, 1, out _));
        }
    }
}
