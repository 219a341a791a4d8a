namespace ChatBroker.Storage;

/// <summary>
/// Where the commit writer's ops complete, and so where their callers' continuations run (they run
/// synchronously: see <see cref="WriteOp{T}"/>). Three places, never under one of the writer's locks
/// and never on the writer's own threads:
/// <list type="bullet">
/// <item>a thread-pool work item per batch (<see cref="OnPool(List{WriteOp}, Exception?)"/>): the builder,
/// committer and syncer threads hand every batch there;</item>
/// <item>the caller's own thread (<see cref="Now"/>), for a caller that wrote its own op: nobody awaits
/// the task yet, so completing it runs no continuation;</item>
/// <item>the <see cref="AppendCompletionScope"/> of a caller that wrote other callers' ops along with its
/// own (handed over): it completes them when it holds no lock.</item>
/// </list>
/// </summary>
internal static class WriteCompletion
{
    /// <summary>Completes (or fails) the ops on one thread-pool work item. Their continuations run
    /// inline there, one after another, instead of as one work item each.</summary>
    public static void OnPool(List<WriteOp> ops, Exception? failure, IWriteCompletionScope? scope = null)
    {
        if (ops.Count > 0)
        {
            OnPool(ops.ToArray(), failure, scope);
        }
    }

    /// <inheritdoc cref="OnPool(List{WriteOp}, Exception?)"/>
    public static void OnPool(WriteOp[] batch, Exception? failure) => OnPool(batch, failure, null);

    /// <summary>
    /// As <see cref="OnPool(WriteOp[], Exception?)"/>, with the ops completed inside <paramref name="scope"/>
    /// (<see cref="StorageOptions.CompletionScope"/>): what their continuations hand to the scope (the broker: the
    /// sends of the replies and deliveries they write) is done once, on this work item, after the last op.
    /// </summary>
    public static void OnPool(WriteOp[] batch, Exception? failure, IWriteCompletionScope? scope)
    {
        if (scope is null)
        {
            // No scope: the smaller state (a boxed pair, not a triple: 8 B less per batch, AllocationBudgetTests).
            ThreadPool.UnsafeQueueUserWorkItem(
                static state =>
                {
                    var (batch, failure) = state;
                    foreach (var op in batch)
                    {
                        Now(op, failure);
                    }
                },
                (batch, failure),
                preferLocal: false);
            return;
        }

        ThreadPool.UnsafeQueueUserWorkItem(
            static state =>
            {
                var (batch, failure, scope) = state;
                var entered = scope.Enter();
                try
                {
                    foreach (var op in batch)
                    {
                        Now(op, failure);
                    }
                }
                finally
                {
                    scope.Exit(entered);
                }
            },
            (batch, failure, scope),
            preferLocal: false);
    }

    /// <summary>Completes (or fails) one op on a thread-pool work item.</summary>
    public static void OnPool(WriteOp op, Exception? failure) => OnPool(new[] { op }, failure);

    /// <summary>Completes (or fails) the op on this thread, now.</summary>
    public static void Now(WriteOp op, Exception? failure)
    {
        if (failure is null)
        {
            op.Complete();
        }
        else
        {
            op.Fail(failure);
        }
    }
}

/// <summary>
/// Brackets the completion of one batch of ops on a pool work item (<see cref="StorageOptions.CompletionScope"/>).
/// The broker opens a scope in which the replies and deliveries that the ops' continuations write are collected
/// and sent once at <see cref="Exit"/>, on the same thread, instead of as one thread-pool work item (and wake-up)
/// per connection: after an fsync in <see cref="Durability.Sync"/>, a SENT and a DELIVER per message.
/// </summary>
public interface IWriteCompletionScope
{
    /// <summary>Before the first op of a batch completes; the result is passed to <see cref="Exit"/>.</summary>
    object? Enter();

    /// <summary>After the last op of the batch completed (also when one threw). Never under a lock of the store's.</summary>
    void Exit(object? entered);
}
