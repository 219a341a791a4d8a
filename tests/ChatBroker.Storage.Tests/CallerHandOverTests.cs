using System.Collections.Concurrent;

namespace ChatBroker.Storage.Tests;

/// <summary>
/// With async durability a caller that finds the writer idle writes its own op; an append that arrives while
/// it writes is handed to it when it is inside an <see cref="AppendCompletionScope"/> (written by that caller,
/// completed when its scope ends), and queued for the builder thread otherwise.
/// </summary>
public sealed class CallerHandOverTests
{
    private sealed record Outcome(Task<AppendResult> Own, bool HandedCompletedBeforeScopeEnded, int WriterThread);

    [Fact]
    public async Task A_scoped_caller_completes_handed_appends_when_it_asks_without_ending_its_scope()
    {
        var (engine, store) = Open();
        using var _ = store;

        var (writer, second, continuationThread) = await RaceAsync(engine, store, writerInScope: true, completePendingFirst: true);

        Assert.True(writer.HandedCompletedBeforeScopeEnded);
        Assert.Equal(2UL, (await second).Seq);
        Assert.Equal(writer.WriterThread, await continuationThread);
    }

    /// <summary>Starts a thread that appends "first" (inside a scope when asked), holds its write at the gate
    /// while the test appends "second", and returns what it saw.</summary>
    private static async Task<(Outcome Writer, Task<AppendResult> Second, Task<int> SecondContinuationThread)> RaceAsync(
        GatedCommitEngine engine, InMemoryChatStore store, bool writerInScope, bool completePendingFirst = false, AppendCompletionScope? enteredElsewhere = null)
    {
        Task<AppendResult>? second = null;
        var secondIssued = new ManualResetEventSlim();
        var outcome = new TaskCompletionSource<Outcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        var writer = new Thread(() =>
        {
            try
            {
                var completions = enteredElsewhere ?? (writerInScope ? new AppendCompletionScope() : null);
                var scoped = enteredElsewhere is null && completions?.Enter() == true;
                var own = store.AppendAsync(Messages.To(1, "first"), completions); // written here, held at the gate meanwhile
                Assert.True(secondIssued.Wait(TimeSpan.FromSeconds(30)));
                if (completePendingFirst)
                {
                    completions?.CompletePending(); // as the read loop does between two frames
                }

                var handedDone = Volatile.Read(ref second)!.IsCompleted;
                if (scoped)
                {
                    completions!.Exit();
                }

                outcome.SetResult(new Outcome(own, handedDone, Environment.CurrentManagedThreadId));
            }
            catch (Exception ex)
            {
                outcome.SetException(ex);
            }
        }) { IsBackground = true };

        engine.HoldNextCommit();
        writer.Start();
        Assert.True(await engine.HeldCommitEntered.WaitAsync(TimeSpan.FromSeconds(30)));
        Volatile.Write(ref second, store.AppendAsync(Messages.To(1, "second")));
        Assert.False(second!.IsCompleted); // the writer is still inside its write
        var continuationThread = second.ContinueWith(
            _ => Environment.CurrentManagedThreadId, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        secondIssued.Set();
        engine.LetHeldCommitGo();
        return (await outcome.Task, second, continuationThread);
    }

    private static (GatedCommitEngine, InMemoryChatStore) Open()
    {
        var engine = new GatedCommitEngine();
        var store = new InMemoryChatStore(engine, new StorageOptions
        {
            SweepInterval = Timeout.InfiniteTimeSpan,
            Durability = Durability.Async,
            CallerWritesAfterIdle = TimeSpan.Zero,
        });
        engine.CommitThreads.Clear(); // the format stamp of a new store, written while it opened
        return (engine, store);
    }

    [Fact]
    public async Task An_append_arriving_while_a_scoped_caller_writes_is_written_by_it_and_completed_when_its_scope_ends()
    {
        var (engine, store) = Open();
        using var _ = store;

        var (writer, second, continuationThread) = await RaceAsync(engine, store, writerInScope: true);

        Assert.Equal(1UL, (await writer.Own).Seq);
        Assert.Equal(2UL, (await second).Seq);
        Assert.False(writer.HandedCompletedBeforeScopeEnded); // not under the writer's locks: at its scope's end
        Assert.Equal(writer.WriterThread, await continuationThread);
        Assert.Equal([writer.WriterThread, writer.WriterThread], engine.CommitThreads); // no builder thread woke
        Assert.Equal(["first", "second"], store.ReadRange(1, 1, 10).Select(m => System.Text.Encoding.UTF8.GetString(m.Body.Span)));
    }

    [Fact]
    public async Task Without_a_scope_an_append_arriving_while_a_caller_writes_goes_to_the_builder_thread()
    {
        var (engine, store) = Open();
        using var _ = store;

        var (writer, second, continuationThread) = await RaceAsync(engine, store, writerInScope: false);

        Assert.Equal(1UL, (await writer.Own).Seq);
        Assert.Equal(2UL, (await second).Seq);
        Assert.NotEqual(writer.WriterThread, await continuationThread);
        var threads = engine.CommitThreads.ToArray();
        Assert.Equal(2, threads.Length);
        Assert.Equal(writer.WriterThread, threads[0]);
        Assert.NotEqual(writer.WriterThread, threads[1]);
    }

    [Fact]
    public async Task A_scope_entered_on_another_thread_takes_no_ops_for_the_writing_caller()
    {
        var (engine, store) = Open();
        using var _ = store;
        var elsewhere = new AppendCompletionScope();
        Assert.True(elsewhere.Enter()); // held by the test's thread, passed by the writer's

        var (writer, second, continuationThread) = await RaceAsync(engine, store, writerInScope: false, enteredElsewhere: elsewhere);
        elsewhere.Exit();

        Assert.Equal(1UL, (await writer.Own).Seq);
        Assert.Equal(2UL, (await second).Seq);
        Assert.NotEqual(writer.WriterThread, await continuationThread); // written by the builder thread, as without a scope
        Assert.Equal(2, engine.CommitThreads.Count);
        Assert.NotEqual(writer.WriterThread, engine.CommitThreads.ToArray()[1]);
    }

    [Fact]
    public async Task A_handed_append_whose_write_fails_fails_when_the_scope_ends_and_leaves_no_gap()
    {
        var (engine, store) = Open();
        using var _ = store;

        // The writer's own write and the handed one are separate batches: fail only the second.
        var writerDone = 0;
        engine.HoldNextCommit();
        Task<AppendResult>? own = null;
        Task<AppendResult>? handed = null;
        var handedIssued = new ManualResetEventSlim();
        var failedBeforeScopeEnded = true;
        var writer = new Thread(() =>
        {
            var completions = new AppendCompletionScope();
            completions.Enter();
            own = store.AppendAsync(Messages.To(1, "first"), completions);
            handedIssued.Wait(TimeSpan.FromSeconds(30));
            failedBeforeScopeEnded = Volatile.Read(ref handed)!.IsCompleted;
            completions.Exit();
            Volatile.Write(ref writerDone, 1);
        }) { IsBackground = true };
        writer.Start();
        Assert.True(await engine.HeldCommitEntered.WaitAsync(TimeSpan.FromSeconds(30)));
        Volatile.Write(ref handed, store.AppendAsync(Messages.To(1, "second")));
        handedIssued.Set();

        // Let the writer's own batch through, then fail the next one (the handed op's).
        engine.HoldNextCommit();
        engine.LetHeldCommitGo();
        Assert.True(await engine.HeldCommitEntered.WaitAsync(TimeSpan.FromSeconds(30)));
        engine.FailNext = true;
        engine.LetHeldCommitGo();
        writer.Join();

        Assert.Equal(1, writerDone);
        Assert.False(failedBeforeScopeEnded);
        Assert.Equal(1UL, (await own!).Seq);
        await Assert.ThrowsAsync<StorageException>(() => handed!);

        Assert.Equal(2UL, (await store.AppendAsync(Messages.To(1, "third"))).Seq); // seq 2 was rolled back
        Assert.Equal(["first", "third"], store.ReadRange(1, 1, 10).Select(m => System.Text.Encoding.UTF8.GetString(m.Body.Span)));
    }
}
