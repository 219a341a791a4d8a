using System.Diagnostics;
using System.Text;

namespace ChatBroker.Storage.Tests;

/// <summary>What only a durable store can show: reopening, refusing to open, not leaking. Runs alone:
/// open-file counts and RSS are process-wide.</summary>
[Collection(ProcessWideCollection.Name)]
public sealed class RocksDbStoreLifecycleTests : IDisposable
{
    private readonly TempDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    private StorageOptions Options(string? path = null) => new()
    {
        Path = path ?? _directory.Path,
        SweepInterval = Timeout.InfiniteTimeSpan,
        BlockCacheBytes = 1 << 20,
        WriteBufferBytes = 1 << 20,
    };

    [Fact]
    public void RocksDBs_write_stall_counts_are_exported_while_the_store_is_open()
    {
        // The text of rocksdb.cf-write-stall-stats as RocksDB 11.12 writes it.
        var text = "Write Stall (count): cf-l0-file-count-limit-delays-with-ongoing-compaction: 0, l0-file-count-limit-stops: 2, memtable-limit-delays: 5, total-delays: 17, total-stops: 3\n"u8;
        Assert.Equal(17, Native.RocksDb.CountAfter(text, "total-delays: "u8));
        Assert.Equal(3, Native.RocksDb.CountAfter(text, "total-stops: "u8));
        Assert.Equal(0, Native.RocksDb.CountAfter(text, "absent: "u8));

        var seen = new List<(long Value, string Kind)>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Name == "chatbroker.storage.rocksdb_write_stalls")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) => seen.Add((value, (string)tags[0].Value!)));
        listener.Start();
        using (RocksDbChatStore.Open(Options()))
        {
            listener.RecordObservableInstruments();
            Assert.Equal([(0L, "delay"), (0L, "stop")], seen); // a fresh store has stalled nothing
        }

        seen.Clear();
        listener.RecordObservableInstruments();
        Assert.Empty(seen); // closed: nothing read from a disposed database
    }

    [Fact]
    public async Task A_reopened_store_counts_conversation_ids_past_its_counted_ones_not_past_drawn_or_derived_ones()
    {
        ulong group;
        using (var store = RocksDbChatStore.Open(Options()))
        {
            group = (await store.CreateGroupAsync("alice", "g", ["bob"])).Id;
            await store.GetOrCreateDirectAtAsync(ChatStore.FirstDerivedConversationId + 5, "alice", "bob");
            Assert.NotNull(await store.CreateGroupAtAsync(ChatStore.FirstDrawnGroupId + 5, "alice", "drawn", ["bob"]));
            await store.StoreCopyAsync(new StoredMessage(ChatStore.FirstDerivedConversationId + 9, 4, 1, "carol", "phone", 0, 1, null, Encoding.UTF8.GetBytes("x")), ["alice"]);
        }

        using (var store = RocksDbChatStore.Open(Options()))
        {
            Assert.Equal(group + 1, (await store.CreateGroupAsync("alice", "h", ["bob"])).Id);
            Assert.Equal(4UL, store.GetLastSeq(ChatStore.FirstDerivedConversationId + 9));
            Assert.True((await store.StoreCopyAsync(new StoredMessage(ChatStore.FirstDerivedConversationId + 9, 4, 1, "carol", "phone", 0, 1, null, Encoding.UTF8.GetBytes("x")), ["alice"])).IsDuplicate);
        }
    }

    [Fact]
    public async Task A_reopened_store_still_deduplicates_a_devices_newest_client_msg_id()
    {
        using (var store = RocksDbChatStore.Open(Options()))
        {
            await store.AppendAsync(Messages.To(1, "a", clientMsgId: 7));
            await store.AppendAsync(Messages.To(1, "b", clientMsgId: 9));
        }

        using (var store = RocksDbChatStore.Open(Options()))
        {
            var again = await store.AppendAsync(Messages.To(1, "b", clientMsgId: 9));
            Assert.True(again.IsDuplicate);
            Assert.Equal(2UL, again.Seq);
            Assert.True((await store.AppendAsync(Messages.To(1, "a", clientMsgId: 7))).IsDuplicate);
            Assert.Equal(3UL, (await store.AppendAsync(Messages.To(1, "c", clientMsgId: 8))).Seq);
        }
    }

    [Fact]
    public async Task Every_counter_continues_after_reopen()
    {
        ulong groupId;
        ulong jobId;
        using (var store = RocksDbChatStore.Open(Options()))
        {
            for (var i = 0; i < 3; i++)
            {
                await store.AppendAsync(Messages.To(1, "m" + i, clientMsgId: (ulong)(i + 1)) with { InboxRecipients = ["bob"] });
            }

            groupId = (await store.CreateGroupAsync("alice", null, ["bob"])).Id;
            jobId = (await store.EnqueuePushJobAsync("bob", 1, 3)).Id;
            await store.CompletePushJobAsync(jobId);
            await store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 2);
        }

        using (var store = RocksDbChatStore.Open(Options()))
        {
            Assert.Equal(3UL, store.GetLastSeq(1));
            var next = await store.AppendAsync(Messages.To(1, "after") with { InboxRecipients = ["bob"] });
            Assert.Equal(4UL, next.Seq);
            Assert.Equal([4UL], next.InboxSeqs);
            Assert.True((await store.AppendAsync(Messages.To(1, "m0", clientMsgId: 1))).IsDuplicate);
            Assert.Equal(groupId + 1, (await store.CreateGroupAsync("carol", null, [])).Id);
            Assert.True((await store.EnqueuePushJobAsync("bob", 1, 4)).Id > jobId);
            Assert.Equal(2UL, store.GetCursor("bob", "phone", CursorStream.Inbox));
            Assert.Equal(["m0", "m1", "m2", "after"], store.ReadRange(1, 1, 10).Select(m => m.Text()));
        }
    }

    [Fact]
    public async Task A_store_of_another_storage_format_is_refused_with_both_formats_named()
    {
        using (var store = RocksDbChatStore.Open(Options()))
        {
            await store.AppendAsync(Messages.To(1, "a"));
        }

        using (var db = Native.RocksDb.Open(_directory.Path, Engine.RocksDbEngine.FamilyNames, new Native.RocksDbSettings(1 << 20, 1 << 20, 64, [])))
        using (var batch = new Native.WriteBatch(db))
        {
            batch.Put(0, Codec.Records.FormatKey, [0, 0, 0, 9]);
            db.Write(batch, sync: true);
        }

        var error = Assert.Throws<StorageException>(() => RocksDbChatStore.Open(Options()));
        Assert.StartsWith($"Cannot open message store at {_directory.Path}: its storage format is 9, this build reads format {Codec.Records.StorageFormat} only.", error.Message);
        Assert.Equal(StorageFailure.Incompatible, error.Failure);
    }

    [Fact]
    public void A_store_holding_data_without_a_format_stamp_is_refused_and_left_untouched()
    {
        var engine = new Engine.MemoryEngine();
        using (var batch = engine.CreateBatch())
        {
            batch.Put(Engine.Cf.Messages, new byte[16], [1]);
            engine.Commit(batch, sync: true);
        }

        var error = Assert.Throws<StorageException>(() => new InMemoryChatStore(engine, new StorageOptions { Path = "old", SweepInterval = Timeout.InfiniteTimeSpan }));
        Assert.Contains("its storage format is 1 (written before the format was recorded)", error.Message, StringComparison.Ordinal);
        Assert.Null(engine.Get(Engine.Cf.Default, Codec.Records.FormatKey));
    }

    [Fact]
    public void Open_fails_naming_the_path_when_the_directory_cannot_be_created()
    {
        // Tests run as root, which ignores permission bits; a path whose parent is a regular file
        // cannot be created by anyone.
        var file = Path.Combine(_directory.Path, "not-a-directory");
        File.WriteAllText(file, "x");
        var path = Path.Combine(file, "store");

        var error = Assert.Throws<StorageException>(() => RocksDbChatStore.Open(Options(path)));

        Assert.StartsWith($"Cannot open message store at {path}: ", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_fails_with_RocksDBs_message_when_the_directory_is_unusable()
    {
        // The directory exists, but RocksDB cannot create its LOCK file there (a directory is in the way).
        Directory.CreateDirectory(Path.Combine(_directory.Path, "LOCK"));

        var error = Assert.Throws<StorageException>(() => RocksDbChatStore.Open(Options()));

        Assert.StartsWith($"Cannot open message store at {_directory.Path}: ", error.Message, StringComparison.Ordinal);
        Assert.Contains("LOCK", error.Message, StringComparison.Ordinal);
        Assert.IsType<Native.RocksDbException>(error.InnerException);
    }

    [Fact]
    public void Open_fails_naming_the_path_when_this_process_already_has_it_open()
    {
        using var first = RocksDbChatStore.Open(Options());

        var error = Assert.Throws<StorageException>(() => RocksDbChatStore.Open(Options()));

        Assert.StartsWith($"Cannot open message store at {_directory.Path}: ", error.Message, StringComparison.Ordinal);
        Assert.Contains("lock", error.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Open_fails_naming_the_path_when_another_process_holds_the_lock()
    {
        using var child = CrashChildProcess.Start(_directory.Path, seed: 1, round: 0, conversations: 1, callers: 1);
        await child.WaitForLineAsync(line => line.StartsWith("ready", StringComparison.Ordinal));
        try
        {
            var error = Assert.Throws<StorageException>(() => RocksDbChatStore.Open(Options()));
            Assert.StartsWith($"Cannot open message store at {_directory.Path}: ", error.Message, StringComparison.Ordinal);
            Assert.Contains("lock", error.Message, StringComparison.OrdinalIgnoreCase);
        }
        finally
        {
            child.Kill();
        }
    }

    [Fact]
    public async Task Opening_and_closing_1000_times_leaves_open_files_and_memory_flat()
    {
        async Task Cycle(int times)
        {
            for (var i = 0; i < times; i++)
            {
                using var store = RocksDbChatStore.Open(Options());
                Assert.Single(store.ReadRange(1, 1, 10));
            }
        }

        using (var store = RocksDbChatStore.Open(Options()))
        {
            await store.AppendAsync(Messages.To(1, "m"));
        }

        await Cycle(50); // warm up: JIT, RocksDB's global thread pools, allocator arenas
        ForceCollect();
        var filesBefore = OpenFiles();
        var rssBefore = ResidentBytes();

        await Cycle(1000);
        ForceCollect();
        var filesAfter = OpenFiles();
        var rssAfter = ResidentBytes();

        var added = filesAfter.Except(filesBefore).ToList();
        Assert.True(filesAfter.Count - filesBefore.Count <= 2, $"{filesBefore.Count} open files before, {filesAfter.Count} after; new: {string.Join(", ", added)}");
        Assert.True(rssAfter - rssBefore < 48L << 20, $"RSS grew by {(rssAfter - rssBefore) >> 20} MiB over 1000 open/close cycles.");
        using var final = RocksDbChatStore.Open(Options());
        Assert.Equal(2UL, (await final.AppendAsync(Messages.To(1, "m"))).Seq);
    }

    private static void ForceCollect()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    private static List<string> OpenFiles()
    {
        var files = new List<string>();
        foreach (var fd in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                files.Add(new FileInfo(fd).LinkTarget ?? fd);
            }
            catch (IOException)
            {
            }
        }

        return files;
    }

    private static long ResidentBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), System.Globalization.CultureInfo.InvariantCulture) * 1024;
            }
        }

        throw new InvalidOperationException("No VmRSS in /proc/self/status.");
    }
}

