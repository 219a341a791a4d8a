using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// One ordered stream of committed messages to one device: the user's inbox (fan-out on write; positions are
/// inbox seqs) or one large group's log (fan-out on read; positions are the group's seqs, and DELIVERs carry
/// inbox_seq 0). Both follow the same rule.
/// <para>
/// <see cref="Position"/> is the last position queued to the device. Live: a committed message whose position
/// is exactly <c>Position + 1</c> is written straight from memory. Any other position (resume, SYNC, a gap: two
/// commits whose notifications arrive out of order) makes the stream catch up: the session's catch-up task
/// (<see cref="CatchUpBatchAsync"/>) reads the store through the core after <see cref="Position"/>, a batch at a
/// time, outside the session's lock, waiting for the socket whenever the outbox passes its high watermark. While
/// a stream catches up, the live path only marks it wanted; it goes live again only after a read that found
/// less than a batch with no notification since. So across the seam no message is skipped or sent twice.
/// </para>
/// <para>
/// Slow consumer: catching up never overflows the outbox (it waits below the high watermark, at half the
/// session's outbound bound); a device whose socket takes nothing for session.stall_timeout while the stream
/// waits is closed with SLOW_CONSUMER. The live path writes without waiting; the outbox's own bound applies.
/// </para>
/// Locking: every field is guarded by the session's lock (<see cref="IDeliveryTarget.Lock"/>: DeviceSession._lock,
/// which its outbox shares); the store is read without it.
/// </summary>
internal sealed class DeliveryStream(ulong conversationId, ulong position)
{
    // Guarded by the session's lock.
    private bool _wanted;
    private int _generation;

    // Catch-up gives the device its own messages at positions up to here: a device that resumes from 0 has
    // nothing (a reinstall keeps its device id), so it is given every entry that existed when it asked.
    private ulong _ownThrough;

    // The inbox's entries passed since the device's last ACK (the inbox stream only; created with the first).
    private InboxRecord? _record;

    /// <summary>The large group this stream reads; 0 for the user's inbox.</summary>
    public ulong ConversationId { get; } = conversationId;

    public bool IsInbox => ConversationId == 0;

    /// <summary>The last position queued to the device.</summary>
    public ulong Position { get; private set; } = position;

    /// <summary>True while the catch-up task owns the position (a new stream catches up first).</summary>
    public bool CatchingUp { get; private set; } = true;

    /// <summary>True when a notification arrived while catching up: the task reads once more before going live.</summary>
    public bool Wanted => _wanted;

    /// <summary>
    /// Sets where a stream that has not started yet begins (CONNECT's resume position), keeping whatever
    /// notifications it already had. Catch-up delivers the device's own messages at positions up to
    /// <paramref name="ownThrough"/> (0: none; they got SENT).
    /// </summary>
    public void StartAt(ulong position, ulong ownThrough = 0)
    {
        Position = position;
        _ownThrough = ownThrough;
        _record?.Break();
    }

    /// <summary>The inbox's record of the entries passed since the device's last ACK (<see cref="InboxRecord"/>).</summary>
    public InboxRecord Record => _record ??= new InboxRecord();

    /// <summary>
    /// Moves the stream to a position the device named (SYNC) and catches up from there. What is left of a batch
    /// being read when this happens is dropped (it was read from the old position: written now, it could skip
    /// what lies between the two) and the stream is read again.
    /// </summary>
    public void MoveTo(ulong position, ulong ownThrough = 0)
    {
        Position = position;
        _ownThrough = ownThrough;
        _generation++;
        _record?.Break();
        CatchUp();
    }

    /// <summary>Catches up from the current position (a gap on the live path, or a resume with something to read).</summary>
    public void CatchUp()
    {
        CatchingUp = true;
        _wanted = true;
    }

    /// <summary>Goes live without reading: CONNECT found nothing after the resume position, or a large group's
    /// stream is created by its first live message.</summary>
    public void GoLive() => CatchingUp = false;

    /// <summary>
    /// Live path, under the session's lock: <paramref name="message"/> was committed at
    /// <paramref name="position"/> of this stream. <paramref name="write"/> false only moves the position (a large
    /// group's SYSTEM message, which the device gets through its inbox). True when the session must make sure its
    /// catch-up task runs.
    /// </summary>
    public bool OnAppended(IDeliveryTarget session, ulong position, DeliveryMessage message, bool write)
    {
        if (CatchingUp)
        {
            _wanted = true;
            return true;
        }

        if (position <= Position)
        {
            return false;
        }

        if (position != Position + 1)
        {
            CatchUp(); // an earlier commit's notification is still on its way: read the store, which has both
            return true;
        }

        Position = position;
        if (IsInbox)
        {
            Record.Note(position, message.ConversationId, message.Seq);
        }

        if (write)
        {
            WriteLocked(session, message, position, fromStore: false);
        }

        return false;
    }

