using System.Buffers;
using System.Globalization;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>Groups and hybrid fan-out over real TCP against the real broker process, spoken frame by frame.</summary>
public sealed class GroupTests
{
    private static string User(int i) => "u" + i.ToString("D4", CultureInfo.InvariantCulture);

    private static GroupRequest Create(ulong requestId, IEnumerable<string> members, string title = "team")
    {
        var create = new GroupCreate { Title = title };
        create.MemberUserIds.Add(members);
        return new GroupRequest { RequestId = requestId, Create = create };
    }

    private static GroupRequest Members(ulong requestId, ulong conversationId, bool add, params string[] users)
    {
        var m = new GroupMembers { ConversationId = conversationId };
        m.UserIds.Add(users);
        return add ? new GroupRequest { RequestId = requestId, AddMembers = m } : new GroupRequest { RequestId = requestId, RemoveMembers = m };
    }

    private static Send Text(ulong clientMsgId, ulong conversationId, string text) =>
        new() { ClientMsgId = clientMsgId, ConversationId = conversationId, Body = ByteString.CopyFromUtf8(text) };

    /// <summary>The GROUP_RESULT or ERROR answering a request, skipping anything else.</summary>
    private static async Task<IMessage> ReplyAsync(RawDevice device, IMessage request)
    {
        await device.SendAsync(request);
        while (true)
        {
            var message = await device.ReceiveAnyAsync() ?? throw new IOException("connection closed");
            if (message is GroupResult or Error or HistoryPage)
            {
                return message;
            }
        }
    }

    private static async Task<GroupResult> OkAsync(RawDevice device, GroupRequest request)
    {
        var reply = await ReplyAsync(device, request);
        return reply as GroupResult ?? throw new InvalidOperationException($"expected GROUP_RESULT, got {reply}");
    }

    private static async Task<Error> RefusedAsync(RawDevice device, IMessage request)
    {
        var reply = await ReplyAsync(device, request);
        return reply as Error ?? throw new InvalidOperationException($"expected ERROR, got {reply}");
    }

    /// <summary>CONNECT with large-group cursors (RawDevice.LoginAsync has none).</summary>
    private static async Task<RawDevice> LoginAsync(TestBroker broker, string user, string device, ulong resumeInboxSeq = 0,
        IEnumerable<ConversationCursor>? resumeConversations = null, ulong capabilities = 0)
    {
        var raw = await broker.ConnectRawAsync();
        var connect = new Connect
        {
            ProtocolVersion = ProtocolConstants.ProtocolVersion,
            UserId = user,
            DeviceId = device,
            Token = broker.Token(user, device),
            ResumeInboxSeq = resumeInboxSeq,
            Capabilities = capabilities,
        };
        if (resumeConversations is not null)
        {
            connect.ResumeConversations.Add(resumeConversations);
        }

        await raw.SendAsync(connect);
        var connack = await raw.ReceiveAsync<Connack>();
        Assert.Equal(ReasonCode.Success, connack.Reason);
        return raw;
    }

    /// <summary>Every packet up to the PONG answering a PING: proves nothing else was queued for the device.</summary>
    private static async Task<List<IMessage>> DrainAsync(RawDevice device)
    {
        await device.SendAsync(new Ping());
        var seen = new List<IMessage>();
        while (true)
        {
            var message = await device.ReceiveAnyAsync() ?? throw new IOException("connection closed");
            if (message is Pong)
            {
                return seen;
            }

            seen.Add(message);
        }
    }

    private static SystemEvent.Types.Kind KindOf(Deliver d)
    {
        Assert.Equal(ContentType.System, d.ContentType);
        return SystemEvent.Parser.ParseFrom(d.Body).Kind;
    }

