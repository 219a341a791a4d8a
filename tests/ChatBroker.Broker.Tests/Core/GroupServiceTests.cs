using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>Groups and hybrid fan-out over the in-memory store and in-memory devices (threshold 3, limit 6).</summary>
public sealed class GroupServiceTests : IAsyncLifetime
{
    private readonly InMemoryChatStore _store = new();
    private readonly SessionRegistry _registry = new();
    private readonly BrokerMetrics _metrics = new("test");
    private ChatService _chat = null!;
    private GroupService _groups = null!;

    public Task InitializeAsync()
    {
        var directory = new ConversationDirectory(_store);
        _chat = new ChatService(_store, _registry, directory, _metrics, TimeProvider.System, new FanoutOptions { WriteThreshold = 3 });
        _groups = new GroupService(_store, directory, _chat, new GroupsOptions { MaxMembers = 6 });
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _store.DisposeAsync();
        _metrics.Dispose();
    }

    private FakeDevice Online(string user, string device = "phone")
    {
        var d = new FakeDevice(user, device);
        _registry.Register(d, 10, out _);
        return d;
    }

    private async Task<GroupResult> OkAsync(string user, GroupRequest request)
    {
        var outcome = await _groups.HandleAsync(user, request, 65536, default);
        Assert.True(outcome.Error == ReasonCode.Success, $"{outcome.Error}: {outcome.Message}");
        return outcome.Result!;
    }

    private Task<GroupOutcome> TryAsync(string user, GroupRequest request) => _groups.HandleAsync(user, request, 65536, default);

    private static GroupRequest Create(params string[] members)
    {
        var create = new GroupCreate { Title = "team" };
        create.MemberUserIds.Add(members);
        return new GroupRequest { RequestId = 7, Create = create };
    }

    private static GroupRequest Add(ulong id, params string[] users)
    {
        var m = new GroupMembers { ConversationId = id };
        m.UserIds.Add(users);
        return new GroupRequest { RequestId = 8, AddMembers = m };
    }

    private static GroupRequest Remove(ulong id, params string[] users)
    {
        var m = new GroupMembers { ConversationId = id };
        m.UserIds.Add(users);
        return new GroupRequest { RequestId = 9, RemoveMembers = m };
    }

    private static Send Text(ulong id, ulong conversation, string text) =>
        new() { ClientMsgId = id, ConversationId = conversation, Body = ByteString.CopyFromUtf8(text) };

    private static SystemEvent EventOf(DeliveryMessage m)
    {
        Assert.Equal(ContentType.System, m.ContentType);
        return SystemEvent.Parser.ParseFrom(m.Body.Span);
    }

    [Fact]
    public async Task Create_makes_the_creator_admin_and_every_member_gets_GROUP_CREATED_as_seq_1()
    {
        var bob = Online("bob");

        var created = await OkAsync("alice", Create("bob"));

        Assert.Equal(7UL, created.RequestId);
        Assert.Equal(1UL, created.Seq);
        Assert.Equal(MemberRole.Admin, _store.GetMember(created.ConversationId, "alice")!.Value.Role);
        Assert.Equal(MemberRole.Member, _store.GetMember(created.ConversationId, "bob")!.Value.Role);
        var (inboxSeq, message) = Assert.Single(bob.Inbox);
        Assert.Equal(1UL, inboxSeq);
        var e = EventOf(message);
        Assert.Equal(SystemEvent.Types.Kind.GroupCreated, e.Kind);
        Assert.Equal(["alice", "bob"], e.UserIds);
        Assert.Equal(1UL, _store.GetLastInboxSeq("alice"));
    }

    [Fact]
    public async Task Only_admins_add_remove_and_promote_and_a_promoted_member_can_then_add()
    {
        var id = (await OkAsync("alice", Create("bob"))).ConversationId;

        Assert.Equal(ReasonCode.NotGroupAdmin, (await TryAsync("bob", Add(id, "carol"))).Error);
        Assert.Equal(ReasonCode.NotGroupAdmin, (await TryAsync("bob", Remove(id, "alice"))).Error);
        Assert.Equal(ReasonCode.NotGroupAdmin, (await TryAsync("bob", new GroupRequest { SetAdmin = new GroupAdmin { ConversationId = id, UserId = "bob", Admin = true } })).Error);
        Assert.Equal(ReasonCode.NotAMember, (await TryAsync("mallory", Add(id, "mallory"))).Error);
        Assert.Equal(1UL, _store.GetLastSeq(id)); // refusals store nothing

        var promoted = await OkAsync("alice", new GroupRequest { SetAdmin = new GroupAdmin { ConversationId = id, UserId = "bob", Admin = true } });
        var added = await OkAsync("bob", Add(id, "carol"));

        Assert.Equal(2UL, promoted.Seq);
        Assert.Equal(3UL, added.Seq);
        Assert.Equal(MemberRole.Admin, _store.GetMember(id, "bob")!.Value.Role);
        Assert.NotNull(_store.GetMember(id, "carol"));
    }

