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
    public static void OnPool(List<WriteOp> ops, Exception? failure)
    {
        if (ops.Count > 0)
        {
            OnPool(ops.ToArray(), failure);
        }
    }

    /// <inheritdoc cref="OnPool(List{WriteOp}, Exception?)"/>
    public static void OnPool(WriteOp[] batch, Exception? failure)
    {
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