    /// <summary>
    /// Reads a device's stream until it has the group's messages up to <paramref name="lastSeq"/>: each user
    /// message exactly once, in seq order, with inbox_seq 0 (fan-out on read); SYSTEM messages come through the
    /// inbox. Returns the SYNC_DONEs seen.
    /// </summary>
    private static async Task<List<SyncDone>> ExpectGroupMessagesAsync(RawDevice device, ulong conversationId, ulong firstSeq, ulong lastSeq, string who)
    {
        var syncs = new List<SyncDone>();
        var next = firstSeq;
        while (next <= lastSeq)
        {
            var message = await device.ReceiveAnyAsync() ?? throw new IOException($"{who}: connection closed at seq {next}");
            switch (message)
            {
                case Deliver d when d.ContentType == ContentType.System:
                    Assert.True(d.InboxSeq > 0, $"{who}: SYSTEM messages come through the inbox");
                    break;
                case Deliver d:
                    Assert.True(d.ConversationId == conversationId && d.Seq == next, $"{who}: expected seq {next}, got {d.ConversationId}/{d.Seq}");
                    Assert.Equal(0UL, d.InboxSeq);
                    Assert.Equal("message " + next, d.Body.ToStringUtf8());
                    next++;
                    break;
                case SyncDone s:
                    syncs.Add(s);
                    break;
                case Error e:
                    throw new InvalidOperationException($"{who}: ERROR {e.Reason} {e.Message}");
            }
        }

        return syncs;
    }

    /// <summary>
    /// 1,024 members: 200 online (raw TCP connections), 824 offline, of which 8 connect while the messages are
    /// being sent (the resume seam) and 1 acks, leaves, and catches up from its stored cursor. 100 messages
    /// fan out on read (threshold 100). Runs in a few seconds on 2 cores.
    /// </summary>
    [Fact]
    public async Task With_async_durability_pipelined_sends_to_a_group_of_12_are_answered_in_order_and_delivered_once_in_order()
    {
        // With async durability the socket event thread that reads a SEND usually writes the append itself and
        // sends the SENT and the DELIVERs before reading on; the first 8 recipients' outboxes are sent by that
        // thread, the rest by the pool (OutboxFlushScope.MaxDeferred), and appends that find the writer busy
        // go through its queue. Every path must keep SEND order and deliver each message once.
        await using var broker = await TestBroker.StartAsync(null, "--set", "storage.durability=async");
        const int memberCount = 12, messages = 100;
        var devices = await Task.WhenAll(Enumerable.Range(0, memberCount).Select(i => LoginAsync(broker, User(i), "phone")));
        await Task.WhenAll(devices.Select(d => d.ReceiveAsync<SyncDone>()));
        var id = (await OkAsync(devices[0], Create(1, Enumerable.Range(1, memberCount - 1).Select(User)))).ConversationId;

        var buffer = new ArrayBufferWriter<byte>();
        for (var i = 1; i <= messages; i++)
        {
            FrameWriter.Write(buffer, Text((ulong)i, id, "message " + (i + 1)));
        }

        await devices[0].SendRawAsync(buffer.WrittenMemory);
        for (var i = 1; i <= messages; i++)
        {
            var sent = await devices[0].ReceiveAsync<Sent>();
            Assert.Equal((ulong)i, sent.ClientMsgId);
            Assert.Equal((ulong)i + 1, sent.Seq); // seq 1 is GROUP_CREATED
        }

        await Task.WhenAll(devices.Skip(1).Select(async (device, n) =>
        {
            var next = 2UL;
            while (next <= messages + 1)
            {
                var message = await device.ReceiveAnyAsync() ?? throw new IOException($"{User(n + 1)}: connection closed at seq {next}");
                if (message is Deliver { ContentType: not ContentType.System } d)
                {
                    Assert.True(d.ConversationId == id && d.Seq == next, $"{User(n + 1)}: expected seq {next}, got {d.ConversationId}/{d.Seq}");
                    Assert.Equal("message " + next, d.Body.ToStringUtf8());
                    next++;
                }
                else
                {
                    Assert.False(message is Error, $"{User(n + 1)}: {message}");
                }
            }

            Assert.DoesNotContain(await DrainAsync(device), m => m is Deliver { ContentType: not ContentType.System });
        }));

        foreach (var device in devices)
        {
            await device.DisposeAsync();
        }
    }