    [Fact]
    public async Task Member_limit_refuses_create_and_add_past_it_with_GROUP_FULL()
    {
        Assert.Equal(ReasonCode.GroupFull, (await TryAsync("alice", Create("b", "c", "d", "e", "f", "g"))).Error);
        var id = (await OkAsync("alice", Create("b", "c", "d", "e"))).ConversationId;

        Assert.Equal(ReasonCode.GroupFull, (await TryAsync("alice", Add(id, "f", "g"))).Error);
        await OkAsync("alice", Add(id, "f"));
        Assert.Equal(ReasonCode.GroupFull, (await TryAsync("alice", Add(id, "g"))).Error);
        Assert.Equal(6, _store.ListMembers(id).Count);
    }

    [Fact]
    public async Task A_removed_member_gets_the_message_that_removed_it_then_nothing_and_its_sends_are_refused()
    {
        var alice = Online("alice");
        var bob = Online("bob");
        var id = (await OkAsync("alice", Create("bob"))).ConversationId;

        var removed = await OkAsync("alice", Remove(id, "bob"));
        await _chat.SendAsync(alice, Text(1, id, "after"), default);
        var refused = await _chat.SendAsync(bob, Text(1, id, "still here?"), default);

        Assert.Equal(2UL, removed.Seq);
        Assert.Equal(ReasonCode.NotAMember, refused.Error);
        Assert.Collection(bob.Inbox,
            c => Assert.Equal(SystemEvent.Types.Kind.GroupCreated, EventOf(c.Message).Kind),
            c => Assert.Equal((SystemEvent.Types.Kind.MembersRemoved, "bob"), (EventOf(c.Message).Kind, EventOf(c.Message).UserIds.Single())));
        Assert.Equal(3, alice.Inbox.Count);
        Assert.Equal(3UL, _store.GetLastSeq(id));
        Assert.Equal(ReasonCode.NotAMember, _chat.History("bob", new History { ConversationId = id }).Error);
    }

    [Fact]
    public async Task Sends_racing_a_removal_reach_the_removed_member_only_when_sequenced_before_it()
    {
        var alice = Online("alice");
        var bob = Online("bob");
        var id = (await OkAsync("alice", Create("bob", "carol"))).ConversationId;
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var sends = Enumerable.Range(1, 200).Select(i => Task.Run(async () =>
        {
            await start.Task;
            return await _chat.SendAsync(alice, Text((ulong)i, id, "m" + i), default);
        })).ToList();
        var removal = Task.Run(async () =>
        {
            await start.Task;
            return await OkAsync("alice", Remove(id, "bob"));
        });

        start.SetResult();
        await Task.WhenAll(sends);
        var removedAt = (await removal).Seq;

        var toBob = bob.Inbox.Select(e => e.Message.Seq).Order().ToList();
        Assert.Equal(201UL + 1, _store.GetLastSeq(id)); // GROUP_CREATED + 200 messages + MEMBERS_REMOVED
        Assert.Equal(Enumerable.Range(1, (int)removedAt).Select(s => (ulong)s), toBob); // everything up to its removal, nothing after
    }

    [Fact]
    public async Task Catch_up_of_a_large_groups_log_steps_over_SYSTEM_messages_and_stops_for_a_removed_member()
    {
        var alice = Online("alice");
        var id = (await OkAsync("alice", Create("bob", "carol", "dave"))).ConversationId; // 4 members: large
        await _chat.SendAsync(alice, Text(1, id, "one"), default);
        await _chat.SendAsync(alice, Text(2, id, "two"), default);

        var items = new List<DeliveryItem>();
        Assert.True(_chat.ReadGroupLogAfter("bob", id, 0, 10, items));

        Assert.Equal([1UL, 2UL, 3UL], items.Select(i => i.Position));
        Assert.Null(items[0].Message); // GROUP_CREATED reaches bob through his inbox
        Assert.Equal(["one", "two"], items.Skip(1).Select(i => System.Text.Encoding.UTF8.GetString(i.Message!.Body.Span)));
        items.Clear();
        Assert.True(_chat.ReadGroupLogAfter("bob", id, 2, 10, items));
        Assert.Equal(3UL, Assert.Single(items).Position);

        await OkAsync("alice", Remove(id, "bob"));
        items.Clear();
        Assert.False(_chat.ReadGroupLogAfter("bob", id, 0, 10, items));
        Assert.Empty(items);
    }

