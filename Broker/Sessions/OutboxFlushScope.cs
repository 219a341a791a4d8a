namespace ChatBroker.Broker.Sessions;

/// <summary>
/// The sends a read loop makes itself: while it handles the frames of one receive, every outbox that starts
/// sending on its thread — its own replies, DELIVERs the core fans out to other devices, the replies of other
/// sessions whose appends this thread completed — is added here instead of queuing a thread-pool work item,
/// and <see cref="SendAll"/> sends them on this thread once the handler has returned or suspended. At low load
/// each work item wakes an idle pool thread (a futex wake and a context switch, tens of microseconds on a
/// busy virtual machine) to make one <c>send</c>, and a SEND needs two of them (the SENT and the DELIVER).
/// The frames written meanwhile still leave in one send per outbox, as they would from the work item.
/// <para>
/// Owned by the read loop: <see cref="DeviceSession"/> opens one around the synchronous part of handling a
/// receive (<see cref="Open"/>), passes it along, and sends and closes it (<see cref="SendAll"/>) as soon as
/// the handler returns, completed or suspended. Whatever runs later on another thread (a continuation after
/// a synced append) finds no open scope and queues as before. The outboxes reach the scope through the
/// thread (<see cref="TryDefer"/>), because most of them are written by code the read loop does not call
/// with arguments of its own: the core's fan-out to other devices, and continuations of other sessions'
/// appends that this thread completes. One instance per thread is reused: nothing is allocated per receive
/// and an idle session holds none.
/// </para>
/// <para>
/// Bounded: only the first <see cref="MaxDeferred"/> outboxes of a scope are deferred; beyond that (a group
/// message fanned out to many members) they go to the pool as before, so a large fan-out is sent by every
/// core, not serially by this one. Scopes do not nest: <see cref="Open"/> inside an open one returns null.
/// </para>
/// </summary>
internal sealed class OutboxFlushScope
{
    /// <summary>Most outboxes one read loop's scope sends itself.</summary>
    public const int MaxDeferred = 8;

    /// <summary>Most outboxes the scope of one completed storage batch sends itself (<see cref="CompletionBatchScope"/>):
    /// a synced batch at 10,000 messages/s holds ~10 messages, each a SENT and a DELIVER to two connections.</summary>
    public const int MaxDeferredForCompletions = 64;

    // The scope open on this thread, if any: how an outbox that starts sending finds it.
    [ThreadStatic]
    private static OutboxFlushScope? t_open;
    // This thread's instance, kept between scopes (a read loop's receive runs on any pool thread).
    [ThreadStatic]
    private static OutboxFlushScope? t_reused;

    private readonly SessionOutbox?[] _deferred = new SessionOutbox?[MaxDeferredForCompletions];
    private int _count;
    private int _limit = MaxDeferred;

    private OutboxFlushScope()
    {
    }

    /// <summary>Opens this thread's scope for a read loop; null when one is open already (the caller then sends nothing).</summary>
    public static OutboxFlushScope? Open() => Open(MaxDeferred);

    /// <summary>As <see cref="Open()"/>, deferring at most <paramref name="limit"/> outboxes (≤ <see cref="MaxDeferredForCompletions"/>).</summary>
    public static OutboxFlushScope? Open(int limit)
    {
        if (t_open is not null)
        {
            return null;
        }

        var scope = t_reused ??= new OutboxFlushScope();
        scope._limit = Math.Min(limit, MaxDeferredForCompletions);
        t_open = scope;
        return scope;
    }

    /// <summary>
    /// Called by an outbox that starts sending (under its lock): true when the scope open on this thread takes
    /// it, to send it in <see cref="SendAll"/>; false when there is none or it is full (then queue it).
    /// </summary>
    public static bool TryDefer(SessionOutbox outbox)
    {
        var scope = t_open;
        if (scope is null || scope._count == scope._limit)
        {
            return false;
        }

        scope._deferred[scope._count++] = outbox;
        return true;
    }

    /// <summary>Closes the scope and sends every outbox deferred to it, on this thread (never under a lock).</summary>
    public void SendAll()
    {
        t_open = null;
        var count = _count;
        _count = 0;
        for (var i = 0; i < count; i++)
        {
            var outbox = _deferred[i]!;
            _deferred[i] = null;
            outbox.SendDeferred();
        }
    }
}

/// <summary>
/// The store's completion scope (<see cref="Storage.IWriteCompletionScope"/>): the ops of a batch the store completes
/// on a pool work item (after the WAL's fsync with durability "sync", or after the committer thread wrote it) run
/// their continuations inside an <see cref="OutboxFlushScope"/>, so the SENTs and DELIVERs they write leave from
/// that work item once the batch is done, not as one more pool work item (a thread wake-up) per connection.
/// Frames to one connection from several messages of the batch leave in one send.
/// </summary>
internal sealed class CompletionBatchScope : Storage.IWriteCompletionScope
{
    public static readonly CompletionBatchScope Instance = new();

    public object? Enter() => OutboxFlushScope.Open(OutboxFlushScope.MaxDeferredForCompletions);

    public void Exit(object? entered) => (entered as OutboxFlushScope)?.SendAll();
}