    /// <summary>
    /// Catch-up: reads one batch after <see cref="Position"/> through the core (outside the lock) and queues it,
    /// waiting for the socket between messages when the outbox is above its high watermark. <paramref name="items"/>
    /// is the caller's scratch list.
    /// </summary>
    public async ValueTask<CatchUpResult> CatchUpBatchAsync(IDeliveryTarget session, List<DeliveryItem> items)
    {
        var options = session.Options;
        var batch = options.ResumeBatch;
        var highWatermark = options.MaxOutboundBytes / 2;
        var lowWatermark = options.MaxOutboundBytes / 4;
        ulong from;
        int generation;
        lock (session.Lock)
        {
            if (session.IsClosed)
            {
                return CatchUpResult.Stopped;
            }

            from = Position;
            generation = _generation;
            _wanted = false;
        }

        items.Clear();
        var chat = session.Chat;
        if (IsInbox)
        {
            await chat.ReadInboxAfterAsync(session.UserId, from, batch, items, CancellationToken.None).ConfigureAwait(false);
        }
        else if (!await chat.ReadGroupLogAfterAsync(session.UserId, ConversationId, from, batch, items, CancellationToken.None).ConfigureAwait(false))
        {
            return CatchUpResult.NotAMember;
        }

        for (var i = 0; i < items.Count; i++)
        {
            // Never let catching up trip the slow-consumer bound: wait for the socket to take some.
            if (session.PendingBytes > highWatermark)
            {
                if (!await session.WhenBelowAsync(lowWatermark, options.StallTimeout).ConfigureAwait(false))
                {
                    // Catching up waits for the socket instead of overflowing, so a device that stopped reading is
                    // recognised here: no progress for the stall timeout.
                    session.Close(ReasonCode.SlowConsumer, $"slow consumer: the socket took nothing for {options.StallTimeout.TotalSeconds:0.#}s");
                }

                if (session.IsClosing)
                {
                    return CatchUpResult.Stopped;
                }
            }

            var item = items[i];
            lock (session.Lock)
            {
                if (session.IsClosed || generation != _generation || item.Position <= Position)
                {
                    continue; // a SYNC moved the position meanwhile; the next round re-reads
                }

                Position = item.Position;
                if (item.Message is { } message)
                {
                    if (IsInbox)
                    {
                        Record.Note(item.Position, message.ConversationId, message.Seq);
                    }

                    WriteLocked(session, message, item.Position, fromStore: true);
                }
                else
                {
                    _record?.Break(); // retention removed it: an ACK over it reads the store
                }
            }
        }

        lock (session.Lock)
        {
            if (items.Count < batch && !_wanted)
            {
                CatchingUp = false; // everything read, and nothing notified since: live from here
            }
        }

        return CatchUpResult.Read;
    }

    // Under the session's lock: the one place a DELIVER is queued.
    private void WriteLocked(IDeliveryTarget session, DeliveryMessage message, ulong position, bool fromStore)
    {
        if (message.IsFrom(session.UserId, session.DeviceId) && !(fromStore && position <= _ownThrough))
        {
            return; // the sending device has its own message (it got SENT)
        }

        session.WriteDeliver(message.DeliverFieldsFor(session.UserId, IsInbox ? position : 0), message.Body.Span);
    }
}

/// <summary>
/// What a <see cref="DeliveryStream"/> needs of its device's session: the session's lock (which guards the
/// streams), the core to read from, and the outbound queue. <see cref="DeviceSession"/> implements it; tests
/// implement it in memory.
/// </summary>
internal interface IDeliveryTarget
{
    /// <summary>The session's one lock (a monitor on its outbox: no lock object per connection): it guards the streams and the outbound queue.</summary>
    object Lock { get; }

    string UserId { get; }

    string DeviceId { get; }

    /// <summary>The read loop has ended (read under <see cref="Lock"/>).</summary>
    bool IsClosed { get; }

    /// <summary>The core the streams read from when they catch up.</summary>
    ChatService Chat { get; }

    SessionOptions Options { get; }

    /// <summary>Bytes queued but not yet taken by the connection.</summary>
    int PendingBytes { get; }

    /// <summary>The outbound queue takes nothing more (closing, or overflowed).</summary>
    bool IsClosing { get; }

    /// <summary>Queues one DELIVER (under <see cref="Lock"/>) and counts it.</summary>
    void WriteDeliver(in DeliverFields fields, ReadOnlySpan<byte> body);

    /// <summary>True once at most <paramref name="bytes"/> are queued; false when the connection took nothing for <paramref name="stallTimeout"/>.</summary>
    Task<bool> WhenBelowAsync(int bytes, TimeSpan stallTimeout);

    void Close(ReasonCode reason, string message);
}

/// <summary>What one catch-up read of a <see cref="DeliveryStream"/> did.</summary>
internal enum CatchUpResult
{
    /// <summary>A batch was read and queued (the stream may have gone live).</summary>
    Read,

    /// <summary>The session is closing: stop catching up.</summary>
    Stopped,

    /// <summary>A large group's stream whose user is no longer a member: drop the stream.</summary>
    NotAMember,
}