    [Fact]
    public async Task In_a_1024_member_group_every_device_gets_each_of_100_messages_once_in_order_and_offline_members_catch_up_on_resume()
    {
        await using var broker = await TestBroker.StartAsync();
        const int memberCount = 1024, onlineCount = 200, catchUpCount = 8, messages = 100;
        var online = await Task.WhenAll(Enumerable.Range(0, onlineCount).Select(i => LoginAsync(broker, User(i), "phone")));
        await Task.WhenAll(online.Select(d => d.ReceiveAsync<SyncDone>()));

        var created = await OkAsync(online[0], Create(1, Enumerable.Range(1, memberCount - 1).Select(User)));
        var id = created.ConversationId;
        Assert.Equal(1UL, created.Seq);
        // The sender's second device sees the sender's own messages, with client_msg_id.
        await using var senderLaptop = await LoginAsync(broker, User(0), "laptop");

        // Send 100 messages; halfway, offline members connect (half listing a cursor, half relying on the
        // stored one, which is 0): each must get every message once, across the seam between log and live.
        var buffer = new ArrayBufferWriter<byte>();
        for (var i = 1; i <= messages / 2; i++)
        {
            FrameWriter.Write(buffer, Text((ulong)i, id, "message " + (i + 1)));
        }

        await online[0].SendRawAsync(buffer.WrittenMemory);
        var catchUp = await Task.WhenAll(Enumerable.Range(0, catchUpCount).Select(i => LoginAsync(broker, User(memberCount - 1 - i), "phone",
            resumeConversations: i % 2 == 0 ? [new ConversationCursor { ConversationId = id, Seq = 1 }] : null)));
        buffer.Clear();
        for (var i = messages / 2 + 1; i <= messages; i++)
        {
            FrameWriter.Write(buffer, Text((ulong)i, id, "message " + (i + 1)));
        }

        await online[0].SendRawAsync(buffer.WrittenMemory);
        var sent = new HashSet<ulong>();
        while (sent.Count < messages)
        {
            var s = await online[0].ReceiveAsync<Sent>();
            Assert.True(sent.Add(s.Seq));
        }

        const ulong last = messages + 1; // seq 1 is GROUP_CREATED
        await Task.WhenAll(online.Skip(1).Select((d, i) => ExpectGroupMessagesAsync(d, id, 2, last, User(i + 1))));
        await Task.WhenAll(catchUp.Select((d, i) => ExpectGroupMessagesAsync(d, id, 2, last, "catch-up " + i)));
        await ExpectGroupMessagesAsync(senderLaptop, id, 2, last, "sender laptop");
        // Exactly once: nothing else is queued behind the last message (SYSTEM and SYNC_DONE aside).
        foreach (var device in online.Skip(1).Concat(catchUp).Append(senderLaptop))
        {
            Assert.DoesNotContain(await DrainAsync(device), m => m is Deliver { ContentType: not ContentType.System });
        }

        Assert.DoesNotContain(await DrainAsync(online[0]), m => m is Deliver { ContentType: not ContentType.System });

        // An offline member that acks its position, disconnects, and comes back without listing the group
        // resumes from its stored cursor: only what it missed.
        var returning = User(500);
        await using (var first = await LoginAsync(broker, returning, "phone"))
        {
            var syncs = await ExpectGroupMessagesAsync(first, id, 2, last, returning);
            await first.SendAsync(new Ack { Conversations = { new ConversationCursor { ConversationId = id, Seq = last } } });
            var done = syncs.Count > 0 ? syncs[0] : await first.ReceiveAsync<SyncDone>();
            Assert.Contains(done.Conversations, c => c.ConversationId == id);
            Assert.Empty((await DrainAsync(first)).OfType<Error>()); // the ACK was taken (PING is answered after it)
        }

        buffer.Clear();
        for (var i = messages + 1; i <= messages + 10; i++)
        {
            FrameWriter.Write(buffer, Text((ulong)i, id, "message " + (i + 1)));
        }

        await online[0].SendRawAsync(buffer.WrittenMemory);
        for (var i = 0; i < 10; i++)
        {
            await online[0].ReceiveAsync<Sent>();
        }

        await using var again = await LoginAsync(broker, returning, "phone", resumeInboxSeq: 1);
        await ExpectGroupMessagesAsync(again, id, last + 1, last + 10, returning + " again");
        var seam = await again.ReceiveAsync<SyncDone>();
        Assert.Equal(last + 10, Assert.Single(seam.Conversations, c => c.ConversationId == id).Seq);

        foreach (var device in online.Concat(catchUp))
        {
            await device.DisposeAsync();
        }
    }

