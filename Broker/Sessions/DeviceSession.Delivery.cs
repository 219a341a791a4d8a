using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// Ordered delivery to this device: the user's inbox, and each large group the user is in (fan-out on read),
/// each a <see cref="DeliveryStream"/> with one rule for the live path, catch-up and the seam between them.
/// <para>
/// One catch-up task per session, whatever the number of streams: it runs while any stream is catching up,
/// reading one batch at a time, so a device in many large groups holds one batch in memory, not one per group.
/// It alternates between the inbox and the groups, so a busy inbox cannot hold the groups back (nor the reverse).
/// The streams start catching up only once CONNECT has queued CONNACK (<see cref="_streamsReady"/>): nothing is
/// delivered before it, and notifications that arrive earlier just mark the streams wanted.
/// </para>
/// Locking: <c>_lock</c>, the session's one lock, which the outbox shares (it never calls back under it).
/// </summary>
internal sealed partial class DeviceSession : IDeliveryTarget, IInboxAckRecord
{
    // All guarded by _lock.
    private readonly DeliveryStream _inbox = new(conversationId: 0, position: 0);
    // Created with the first stream: most devices are in no large group, and an empty dictionary is ~100 bytes.
    private Dictionary<ulong, DeliveryStream>? _groupStreams;
    private HashSet<ulong>? _pendingGroups; // notified before CONNECT set the streams up
    private bool _streamsReady;
    private bool _catchUpRunning;
    private bool _catchUpStopped; // the session is closing, or a read failed: no more catch-up
    private bool _groupsTurn;
    private bool _syncPending;
    private ulong _syncRequestId;
    private bool _closed;

    object IDeliveryTarget.Lock => _lock;

    bool IDeliveryTarget.IsClosed => _closed;

    ChatService IDeliveryTarget.Chat => _context.Chat;

    SessionOptions IDeliveryTarget.Options => _context.Options.Session;

    int IDeliveryTarget.PendingBytes => _outbox.PendingBytes;

    bool IDeliveryTarget.IsClosing => _outbox.IsClosing;

    void IDeliveryTarget.WriteDeliver(in DeliverFields fields, ReadOnlySpan<byte> body)
    {
        if (_outbox.TryWriteDeliver(fields, body))
        {
            _context.Metrics.MessagesOut.Add(1);
        }
    }

    Task<bool> IDeliveryTarget.WhenBelowAsync(int bytes, TimeSpan stallTimeout) => _outbox.WhenBelowAsync(bytes, stallTimeout);

    bool IInboxAckRecord.TryGetAckedCursor(out ulong cursor)
    {
        lock (_lock)
        {
            var record = _inbox.Record;
            cursor = record.AckedCursor;
            return record.HasAcked;
        }
    }

    bool IInboxAckRecord.TryCollect(ulong after, ulong through, Dictionary<ulong, ulong> highest)
    {
        lock (_lock)
        {
            return _inbox.Record.TryCollect(after, through, highest);
        }
    }

    void IInboxAckRecord.Acked(ulong cursor)
    {
        lock (_lock)
        {
            _inbox.Record.Acked(cursor);
        }
    }

    void IInboxAckRecord.Forget(ulong through)
    {
        lock (_lock)
        {
            _inbox.Record.Forget(through);
        }
    }