/// <summary>The commit writer's failure path, driven by an engine that fails on demand.</summary>
public sealed class CommitFailureTests
{
    private sealed class FaultyEngine : Engine.IKvEngine
    {
        private readonly Engine.MemoryEngine _inner = new();

        public volatile bool Failing;

        public volatile bool FailingSync;

        public Engine.IKvBatch CreateBatch() => _inner.CreateBatch();

        public void SyncWal()
        {
            if (FailingSync)
            {
                throw new IOException("fsync: input/output error");
            }
        }

        public void Commit(Engine.IKvBatch batch, bool sync)
        {
            if (Failing)
            {
                throw new IOException("disk on fire");
            }

            _inner.Commit(batch, sync);
        }

        public byte[]? Get(Engine.Cf cf, ReadOnlySpan<byte> key) => _inner.Get(cf, key);

        public Engine.IKvCursor OpenCursor(Engine.Cf cf, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper) => _inner.OpenCursor(cf, lower, upper);

        public void Dispose() => _inner.Dispose();
    }

    [Fact]
    public async Task A_failed_commit_fails_every_caller_and_leaves_no_gap()
    {
        var engine = new FaultyEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan });
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(1, "ok") with { InboxRecipients = ["bob"] })).Seq);

        engine.Failing = true;
        var doomed = Enumerable.Range(0, 20).Select(i => store.AppendAsync(Messages.To(1, "lost" + i, clientMsgId: 100) with { InboxRecipients = ["bob"] })).ToList();
        foreach (var task in doomed)
        {
            var error = await Assert.ThrowsAsync<StorageException>(() => task);
            Assert.Contains("disk on fire", error.Message, StringComparison.Ordinal);
            Assert.Equal(StorageFailure.Io, error.Failure);
        }

        engine.Failing = false;
        var next = await store.AppendAsync(Messages.To(1, "after", clientMsgId: 100) with { InboxRecipients = ["bob"] });

        Assert.Equal(2UL, next.Seq);
        Assert.False(next.IsDuplicate);
        Assert.Equal([2UL], next.InboxSeqs);
        Assert.Equal(["ok", "after"], store.ReadRange(1, 1, 10).Select(m => Encoding.UTF8.GetString(m.Body.Span)));
    }

    [Fact]
    public async Task A_failed_wal_sync_fails_its_callers_and_every_later_write()
    {
        var engine = new FaultyEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan, WriteInlineWhenIdle = false });
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(1, "ok"))).Seq);

        engine.FailingSync = true;
        var error = await Assert.ThrowsAsync<StorageException>(() => store.AppendAsync(Messages.To(1, "unsure")));
        Assert.Contains("fsync of the WAL failed", error.Message, StringComparison.Ordinal);
        Assert.Contains("input/output error", error.Message, StringComparison.Ordinal);

        // A later fsync could succeed without the failed one's data being on disk: nothing more is
        // acknowledged until the store is reopened (and recovers from what the disk really has).
        engine.FailingSync = false;
        var later = await Assert.ThrowsAsync<StorageException>(() => store.AppendAsync(Messages.To(1, "later")));
        Assert.Contains("until it is reopened", later.Message, StringComparison.Ordinal);
        Assert.Equal(StorageFailure.Io, later.Failure);
        await Assert.ThrowsAsync<StorageException>(() => store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 1));
    }
}

