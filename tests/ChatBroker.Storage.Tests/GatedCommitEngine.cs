using System.Collections.Concurrent;

namespace ChatBroker.Storage.Tests;

/// <summary>An engine that records which thread wrote each batch, and can hold the next write until
/// the test lets it go.</summary>
internal sealed class GatedCommitEngine : Engine.IKvEngine
{
    private readonly Engine.MemoryEngine _inner = new();
    private readonly SemaphoreSlim _permits = new(0);
    private volatile bool _armed;

    public SemaphoreSlim HeldCommitEntered { get; } = new(0);

    public ConcurrentQueue<int> CommitThreads { get; } = new();

    /// <summary>The next write throws (once).</summary>
    public volatile bool FailNext;

    /// <summary>The next write waits until <see cref="LetHeldCommitGo"/>.</summary>
    public void HoldNextCommit() => _armed = true;

    public void LetHeldCommitGo() => _permits.Release();

    public Engine.IKvBatch CreateBatch() => _inner.CreateBatch();

    public void Commit(Engine.IKvBatch batch, bool sync)
    {
        if (_armed)
        {
            _armed = false;
            HeldCommitEntered.Release();
            Assert.True(_permits.Wait(TimeSpan.FromSeconds(30)), "the test never let the write go");
        }

        if (FailNext)
        {
            FailNext = false;
            throw new IOException("disk on fire");
        }

        CommitThreads.Enqueue(Environment.CurrentManagedThreadId);
        _inner.Commit(batch, sync);
    }

    public void SyncWal()
    {
    }

    public byte[]? Get(Engine.Cf cf, ReadOnlySpan<byte> key) => _inner.Get(cf, key);

    public Engine.IKvCursor OpenCursor(Engine.Cf cf, ReadOnlySpan<byte> lower, ReadOnlySpan<byte> upper) => _inner.OpenCursor(cf, lower, upper);

    public void Dispose() => _inner.Dispose();
}
