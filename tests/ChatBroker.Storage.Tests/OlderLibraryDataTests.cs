using System.Formats.Tar;
using System.IO.Compression;
using System.Text;

namespace ChatBroker.Storage.Tests;

/// <summary>
/// A data directory written by an older RocksDB opens with the library we ship. The fixture
/// Fixtures/rocksdb-7.8-store.tar.gz was written by this store on Debian 12's RocksDB 7.8.3 (the library
/// the broker used before it took RocksDB 11.12 from the NuGet package): <see cref="StoreScenario"/> in
/// two sessions, so the first session's data is in table files (7.8 flushed its recovered WAL when the
/// second session opened) and the second's only in 7.8's WAL. To write it again with whatever library the
/// build loads: CHATBROKER_WRITE_STORAGE_FIXTURE=/path/to/out.tar.gz dotnet test --filter StoreScenario.
/// </summary>
[Collection(ProcessWideCollection.Name)]
public sealed class OlderLibraryDataTests : IDisposable
{
    private static readonly DateTimeOffset Start = new(2026, 12, 1, 9, 0, 0, TimeSpan.Zero);

    private readonly TempDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    private StorageOptions Options() => new()
    {
        Path = _directory.Path,
        SweepInterval = Timeout.InfiniteTimeSpan,
        BlockCacheBytes = 1 << 20,
        WriteBufferBytes = 1 << 20,
        Retention = RetentionPolicy.Keep,
        Clock = new ManualClock(Start),
    };

    [Fact]
    public async Task A_store_written_by_rocksdb_7_8_reads_back_exactly_and_continues()
    {
        var fixture = Path.Combine(AppContext.BaseDirectory, "Fixtures", "rocksdb-7.8-store.tar.gz");
        await using (var file = File.OpenRead(fixture))
        await using (var gzip = new GZipStream(file, CompressionMode.Decompress))
        {
            await TarFile.ExtractToDirectoryAsync(gzip, _directory.Path, overwriteFiles: false);
        }

        // The fixture really is an older library's: its OPTIONS file records the version that wrote it.
        var options = Directory.GetFiles(_directory.Path, "OPTIONS-*");
        Assert.NotEmpty(options);
        Assert.Contains("rocksdb_version=7.8.3", await File.ReadAllTextAsync(options.Max(StringComparer.Ordinal)!), StringComparison.Ordinal);
        Assert.NotEmpty(Directory.GetFiles(_directory.Path, "*.sst"));

        using (var store = RocksDbChatStore.Open(Options()))
        {
            StoreScenario.AssertReadsBack(store);
            await StoreScenario.AssertContinuesAsync(store);
        }

        // What the package's library wrote over 7.8's files opens again; its OPTIONS file shows which
        // library that was (not a distribution's that happens to be installed).
        using (var store = RocksDbChatStore.Open(Options()))
        {
            Assert.Equal((ulong)StoreScenario.DirectMessages + 1, store.GetLastSeq(StoreScenario.DirectId));
        }

        var newest = Directory.GetFiles(_directory.Path, "OPTIONS-*").Max(StringComparer.Ordinal)!;
        var written = await File.ReadAllTextAsync(newest);
        Assert.Contains("rocksdb_version=11.12.", written, StringComparison.Ordinal);
        // The table format stays one that RocksDB 7.8 reads, so a rollback can open this directory.
        var formats = written.Split('\n').Select(line => line.Trim()).Where(line => line.StartsWith("format_version=", StringComparison.Ordinal)).ToList();
        Assert.Equal(Engine.RocksDbEngine.FamilyNames.Length, formats.Count);
        Assert.All(formats, line => Assert.Equal($"format_version={Native.RocksDb.TableFormatVersion}", line));
    }

