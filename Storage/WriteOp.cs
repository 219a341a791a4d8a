namespace ChatBroker.Storage;

internal readonly record struct IdempotencyKey(string UserId, string DeviceId, ulong ClientMsgId);

/// <summary>A unit of work for the commit writer (the concrete ops are in WriteOps.cs).</summary>
internal abstract class WriteOp
{
    /// <summary>Non-null for ops that read state an earlier op of the same batch may have written.</summary>
    public virtual string? ConflictKey => null;

    /// <summary>As <see cref="ConflictKey"/>, for an op that reads several such records.</summary>
    public virtual IReadOnlyList<string>? ConflictKeys => null;

    public virtual int EstimatedBytes => 64;

    /// <summary>False for an op that writes what another node sent (a replica's apply, a range import): it is
    /// answered once durable here, without waiting for this node's replicas (CommitWriter.Replication.cs).</summary>
    public virtual bool WaitsForReplicas => true;

    /// <summary>Runs in the builder role (the builder thread, or a caller holding the builder lock): reads
    /// what it needs and adds its writes to the batch. Throwing before writing anything fails this op alone.</summary>
    public abstract void Apply(CommitWriter writer);

    public abstract void Complete();

    public abstract void Fail(Exception error);
}

internal abstract class WriteOp<T> : WriteOp
{
    // Continuations run synchronously, but only ever where WriteCompletion runs them: on a pool work item,
    // on the caller's own thread before anyone awaits, or in the AppendCompletionScope of a caller that
    // wrote the op for another (an op handed over), never under the writer's locks.
    private readonly TaskCompletionSource<T> _completion = new();

    protected T Result { get; set; } = default!;

    public Task<T> Task => _completion.Task;

    public override void Complete() => _completion.TrySetResult(Result);

    public override void Fail(Exception error) => _completion.TrySetException(error);
}