    [Fact]
    public async Task A_large_group_stream_starts_at_the_named_or_stored_cursor_never_past_the_log()
    {
        var alice = Online("alice");
        var id = (await OkAsync("alice", Create("bob", "carol", "dave"))).ConversationId;
        await _chat.SendAsync(alice, Text(1, id, "one"), default);
        await _store.AdvanceCursorAsync("bob", "phone", CursorStream.Conversation(id), 1, default);

        Assert.Equal(1UL, _chat.GroupStreamStart("bob", "phone", id, named: null)); // the stored cursor
        Assert.Equal(0UL, _chat.GroupStreamStart("bob", "laptop", id, named: null)); // none stored: the whole log
        Assert.Equal(2UL, _chat.GroupStreamStart("bob", "phone", id, named: 99)); // clamped to the log's end
        Assert.Null(_chat.GroupStreamStart("mallory", "phone", id, named: 0));
        Assert.Equal([id], _chat.LargeGroupsOf("bob"));
        Assert.Empty(_chat.LargeGroupsOf("mallory"));
    }

    [Fact]
    public async Task Leave_is_a_MEMBER_LEFT_message_and_the_user_is_no_longer_listed()
    {
        var bob = Online("bob");
        var id = (await OkAsync("alice", Create("bob", "carol"))).ConversationId;

        var left = await OkAsync("bob", new GroupRequest { Leave = new GroupRef { ConversationId = id } });

        Assert.Equal(2UL, left.Seq);
        Assert.Equal(SystemEvent.Types.Kind.MemberLeft, EventOf(bob.Inbox.Last().Message).Kind);
        Assert.Null(_store.GetMember(id, "bob"));
        Assert.Empty((await OkAsync("bob", new GroupRequest { List = new GroupListRequest() })).Groups);
        Assert.Equal(ReasonCode.NotAMember, (await TryAsync("bob", new GroupRequest { Get = new GroupRef { ConversationId = id } })).Error);
    }

    [Fact]
    public async Task When_the_last_admin_leaves_the_longest_standing_member_is_promoted_by_an_ADMIN_CHANGED_message()
    {
        var carol = Online("carol");
        var id = (await OkAsync("alice", Create("carol"))).ConversationId;
        await OkAsync("alice", Add(id, "zed")); // joined after carol (or in the same ms: then the smaller id wins)

        var left = await OkAsync("alice", new GroupRequest { Leave = new GroupRef { ConversationId = id } });

        Assert.Equal(3UL, left.Seq);
        Assert.Equal(4UL, _store.GetLastSeq(id));
        Assert.Equal(MemberRole.Admin, _store.GetMember(id, "carol")!.Value.Role);
        Assert.Equal(MemberRole.Member, _store.GetMember(id, "zed")!.Value.Role);
        var last = EventOf(carol.Inbox.Last().Message);
        Assert.Equal((SystemEvent.Types.Kind.AdminChanged, true, "carol"), (last.Kind, last.Admin, last.UserIds.Single()));
        await OkAsync("carol", Add(id, "dave")); // the group is still manageable
    }

    [Fact]
    public async Task List_and_get_return_members_with_roles()
    {
        var id = (await OkAsync("alice", Create("bob"))).ConversationId;
        var other = (await OkAsync("bob", Create("carol"))).ConversationId;

        var list = await OkAsync("bob", new GroupRequest { List = new GroupListRequest() });
        var get = await OkAsync("alice", new GroupRequest { Get = new GroupRef { ConversationId = id } });

        Assert.Equal([id, other], list.Groups.Select(g => g.ConversationId).Order());
        var info = Assert.Single(get.Groups);
        Assert.Equal("team", info.Title);
        Assert.Equal(1UL, info.LastSeq);
        Assert.Equal([("alice", true), ("bob", false)], info.Members.Select(m => (m.UserId, m.Admin)).OrderBy(m => m.UserId));
    }