    [Fact]
    public async Task Messages_of_a_large_group_sent_while_a_member_resumes_from_its_log_arrive_exactly_once_in_order()
    {
        // Rate limits raised: the point is the seam between the log backlog and live pushes, not the limiter.
        await using var broker = await TestBroker.StartAsync(null, "--set", "fanout.write_threshold=2", "--set", "limits.sends_per_second=1000000");
        await using var alice = await broker.LoginAsync("alice", "phone");
        var id = (await OkAsync(alice, Create(1, ["bob", "carol"]))).ConversationId;
        const int before = 2000, during = 500;
        var buffer = new ArrayBufferWriter<byte>();
        for (var i = 1; i <= before; i++)
        {
            FrameWriter.Write(buffer, Text((ulong)i, id, "message " + (i + 1)));
        }

        await alice.SendRawAsync(buffer.WrittenMemory);
        for (var i = 0; i < before; i++)
        {
            await alice.ReceiveAsync<Sent>();
        }

        // Bob connects (backlog: 2,000 messages, 8 batches) while Alice keeps sending.
        var bobTask = LoginAsync(broker, "bob", "phone");
        buffer.Clear();
        for (var i = before + 1; i <= before + during; i++)
        {
            FrameWriter.Write(buffer, Text((ulong)i, id, "message " + (i + 1)));
        }

        await alice.SendRawAsync(buffer.WrittenMemory);
        await using var bob = await bobTask;

        await ExpectGroupMessagesAsync(bob, id, 2, before + during + 1, "bob");
        Assert.DoesNotContain(await DrainAsync(bob), m => m is Deliver { ContentType: not ContentType.System });
    }

