namespace ChatBroker.Storage;

/// <summary>
/// Lets a thread that wrote other callers' ops complete them itself, at a point where it holds no locks,
/// instead of handing them to a thread-pool work item.
/// <para>
/// With <see cref="Durability.Async"/> a caller that finds the writer idle writes its own op on its own
/// thread (no thread wakes). A second caller that arrives while it writes would otherwise queue for the
/// builder thread, and its completion would go to the pool: two thread wake-ups for one op. Instead, when
/// the writing caller is inside a scope, the second caller hands its op to it: the writing caller writes
/// that op too before it lets go of the writer, and completes it when its scope ends. Only then: the
/// writing caller may hold locks of its own while it appends (a group's gate), and the second caller's
/// continuation must not run under them.
/// </para>
/// <para>
/// The broker's read loop enters a scope around the handling of one receive, and completes what it was handed
/// between two frames too (<see cref="CompletePending"/>). Scopes do not nest: an inner
/// <see cref="Enter"/> returns false, and its caller does not end the outer scope. Continuations that run
/// when a scope ends run inside it, so ops handed over meanwhile are completed by the same loop.
/// </para>
/// </summary>
public static class AppendCompletionScope
{
    [ThreadStatic]
    private static bool t_active;
    [ThreadStatic]
    private static List<(WriteOp Op, Exception? Failure)>? t_pending;
    [ThreadStatic]
    private static List<(WriteOp Op, Exception? Failure)>? t_spare;
    [ThreadStatic]
    private static bool t_completing;

    /// <summary>True on a thread inside a scope: ops handed to it are completed before the scope ends.</summary>
    internal static bool IsActive => t_active;

    /// <summary>Starts a scope on this thread; false when one is active already (then do not <see cref="Exit"/>).</summary>
    public static bool Enter()
    {
        if (t_active)
        {
            return false;
        }

        t_active = true;
        return true;
    }

    /// <summary>Completes the ops handed to this thread, then ends the scope. Never call it under a lock.</summary>
    public static void Exit()
    {
        CompletePending();
        t_active = false;
    }

    /// <summary>
    /// Completes the ops handed to this thread so far, inside the scope, so that their callers need not wait
    /// for the scope's end (the read loop calls it between two frames). Never call it under a lock. A call
    /// from a continuation that this very loop runs returns at once: the loop picks up what it adds.
    /// </summary>
    public static void CompletePending()
    {
        if (t_pending is not { Count: > 0 } || t_completing)
        {
            return;
        }

        t_completing = true;
        try
        {
            // Continuations run here may write and take more ops: they go to a fresh list, drained next.
            while (t_pending is { Count: > 0 } batch)
            {
                t_pending = t_spare ?? [];
                t_spare = null;
                foreach (var (op, failure) in batch)
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

                batch.Clear();
                t_spare = batch; // two lists per thread, reused: nothing allocated per message
            }
        }
        finally
        {
            t_completing = false;
        }
    }

    /// <summary>Completes <paramref name="op"/> at this thread's next <see cref="CompletePending"/> or <see cref="Exit"/> (the scope must be active).</summary>
    internal static void Defer(WriteOp op, Exception? failure) => (t_pending ??= []).Add((op, failure));
}