    public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message)
    {
        lock (_lock)
        {
            if (!_closed && _inbox.OnAppended(this, inboxSeq, message, write: true))
            {
                StartCatchUpLocked();
            }
        }
    }

    public void OnGroupLogAppended(DeliveryMessage message, bool write)
    {
        lock (_lock)
        {
            if (_closed)
            {
                return;
            }

            if (!_streamsReady)
            {
                (_pendingGroups ??= []).Add(message.ConversationId);
                return;
            }

            if (_groupStreams is null || !_groupStreams.TryGetValue(message.ConversationId, out var stream))
            {
                // A group that became large, or that this user joined, while the device was online: live from here.
                stream = new DeliveryStream(message.ConversationId, message.Seq - 1);
                stream.GoLive();
                (_groupStreams ??= [])[message.ConversationId] = stream;
            }

            if (stream.OnAppended(this, message.Seq, message, write))
            {
                StartCatchUpLocked();
            }
        }
    }

    public void Resync()
    {
        lock (_lock)
        {
            if (_closed || !_streamsReady)
            {
                return;
            }

            _inbox.CatchUp();
            if (_groupStreams is not null)
            {
                foreach (var stream in _groupStreams.Values)
                {
                    stream.CatchUp();
                }
            }

            StartCatchUpLocked();
        }
    }

    public void OnReceipt(Receipt receipt)
    {
        if ((_capabilities & (ulong)Capability.Receipts) != 0)
        {
            _outbox.TryWrite(receipt);
        }
    }

    /// <summary>
    /// CONNECT, once CONNACK is queued: the inbox catches up only when it holds something after the device's
    /// position. The common reconnect has nothing to catch up, and a catch-up's first read (a cursor and a
    /// batch-sized list, ~9 KB) per connect was most of what a connection burst allocated.
    /// <paramref name="lastInboxSeq"/> was read after the session registered, so a message committed after that
    /// read notifies this session: before this call it finds the inbox catching up and marks it wanted (the
    /// catch-up then runs); after it, the live path takes it. Either way nothing is skipped.
    /// </summary>
    private void StartCatchUp(ulong lastInboxSeq)
    {
        lock (_lock)
        {
            if (_inbox.Position >= lastInboxSeq && !_inbox.Wanted && !_catchUpRunning)
            {
                _inbox.GoLive();
            }
            else
            {
                _inbox.CatchUp();
            }

            StartCatchUpLocked(); // or SYNC_DONE now, when no large group has to catch up either
        }
    }

    private void StartCatchUp()
    {
        lock (_lock)
        {
            StartCatchUpLocked();
        }
    }

    // Under _lock: runs the catch-up task if a stream needs it and it is not running; SYNC_DONE when none does.
    private void StartCatchUpLocked()
    {
        if (_catchUpRunning || !_streamsReady || _catchUpStopped)
        {
            return;
        }

        if (NextCatchingUpLocked() is not null)
        {
            _catchUpRunning = true;
            _ = CatchUpAsync();
            return;
        }

        TryCompleteSyncLocked();
    }

    /// <summary>Reads the streams that are catching up, one batch at a time, until none is.</summary>
    private async Task CatchUpAsync()
    {
        await Task.Yield(); // never run the store reads on the caller's thread (a SEND's completion)
        List<DeliveryItem>? items = null;
        try
        {
            while (true)
            {
                DeliveryStream? stream;
                lock (_lock)
                {
                    stream = _closed ? null : NextCatchingUpLocked();
                    if (stream is null)
                    {
                        _catchUpRunning = false;
                        TryCompleteSyncLocked(); // SYNC_DONE once the inbox and every large group have caught up
                        return;
                    }

                    _groupsTurn = stream.IsInbox; // the other kind goes next, if it has something to read
                }

                // Grows with the backlog: a reconnect with a few messages to catch up should not cost a batch-sized list.
                items ??= new List<DeliveryItem>(16);
                var result = await stream.CatchUpBatchAsync(this, items).ConfigureAwait(false);
                items.Clear(); // hold no messages between batches
                if (result == CatchUpResult.NotAMember)
                {
                    lock (_lock)
                    {
                        _groupStreams?.Remove(stream.ConversationId);
                    }
                }
                else if (result == CatchUpResult.Stopped)
                {
                    lock (_lock)
                    {
                        _catchUpRunning = false;
                        _catchUpStopped = true;
                    }

                    return;
                }
            }
        }
        catch (Exception e) when (e is StorageException or RouteUnavailableException)
        {
            lock (_lock)
            {
                _catchUpRunning = false;
                _catchUpStopped = true;
            }

            Hosting.Log.DeliveryFailed(_context.Logger, _user, _device, e);
            Close(ReasonCode.ServerUnavailable, "messages could not be read; reconnect");
        }
    }

    // Under _lock: the next stream to read, alternating between the inbox and the large groups.
    private DeliveryStream? NextCatchingUpLocked()
    {
        var group = FirstCatchingUpGroupLocked();
        if (_inbox.CatchingUp && (group is null || !_groupsTurn))
        {
            return _inbox;
        }

        return group;
    }

    private DeliveryStream? FirstCatchingUpGroupLocked()
    {
        if (_groupStreams is not null)
        {
            foreach (var (_, stream) in _groupStreams)
            {
                if (stream.CatchingUp)
                {
                    return stream;
                }
            }
        }

        return null;
    }

    /// <summary>SYNC_DONE once the inbox and every large group have caught up (under _lock).</summary>
    private void TryCompleteSyncLocked()
    {
        if (!_syncPending || _closed || _catchUpRunning || NextCatchingUpLocked() is not null)
        {
            return;
        }

        _syncPending = false;
        var done = new SyncDone { RequestId = _syncRequestId, InboxSeq = _inbox.Position };
        if (_groupStreams is not null)
        {
            foreach (var (conversationId, stream) in _groupStreams)
            {
                done.Conversations.Add(new ConversationCursor { ConversationId = conversationId, Seq = stream.Position });
            }
        }

        _outbox.TryWrite(done);
    }
}