    [Fact]
    public async Task Above_the_threshold_a_message_is_stored_once_pushed_to_online_devices_from_the_log_and_records_no_push_jobs()
    {
        var alice = Online("alice");
        var bob = Online("bob");
        var id = (await OkAsync("alice", Create("bob", "carol", "dave"))).ConversationId; // 4 members > 3
        var inboxBefore = _store.GetLastInboxSeq("bob");

        var sent = await _chat.SendAsync(alice, Text(1, id, "hello all"), default);

        Assert.Equal(2UL, sent.Result!.Seq);
        Assert.Empty(sent.Result.InboxSeqs);
        Assert.Equal(inboxBefore, _store.GetLastInboxSeq("bob"));
        Assert.Empty(_store.ListDuePushJobs(long.MaxValue, 10));
        var (message, write) = bob.GroupLog.Last();
        Assert.True(write);
        Assert.Equal(2UL, message.Seq);
        Assert.Single(alice.GroupLog, g => g.Write); // the session skips its own device's message
        // The GROUP_CREATED message went to inboxes, and moved the log position without being written twice.
        Assert.Contains(bob.GroupLog, g => g.Message.Seq == 1 && !g.Write);
        Assert.Single(bob.Inbox);
    }

    [Fact]
    public async Task At_or_below_the_threshold_groups_fan_out_on_write_with_push_jobs_for_offline_members()
    {
        var alice = Online("alice");
        var id = (await OkAsync("alice", Create("bob", "carol"))).ConversationId; // 3 members

        var sent = await _chat.SendAsync(alice, Text(1, id, "hi"), default);

        Assert.Equal(3, sent.Result!.InboxSeqs.Count);
        Assert.Equal(["bob", "carol"], _store.ListDuePushJobs(long.MaxValue, 10).Select(j => j.UserId).Order());
    }

    [Fact]
    public async Task Group_receipts_name_the_reader_and_go_only_to_the_senders_of_the_acknowledged_messages()
    {
        var alice = Online("alice");
        var bob = Online("bob");
        var carol = Online("carol");
        var id = (await OkAsync("alice", Create("bob", "carol", "dave"))).ConversationId;
        await _chat.SendAsync(alice, Text(1, id, "from alice"), default);

        var (error, _) = await _chat.AckConversationsAsync(bob, [new ConversationCursor { ConversationId = id, Seq = 2 }], default);

        Assert.Equal(ReasonCode.Success, error);
        Assert.Equal(2UL, _store.GetCursor("bob", "phone", CursorStream.Conversation(id)));
        var receipt = Assert.Single(alice.Receipts);
        Assert.Equal((ReceiptKind.Delivered, 2UL, "bob"), (receipt.Kind, receipt.UpToSeq, receipt.ReaderUserId));
        Assert.Empty(carol.Receipts);
        var (refused, _) = await _chat.AckConversationsAsync(Online("mallory"), [new ConversationCursor { ConversationId = id, Seq = 2 }], default);
        Assert.Equal(ReasonCode.NotAMember, refused);
    }

    [Fact]
    public async Task The_directory_still_knows_a_group_is_a_group_after_its_bounded_cache_was_emptied()
    {
        var id = (await OkAsync("alice", Create("bob"))).ConversationId;
        var direct = await _store.GetOrCreateDirectAsync("alice", "bob");
        var directory = new ConversationDirectory(_store, capacity: 1);

        Assert.NotNull(directory.MembersOf(id));
        Assert.NotNull(directory.MembersOf(direct.Id)); // evicts the group's entries

        Assert.True(directory.IsGroup(id));
        Assert.False(directory.IsGroup(direct.Id));
        Assert.False(directory.IsGroup(999_999));
    }

    [Fact]
    public async Task An_inbox_ACK_covering_a_large_groups_SYSTEM_message_is_not_a_delivered_receipt_for_its_log()
    {
        var alice = Online("alice");
        var id = (await OkAsync("alice", Create("bob", "carol", "dave"))).ConversationId;
        await _chat.SendAsync(alice, Text(1, id, "in the log only"), default);
        await OkAsync("alice", Add(id, "erin")); // seq 3, through bob's inbox
        var bob = new FakeDevice("bob", "phone");

        await _chat.AckAsync(bob, _store.GetLastInboxSeq("bob"), default);

        Assert.Empty(alice.Receipts);
        Assert.Equal(0UL, _store.GetCursor("bob", ChatService.DeliveredCursor, CursorStream.Conversation(id)));
    }

    [Fact]
    public async Task Adding_past_the_threshold_switches_the_group_to_fan_out_on_read()
    {
        var alice = Online("alice");
        var id = (await OkAsync("alice", Create("bob", "carol"))).ConversationId;
        Assert.Equal(3, (await _chat.SendAsync(alice, Text(1, id, "small"), default)).Result!.InboxSeqs.Count);

        await OkAsync("alice", Add(id, "dave"));
        var large = await _chat.SendAsync(alice, Text(2, id, "large"), default);

        Assert.Empty(large.Result!.InboxSeqs);
        Assert.Equal(4UL, large.Result.Seq);
    }
}