    [Fact]
    public async Task SYNC_naming_a_large_group_streams_its_log_from_the_cursor_and_ends_with_SYNC_DONE_listing_it()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "fanout.write_threshold=2");
        await using var alice = await broker.LoginAsync("alice", "phone");
        var id = (await OkAsync(alice, Create(1, ["bob", "carol"]))).ConversationId; // 3 members > 2: fan-out on read
        for (ulong i = 1; i <= 5; i++)
        {
            await alice.SendAsync(Text(i, id, "message " + (i + 1)));
            await alice.ReceiveAsync<Sent>();
        }

        await using var bob = await LoginAsync(broker, "bob", "phone", resumeInboxSeq: 1, resumeConversations: [new ConversationCursor { ConversationId = id, Seq = 6 }]);
        var first = await bob.ReceiveAsync<SyncDone>();
        Assert.Equal((0UL, 6UL), (first.RequestId, Assert.Single(first.Conversations).Seq));

        await bob.SendAsync(new Sync { RequestId = 9, Conversations = { new ConversationCursor { ConversationId = id, Seq = 3 } } });
        var syncs = await ExpectGroupMessagesAsync(bob, id, 4, 6, "bob");
        var done = syncs.Count > 0 ? syncs[0] : await bob.ReceiveAsync<SyncDone>();
        Assert.Equal(9UL, done.RequestId);
        Assert.Equal(1UL, done.InboxSeq); // the inbox stayed where it was
        Assert.Equal(6UL, Assert.Single(done.Conversations, c => c.ConversationId == id).Seq);

        await alice.SendAsync(Text(6, id, "message 7"));
        await ExpectGroupMessagesAsync(bob, id, 7, 7, "bob live");
        await using var mallory = await broker.LoginAsync("mallory", "phone");
        var refused = await RefusedAsync(mallory, new Sync { RequestId = 10, Conversations = { new ConversationCursor { ConversationId = id, Seq = 0 } } });
        Assert.Equal((ReasonCode.NotAMember, 10UL), (refused.Reason, refused.RequestId));
        Assert.DoesNotContain(await DrainAsync(mallory), m => m is Deliver);
    }

    [Fact]
    public async Task A_non_members_send_and_history_request_are_refused_with_NOT_A_MEMBER_and_nothing_is_stored()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = await broker.LoginAsync("alice", "phone");
        await using var mallory = await broker.LoginAsync("mallory", "phone");
        var id = (await OkAsync(alice, Create(1, ["bob"]))).ConversationId;

        var send = await RefusedAsync(mallory, Text(42, id, "let me in"));
        var history = await RefusedAsync(mallory, new History { RequestId = 43, ConversationId = id });
        var get = await RefusedAsync(mallory, new GroupRequest { RequestId = 44, Get = new GroupRef { ConversationId = id } });
        var ack = await RefusedAsync(mallory, new Ack { Conversations = { new ConversationCursor { ConversationId = id, Seq = 1 } } });

        Assert.Equal((ReasonCode.NotAMember, 42UL, PacketType.Send), (send.Reason, send.RequestId, send.InReplyTo));
        Assert.Equal((ReasonCode.NotAMember, 43UL, PacketType.History), (history.Reason, history.RequestId, history.InReplyTo));
        Assert.Equal((ReasonCode.NotAMember, 44UL), (get.Reason, get.RequestId));
        Assert.Equal(ReasonCode.NotAMember, ack.Reason);
        var info = Assert.Single((await OkAsync(alice, new GroupRequest { RequestId = 2, Get = new GroupRef { ConversationId = id } })).Groups);
        Assert.Equal(1UL, info.LastSeq); // only GROUP_CREATED
        var page = (HistoryPage)await ReplyAsync(alice, new History { RequestId = 3, ConversationId = id });
        Assert.Single(page.Messages);
    }

    [Fact]
    public async Task Only_admins_add_remove_and_promote_and_members_see_each_change_as_a_SYSTEM_message()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = await broker.LoginAsync("alice", "phone");
        await using var bob = await broker.LoginAsync("bob", "phone");
        await using var carol = await broker.LoginAsync("carol", "phone");
        var id = (await OkAsync(alice, Create(1, ["bob"]))).ConversationId;

        var notAdmin = await RefusedAsync(bob, Members(2, id, add: true, "carol"));
        var notAdminRemove = await RefusedAsync(bob, Members(3, id, add: false, "alice"));
        var notAdminPromote = await RefusedAsync(bob, new GroupRequest { RequestId = 4, SetAdmin = new GroupAdmin { ConversationId = id, UserId = "bob", Admin = true } });
        var promoted = await OkAsync(alice, new GroupRequest { RequestId = 5, SetAdmin = new GroupAdmin { ConversationId = id, UserId = "bob", Admin = true } });
        var added = await OkAsync(bob, Members(6, id, add: true, "carol"));

        Assert.Equal((ReasonCode.NotGroupAdmin, 2UL, PacketType.GroupRequest), (notAdmin.Reason, notAdmin.RequestId, notAdmin.InReplyTo));
        Assert.Equal(ReasonCode.NotGroupAdmin, notAdminRemove.Reason);
        Assert.Equal(ReasonCode.NotGroupAdmin, notAdminPromote.Reason);
        Assert.Equal((id, 2UL), (promoted.ConversationId, promoted.Seq));
        Assert.Equal(3UL, added.Seq);
        var toCarol = await carol.ReceiveAsync<Deliver>();
        Assert.Equal((id, 3UL, SystemEvent.Types.Kind.MembersAdded), (toCarol.ConversationId, toCarol.Seq, KindOf(toCarol)));
        var info = Assert.Single((await OkAsync(carol, new GroupRequest { RequestId = 7, Get = new GroupRef { ConversationId = id } })).Groups);
        Assert.Equal([("alice", true), ("bob", true), ("carol", false)], info.Members.Select(m => (m.UserId, m.Admin)).OrderBy(m => m.UserId));
    }

    [Fact]
    public async Task Creating_or_growing_a_group_past_groups_max_members_is_refused_with_GROUP_FULL()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "groups.max_members=3");
        await using var alice = await broker.LoginAsync("alice", "phone");

        var tooBig = await RefusedAsync(alice, Create(1, ["bob", "carol", "dave"]));
        var id = (await OkAsync(alice, Create(2, ["bob", "carol"]))).ConversationId;
        var full = await RefusedAsync(alice, Members(3, id, add: true, "dave"));

        Assert.Equal((ReasonCode.GroupFull, 1UL), (tooBig.Reason, tooBig.RequestId));
        Assert.Equal((ReasonCode.GroupFull, 3UL), (full.Reason, full.RequestId));
        var info = Assert.Single((await OkAsync(alice, new GroupRequest { RequestId = 4, List = new GroupListRequest() })).Groups);
        Assert.Equal(3, info.Members.Count);
    }

    [Fact]
    public async Task Members_see_membership_changes_in_order_live_and_on_resume_and_a_removed_member_gets_its_removal_then_nothing()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = await broker.LoginAsync("alice", "phone");
        await using var bob = await broker.LoginAsync("bob", "phone");
        await bob.ReceiveAsync<SyncDone>();
        var id = (await OkAsync(alice, Create(1, ["bob", "carol"]))).ConversationId;

        await OkAsync(alice, Members(2, id, add: true, "dave"));
        await OkAsync(alice, new GroupRequest { RequestId = 3, SetAdmin = new GroupAdmin { ConversationId = id, UserId = "dave", Admin = true } });
        var removed = await OkAsync(alice, Members(4, id, add: false, "bob"));
        await alice.SendAsync(Text(6, id, "bob must not see this"));
        Assert.Equal(5UL, (await alice.ReceiveAsync<Sent>()).Seq);
        await OkAsync(alice, new GroupRequest { RequestId = 5, Leave = new GroupRef { ConversationId = id } });
        var refused = await RefusedAsync(alice, Text(7, id, "alice left"));
        Assert.Equal((ReasonCode.NotAMember, 7UL), (refused.Reason, refused.RequestId));

        var kinds = new List<(ulong, SystemEvent.Types.Kind)>();
        for (var i = 0; i < 4; i++)
        {
            var d = await bob.ReceiveAsync<Deliver>();
            kinds.Add((d.Seq, KindOf(d)));
        }

        Assert.Equal([(1UL, SystemEvent.Types.Kind.GroupCreated), (2UL, SystemEvent.Types.Kind.MembersAdded),
            (3UL, SystemEvent.Types.Kind.AdminChanged), (removed.Seq, SystemEvent.Types.Kind.MembersRemoved)], kinds);
        Assert.DoesNotContain(await DrainAsync(bob), m => m is Deliver);

        // carol was offline: she finds every change in order in her inbox, then dave's message.
        await using var dave = await broker.LoginAsync("dave", "phone");
        await OkAsync(dave, Members(8, id, add: false, "nobody-in-particular")); // a no-op change: no message
        await dave.SendAsync(Text(9, id, "hello carol"));
        var sentToCarol = await dave.ReceiveAsync<Sent>();
        await using var carol = await broker.LoginAsync("carol", "phone");
        var seen = new List<(ulong, string)>();
        while (seen.Count < 7)
        {
            var d = await carol.ReceiveAsync<Deliver>();
            seen.Add((d.Seq, d.ContentType == ContentType.System ? KindOf(d).ToString() : d.Body.ToStringUtf8()));
        }

        Assert.Equal([(1UL, "GroupCreated"), (2UL, "MembersAdded"), (3UL, "AdminChanged"), (4UL, "MembersRemoved"),
            (5UL, "bob must not see this"), (6UL, "MemberLeft"), (7UL, "hello carol")], seen);
        Assert.Equal(7UL, sentToCarol.Seq); // alice's SEND after leaving stored nothing
    }
}