/// <summary>With the WAL fsynced on its own thread, a batch is in the engine before it is durable:
/// readers must not see it, and no caller may complete, until its fsync returns.</summary>
public sealed class OverlappedWalSyncTests
{
    /// <summary>An engine whose WAL sync blocks until the test opens the gate.</summary>
    private sealed class GatedSyncEngine : Engine.IKvEngine
    {
        private readonly Engine.MemoryEngine _inner = new();

        public ManualResetEventSlim Gate { get; } = new(true);

        public SemaphoreSlim SyncEntered { get; } = new(0);

        public Engine.IKvBatch CreateBatch() => _inner.CreateBatch();

        public SemaphoreSlim Committed { get; } = new(0);

        public bool LastCommitSynced { get; private set; }

        public void Commit(Engine.IKvBatch batch, bool sync)
        {
            _inner.Commit(batch, sync);
            LastCommitSynced = sync;
            Committed.Release();
        }

        public void SyncWal()
        {
            SyncEntered.Release();
            Assert.True(Gate.Wait(TimeSpan.FromSeconds(30)), "the test never opened the gate");
        }

        public byte[]? Get(Engine.Cf cf, ReadOnlySpan<byte> key) => _inner.Get(cf, key);

        public Engine.IKvCursor OpenCursor(Engine.Cf cf, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper) => _inner.OpenCursor(cf, lower, upper);

