namespace ChatBroker.Storage;

/// <summary>
/// Where ops that a caller wrote for other callers complete: on the thread that owns this scope, at a point
/// where it holds no locks, instead of on a thread-pool work item. The caller creates one (the broker: one
/// per session, owned by its read loop) and passes it to <see cref="IMessageLog.AppendAsync"/>,
/// <see cref="ICursorStore.AdvanceCursorAsync"/> and <see cref="ICursorStore.AdvanceCursorsAsync"/>.
/// <para>
/// With <see cref="Durability.Async"/> a caller that finds the writer idle writes its own op on its own
/// thread (no thread wakes). A second caller that arrives while it writes would otherwise queue for the
/// builder thread, and its completion would go to the pool: two thread wake-ups for one op. Instead, when
/// the writing caller passed a scope it has entered on this thread, the second caller hands its op to it:
/// the writing caller writes that op too before it lets go of the writer, and completes it when it calls
/// <see cref="CompletePending"/> or <see cref="Exit"/>. Only then: the writing caller may hold locks of its
/// own while it appends (a group's gate), and the second caller's continuation must not run under them.
/// </para>
/// <para>
/// The read loop enters its scope around the synchronous handling of one receive (<see cref="Enter"/> …
/// <see cref="Exit"/>) and completes what it was handed between two frames too. A scope counts only on the
/// thread that entered it and only until it exits: a store call that resumes on another thread (after an
/// await) passes the same scope, finds it not held there, and takes nobody's ops, as a call without a scope.
/// Continuations that run when the scope completes its ops run inside it, so ops handed over meanwhile are
/// completed by the same loop. Used by one read loop at a time: not thread-safe beyond that.
/// </para>
/// </summary>
public sealed class AppendCompletionScope
{
    private int _ownerThread; // the managed thread id that entered the scope, 0 when not entered
    private bool _completing;
    private List<(WriteOp Op, Exception? Failure)>? _pending;
    private List<(WriteOp Op, Exception? Failure)>? _spare;

    /// <summary>True on the thread that entered the scope, until it exits: ops may be handed to it.</summary>
    internal bool IsHeldHere => _ownerThread == Environment.CurrentManagedThreadId;

    /// <summary>Starts the scope on this thread; false when it is entered already (then do not <see cref="Exit"/>).</summary>
    public bool Enter()
    {
        if (_ownerThread != 0)
        {
            return false;
        }

        _ownerThread = Environment.CurrentManagedThreadId;
        return true;
    }

    /// <summary>Completes the ops handed to this scope, then ends it. Never call it under a lock.</summary>
    public void Exit()
    {
        Drain();
        _ownerThread = 0;
    }

    /// <summary>
    /// Completes the ops handed to this scope so far, so that their callers need not wait for the scope's
    /// end (the read loop calls it between two frames). Never call it under a lock. Does nothing on another
    /// thread than the one that entered the scope, and returns at once when called from a continuation that
    /// this very scope runs: the loop picks up what it adds.
    /// </summary>
    public void CompletePending()
    {
        if (IsHeldHere)
        {
            Drain();
        }
    }

    private void Drain()
    {
        if (_pending is not { Count: > 0 } || _completing)
        {
            return;
        }

        _completing = true;
        try
        {
            // Continuations run here may write and take more ops: they go to a fresh list, drained next.
            while (_pending is { Count: > 0 } batch)
            {
                _pending = _spare ?? [];
                _spare = null;
                foreach (var (op, failure) in batch)
                {
                    WriteCompletion.Now(op, failure);
                }

                batch.Clear();
                _spare = batch; // two lists per scope, reused: nothing allocated per message
            }
        }
        finally
        {
            _completing = false;
        }
    }

    /// <summary>Completes <paramref name="op"/> at this scope's next <see cref="CompletePending"/> or
    /// <see cref="Exit"/>; called by the writer on the owning thread only (<see cref="IsHeldHere"/>).</summary>
    internal void Defer(WriteOp op, Exception? failure) => (_pending ??= []).Add((op, failure));
}