    [Fact]
    public async Task StoreScenario_written_by_this_build_reads_back_exactly()
    {
        using (var store = RocksDbChatStore.Open(Options()))
        {
            await StoreScenario.WriteFirstSessionAsync(store);
        }

        using (var store = RocksDbChatStore.Open(Options()))
        {
            await StoreScenario.WriteSecondSessionAsync(store);
        }

        var output = Environment.GetEnvironmentVariable("CHATBROKER_WRITE_STORAGE_FIXTURE");
        if (!string.IsNullOrEmpty(output))
        {
            await using var file = File.Create(output);
            await using var gzip = new GZipStream(file, CompressionLevel.SmallestSize);
            await TarFile.CreateFromDirectoryAsync(_directory.Path, gzip, includeBaseDirectory: false);
        }

        using (var store = RocksDbChatStore.Open(Options()))
        {
            StoreScenario.AssertReadsBack(store);
            await StoreScenario.AssertContinuesAsync(store);
        }
    }
}

/// <summary>A small store touching every column family: a direct conversation and a group with messages
/// (with and without idempotency keys, media, binary bodies), inboxes, cursors on both streams, members
/// changed after creation, push jobs, presence and prekeys; then what must hold when it is read back.</summary>
internal static class StoreScenario
{
    public const ulong DirectId = 1;
    public const ulong GroupId = 2;
    public const int DirectMessages = 12;
    public const int GroupMessages = 9;
    private const int FirstSessionDirect = 8;
    private const int FirstSessionGroup = 5;

    private static AppendRequest Direct(int i) => new()
    {
        ConversationId = DirectId,
        SenderUserId = i % 3 == 0 ? "bob" : "alice",
        SenderDeviceId = i % 3 == 0 ? "bob-phone" : (i % 2 == 0 ? "alice-laptop" : "alice-phone"),
        ClientMsgId = i % 4 == 3 ? 0 : (ulong)(1000 + i),
        ContentType = (uint)(1 + (i % 2)),
        Body = Body("direct", i),
        MediaRef = i % 5 == 4 ? $"media/{i:D4}" : null,
        InboxRecipients = i % 3 == 0 ? ["alice"] : ["bob"],
        PushRecipients = i % 3 == 0 ? [] : ["bob"],
    };

    private static AppendRequest Group(int i) => new()
    {
        ConversationId = GroupId,
        SenderUserId = i % 2 == 0 ? "carol" : "alice",
        SenderDeviceId = i % 2 == 0 ? "carol-phone" : "alice-phone",
        ClientMsgId = (ulong)(2000 + i),
        ContentType = 1,
        Body = Body("group", i),
        InboxRecipients = i % 2 == 0 ? ["alice", "bob"] : ["bob", "carol"],
    };

    /// <summary>Text with a few bytes that are not UTF-8 text, so the body is compared byte for byte.</summary>
    private static byte[] Body(string kind, int i)
    {
        var text = Encoding.UTF8.GetBytes($"{kind} message {i}: héllo wörld {new string('x', i * 7)}");
        var body = new byte[text.Length + 4];
        text.CopyTo(body, 0);
        body[^4] = 0;
        body[^3] = 0xff;
        body[^2] = (byte)i;
        body[^1] = 0x80;
        return body;
    }

    private static PrekeyBundle Bundle(byte seed) => new(
        new byte[] { seed, 1, 2, 3 }, 77, new byte[] { seed, 4, 5 }, new byte[] { seed, 6, 7, 8, 9 });

    public static async Task WriteFirstSessionAsync(IChatStore store)
    {
        Assert.Equal(DirectId, (await store.GetOrCreateDirectAsync("bob", "alice")).Id);
        Assert.Equal(GroupId, (await store.CreateGroupAsync("alice", "Fixture group", ["bob", "carol"])).Id);
        for (var i = 0; i < FirstSessionDirect; i++)
        {
            await store.AppendAsync(Direct(i));
        }

        for (var i = 0; i < FirstSessionGroup; i++)
        {
            await store.AppendAsync(Group(i));
        }

        await store.AdvanceCursorAsync("bob", "bob-phone", CursorStream.Inbox, 4);
        await store.AdvanceCursorAsync("alice", "alice-phone", CursorStream.Conversation(GroupId), 3);
        await store.UploadPrekeysAsync("bob", "bob-phone", Bundle(1), [new(1, new byte[] { 11 }), new(2, new byte[] { 12 }), new(3, new byte[] { 13 })]);
        await store.SetLastSeenAsync("bob", Start(60_000));
        var job = await store.EnqueuePushJobAsync("carol", GroupId, 2);
        await store.CompletePushJobAsync(job.Id);
    }