        public void Dispose() => _inner.Dispose();
    }

    [Fact]
    public async Task Reads_hide_a_message_until_its_wal_sync_returns()
    {
        var engine = new GatedSyncEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan, WriteInlineWhenIdle = false });
        await store.AppendAsync(Messages.To(1, "first") with { InboxRecipients = ["bob"] });
        while (engine.SyncEntered.CurrentCount > 0)
        {
            await engine.SyncEntered.WaitAsync();
        }

        engine.Gate.Reset();
        var second = store.AppendAsync(Messages.To(1, "second") with { InboxRecipients = ["bob"] });
        Assert.True(await engine.SyncEntered.WaitAsync(TimeSpan.FromSeconds(30)));

        // The batch is in the engine (the syncer only starts after the write)...
        using (var raw = engine.OpenCursor(Engine.Cf.Messages, [], []))
        {
            var count = 0;
            for (raw.SeekToFirst(); raw.Valid; raw.Next())
            {
                count++;
            }

            Assert.Equal(2, count);
        }

        // ...but neither its caller nor any reader sees it yet.
        Assert.False(second.IsCompleted);
        Assert.Equal(["first"], store.ReadRange(1, 1, 10).Select(m => Encoding.UTF8.GetString(m.Body.Span)));
        Assert.Empty(store.ReadRange(1, 2, 10));
        Assert.Equal(["first"], store.ReadBefore(1, ulong.MaxValue, 10).Select(m => Encoding.UTF8.GetString(m.Body.Span)));
        Assert.Equal(["first"], store.ReadBefore(1, 3, 10).Select(m => Encoding.UTF8.GetString(m.Body.Span)));
        Assert.Equal(1UL, store.GetLastSeq(1));
        Assert.Equal([1UL], store.ReadInbox("bob", 0, 10).Select(e => e.InboxSeq));
        Assert.Equal(1UL, store.GetLastInboxSeq("bob"));

        engine.Gate.Set();
        Assert.Equal(2UL, (await second).Seq);
        Assert.Equal(["first", "second"], store.ReadRange(1, 1, 10).Select(m => Encoding.UTF8.GetString(m.Body.Span)));
        Assert.Equal(2UL, store.GetLastSeq(1));
        Assert.Equal([1UL, 2UL], store.ReadInbox("bob", 0, 10).Select(e => e.InboxSeq));
        Assert.Equal(2UL, store.GetLastInboxSeq("bob"));
    }

    [Fact]
    public async Task A_stalled_fsync_stops_the_committer_at_the_queue_bound()
    {
        var engine = new GatedSyncEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan, WriteInlineWhenIdle = false, QueueCapacity = 2, MaxBatchCount = 1 });
        Assert.True(await engine.Committed.WaitAsync(TimeSpan.FromSeconds(30))); // the format stamp of a new store
        engine.Gate.Reset();
        var first = store.AppendAsync(Messages.To(1, "a"));
        Assert.True(await engine.SyncEntered.WaitAsync(TimeSpan.FromSeconds(30)));
        var rest = Enumerable.Range(0, 6).Select(i => store.AppendAsync(Messages.To(1, "b" + i))).ToList();

        // The stalled fsync holds batch 1; with batch 2 the bound (2 requests) is full and the committer
        // waits before writing a 3rd, so the engine sees exactly 2 commits until the disk answers.
        // (The negative probe can only pass wrongly on a slow machine, never fail a correct store.)
        for (var i = 0; i < 2; i++)
        {
            Assert.True(await engine.Committed.WaitAsync(TimeSpan.FromSeconds(30)));
        }

        Assert.False(await engine.Committed.WaitAsync(TimeSpan.FromMilliseconds(200)));
        engine.Gate.Set();
        Assert.Equal(1UL, (await first).Seq);
        Assert.Equal([2UL, 3UL, 4UL, 5UL, 6UL, 7UL], (await Task.WhenAll(rest)).Select(r => r.Seq));
    }

    [Fact]
    public async Task A_duplicate_is_not_answered_before_the_original_is_durable()
    {
        var engine = new GatedSyncEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan, WriteInlineWhenIdle = false });
        engine.Gate.Reset();
        var original = store.AppendAsync(Messages.To(1, "hello", clientMsgId: 7));
        Assert.True(await engine.SyncEntered.WaitAsync(TimeSpan.FromSeconds(30)));

        // The retry lands in a later batch that writes nothing; its answer rests on the original.
        var retry = store.AppendAsync(Messages.To(1, "hello", clientMsgId: 7));
        var cursor = store.AdvanceCursorAsync("bob", "phone", CursorStream.Inbox, 1);
        Assert.True(await engine.Committed.WaitAsync(TimeSpan.FromSeconds(30))); // the original
        Assert.True(await engine.Committed.WaitAsync(TimeSpan.FromSeconds(30))); // the cursor: the retry's batch went before it
        Assert.False(original.IsCompleted);
        Assert.False(retry.IsCompleted);

        engine.Gate.Set();
        var (first, again) = (await original, await retry);
        await cursor;
        Assert.Equal(first.Seq, again.Seq);
        Assert.True(again.IsDuplicate);
    }

    [Fact]
    public async Task An_idle_store_fsyncs_inside_the_write_without_the_syncer()
    {
        var engine = new GatedSyncEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan });
        engine.Gate.Reset(); // a syncer fsync would hang the append
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(1, "m"))).Seq);
        Assert.True(engine.LastCommitSynced);
        Assert.Equal(0, engine.SyncEntered.CurrentCount);
        Assert.Equal(1UL, store.GetLastSeq(1));
    }

    [Fact]
    public async Task Without_overlap_the_fsync_is_inside_the_write()
    {
        var engine = new GatedSyncEngine();
        using var store = new InMemoryChatStore(engine, new StorageOptions { SweepInterval = Timeout.InfiniteTimeSpan, OverlapWalSync = false, WriteInlineWhenIdle = false });
        engine.Gate.Reset();
        Assert.Equal(1UL, (await store.AppendAsync(Messages.To(1, "m"))).Seq);
        Assert.Equal(0, engine.SyncEntered.CurrentCount);
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessWideCollection
{
    public const string Name = "Process-wide measurements";
}
