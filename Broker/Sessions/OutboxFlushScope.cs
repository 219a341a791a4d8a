namespace ChatBroker.Broker.Sessions;

/// <summary>
/// Lets the thread that handles one receive send the frames it wrote itself, once it has handled all of
/// them, instead of queuing a thread-pool work item per outbox. At low load each such work item wakes an idle
/// pool thread (a futex wake and a context switch, tens of microseconds on a busy virtual machine) to make
/// one <c>send</c>, and a SEND needs two of them (the SENT and the DELIVER). Inside a scope, an outbox that
/// starts sending is deferred to the scope's end on this thread; the frames written meanwhile still leave in
/// one send per outbox, as they would from the work item.
/// <para>
/// Bounded: only the first <see cref="MaxDeferred"/> outboxes of a scope are deferred; beyond that (a group
/// message fanned out to many members) they go to the pool as before, so a large fan-out is sent by every
/// core, not serially by this one.
/// </para>
/// <para>
/// A scope covers only synchronous work on its thread: the read loop enters it, calls the frame handler, and
/// ends it as soon as the handler returns, completed or suspended. Whatever runs later on another thread (a
/// continuation after a synced append) finds no scope and queues as before. Scopes do not nest: an inner
/// <see cref="Enter"/> returns false and its caller does not end the outer scope.
/// </para>
/// </summary>
internal static class OutboxFlushScope
{
    /// <summary>Most outboxes one scope sends itself.</summary>
    public const int MaxDeferred = 8;

    [ThreadStatic]
    private static SessionOutbox?[]? t_deferred;
    [ThreadStatic]
    private static int t_count;
    [ThreadStatic]
    private static bool t_active;

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

    /// <summary>Called by an outbox that starts sending (under its lock): true when this thread's scope will send it.</summary>
    public static bool TryDefer(SessionOutbox outbox)
    {
        if (!t_active || t_count == MaxDeferred)
        {
            return false;
        }

        (t_deferred ??= new SessionOutbox?[MaxDeferred])[t_count++] = outbox;
        return true;
    }

    /// <summary>Ends this thread's scope and sends every outbox deferred to it (never under a lock).</summary>
    public static void Exit()
    {
        t_active = false;
        var count = t_count;
        if (count == 0)
        {
            return;
        }

        t_count = 0;
        var deferred = t_deferred!;
        for (var i = 0; i < count; i++)
        {
            var outbox = deferred[i]!;
            deferred[i] = null;
            outbox.SendDeferred();
        }
    }
}