    public static async Task WriteSecondSessionAsync(IChatStore store)
    {
        for (var i = FirstSessionDirect; i < DirectMessages; i++)
        {
            await store.AppendAsync(Direct(i));
        }

        for (var i = FirstSessionGroup; i < GroupMessages; i++)
        {
            await store.AppendAsync(Group(i));
        }

        await store.AdvanceCursorsAsync("bob", [new("bob-phone", CursorStream.Inbox, 9), new("bob-laptop", CursorStream.Inbox, 2)]);
        await store.AdvanceCursorAsync("carol", "carol-phone", CursorStream.Inbox, 3);
        await store.SetMemberAsync(GroupId, "dave", MemberRole.Member);
        await store.SetMemberAsync(GroupId, "bob", MemberRole.Admin);
        Assert.True(await store.RemoveMemberAsync(GroupId, "carol"));
        Assert.NotNull(await store.TakePrekeysAsync("bob", "bob-phone"));
        await store.SetLastSeenAsync("alice", Start(120_000));
        await store.ReschedulePushJobAsync((await store.EnqueuePushJobAsync("dave", GroupId, 9)).Id, Start(300_000));
    }

    private static long Start(long plusMs) => new DateTimeOffset(2026, 12, 1, 9, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds() + plusMs;

    public static void AssertReadsBack(IChatStore store)
    {
        AssertLog(store, DirectId, DirectMessages, Direct);
        AssertLog(store, GroupId, GroupMessages, Group);

        // Inboxes: every recipient got (conversation, seq) in append order, direct messages first per session.
        var expected = new Dictionary<string, List<(ulong Conversation, ulong Seq)>>();
        void Add(AppendRequest request, int seq)
        {
            foreach (var user in request.InboxRecipients)
            {
                if (!expected.TryGetValue(user, out var list))
                {
                    expected[user] = list = [];
                }

                list.Add((request.ConversationId, (ulong)seq));
            }
        }

        for (var i = 0; i < FirstSessionDirect; i++)
        {
            Add(Direct(i), i + 1);
        }

        for (var i = 0; i < FirstSessionGroup; i++)
        {
            Add(Group(i), i + 1);
        }

        for (var i = FirstSessionDirect; i < DirectMessages; i++)
        {
            Add(Direct(i), i + 1);
        }

        for (var i = FirstSessionGroup; i < GroupMessages; i++)
        {
            Add(Group(i), i + 1);
        }

        foreach (var (user, entries) in expected)
        {
            var inbox = store.ReadInbox(user, 0, 100);
            Assert.Equal(entries, inbox.Select(e => (e.ConversationId, e.Seq)));
            Assert.Equal(Enumerable.Range(1, entries.Count).Select(n => (ulong)n), inbox.Select(e => e.InboxSeq));
            Assert.Equal((ulong)entries.Count, store.GetLastInboxSeq(user));
            Assert.All(inbox, e => Assert.Equal(Start(0), e.TimestampMs));
        }

        Assert.Equal(9UL, store.GetCursor("bob", "bob-phone", CursorStream.Inbox));
        Assert.Equal(2UL, store.GetCursor("bob", "bob-laptop", CursorStream.Inbox));
        Assert.Equal(3UL, store.GetCursor("carol", "carol-phone", CursorStream.Inbox));
        Assert.Equal(3UL, store.GetCursor("alice", "alice-phone", CursorStream.Conversation(GroupId)));
        Assert.Equal(0UL, store.GetCursor("alice", "alice-phone", CursorStream.Inbox));

        Assert.Equal(new Conversation(DirectId, ConversationKind.Direct, Start(0), "bob", null), store.GetConversation(DirectId));
        Assert.Equal(new Conversation(GroupId, ConversationKind.Group, Start(0), "alice", "Fixture group"), store.GetConversation(GroupId));
        Assert.Equal(
            [("alice", MemberRole.Admin), ("bob", MemberRole.Admin), ("dave", MemberRole.Member)],
            store.ListMembers(GroupId).Select(m => (m.UserId, m.Role)).OrderBy(m => m.UserId, StringComparer.Ordinal));
        Assert.Equal(["alice", "bob"], store.ListMembers(DirectId).Select(m => m.UserId).Order(StringComparer.Ordinal));
        Assert.Null(store.GetMember(GroupId, "carol"));
        Assert.Equal([DirectId, GroupId], store.ListConversations("bob").Order());
        Assert.Equal([GroupId], store.ListConversations("dave"));
        Assert.Equal(DirectId, store.GetOrCreateDirectAsync("alice", "bob").GetAwaiter().GetResult().Id);

        Assert.Equal(Start(60_000), store.GetLastSeen("bob"));
        Assert.Equal(Start(120_000), store.GetLastSeen("alice"));
        Assert.Null(store.GetLastSeen("carol"));

        var bundle = store.GetPrekeyBundle("bob", "bob-phone");
        Assert.NotNull(bundle);
        var want = Bundle(1);
        Assert.Equal(want.IdentityKey.ToArray(), bundle.IdentityKey.ToArray());
        Assert.Equal(want.SignedPrekeyId, bundle.SignedPrekeyId);
        Assert.Equal(want.SignedPrekey.ToArray(), bundle.SignedPrekey.ToArray());
        Assert.Equal(want.Signature.ToArray(), bundle.Signature.ToArray());
        Assert.Equal(2, store.CountOneTimePrekeys("bob", "bob-phone"));
        Assert.Equal(["bob-phone"], store.ListKeyDevices("bob"));

        // Bob's eight direct pushes are due (never attempted); dave's is not until its new time.
        var due = store.ListDuePushJobs(Start(0), 100);
        Assert.Equal(8, due.Count);
        Assert.All(due, j => Assert.Equal(("bob", DirectId, 0), (j.UserId, j.ConversationId, j.Attempts)));
        var later = store.ListDuePushJobs(Start(300_000), 100);
        var dave = Assert.Single(later, j => j.UserId == "dave");
        Assert.Equal((GroupId, 9UL, 1, Start(300_000)), (dave.ConversationId, dave.Seq, dave.Attempts, dave.NotBeforeMs));
    }

    private static void AssertLog(IChatStore store, ulong conversation, int count, Func<int, AppendRequest> request)
    {
        Assert.Equal((ulong)count, store.GetLastSeq(conversation));
        var messages = store.ReadRange(conversation, 1, 100);
        Assert.Equal(count, messages.Count);
        for (var i = 0; i < count; i++)
        {
            var want = request(i);
            var got = messages[i];
            Assert.Equal((conversation, (ulong)(i + 1), Start(0)), (got.ConversationId, got.Seq, got.TimestampMs));
            Assert.Equal((want.SenderUserId, want.SenderDeviceId, want.ClientMsgId), (got.SenderUserId, got.SenderDeviceId, got.ClientMsgId));
            Assert.Equal((want.ContentType, want.MediaRef), (got.ContentType, got.MediaRef));
            Assert.Equal(want.Body.ToArray(), got.Body.ToArray());
        }

        Assert.Equal(messages.TakeLast(3).Select(m => m.Seq), store.ReadBefore(conversation, ulong.MaxValue, 3).Select(m => m.Seq));
    }

    /// <summary>Every counter and index goes on from the old data: dedup, seqs, inbox seqs, ids.</summary>
    public static async Task AssertContinuesAsync(IChatStore store)
    {
        var again = await store.AppendAsync(Direct(10));
        Assert.True(again.IsDuplicate);
        Assert.Equal(11UL, again.Seq);

        var next = await store.AppendAsync(Direct(DirectMessages + 1));
        Assert.False(next.IsDuplicate);
        Assert.Equal((ulong)DirectMessages + 1, next.Seq);
        Assert.Equal(store.GetLastInboxSeq("bob"), Assert.Single(next.InboxSeqs));

        Assert.Equal(GroupId + 1, (await store.CreateGroupAsync("erin", null, [])).Id);
        var newestJob = store.ListDuePushJobs(Start(300_000), 100).Max(j => j.Id);
        Assert.Equal(newestJob + 1, (await store.EnqueuePushJobAsync("bob", DirectId, 14)).Id);
        Assert.Equal(9UL, (await store.AdvanceCursorAsync("bob", "bob-phone", CursorStream.Inbox, 5)));
    }
}
