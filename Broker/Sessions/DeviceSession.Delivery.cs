using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// Ordered delivery of the user's inbox to this device.
/// <para>
/// The device's position is <c>_delivered</c>: the last inbox seq queued to it. Two paths move it:
/// the live path (a committed message whose inbox seq is exactly <c>_delivered + 1</c> is written straight
/// from memory) and the pump (reads the store after <c>_delivered</c>, in batches, waiting for the socket
/// between batches). Resume is the pump starting from the device's cursor; a gap on the live path (two
/// commits whose notifications arrive out of order) also starts the pump. While the pump runs, the live
/// path only records that there is more to read, and the pump finishes only after a read that found
/// everything and no notification since — so no message is skipped or sent twice across the seam.
/// </para>
/// Locking: <c>_lock</c>, the session's one lock, which the outbox shares (it never calls back under it).
/// </summary>
internal sealed partial class DeviceSession
{
    // All guarded by _lock.
    private ulong _delivered;
    private bool _pumping = true; // until CONNECT starts the first catch-up, notifications just mark "more"
    private bool _pumpRunning;
    private bool _pumpWanted;
    private bool _syncPending;
    private ulong _syncRequestId;
    private bool _closed;

    public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message)
    {
        lock (_lock)
        {
            if (_closed)
            {
                return;
            }

            if (_pumping)
            {
                _pumpWanted = true;
                return;
            }

            if (inboxSeq <= _delivered)
            {
                return;
            }

            if (inboxSeq != _delivered + 1)
            {
                // An earlier commit's notification is still on its way: read the store, which has both.
                _pumping = true;
                StartPumpLocked();
                return;
            }

            _delivered = inboxSeq;
            if (message.SenderUserId == _user && message.SenderDeviceId == _device)
            {
                return; // the sending device has its own message (it got SENT)
            }

            var fields = new DeliverFields
            {
                ConversationId = message.ConversationId,
                Seq = message.Seq,
                SenderUserId = message.SenderUserId,
                SenderDeviceId = message.SenderDeviceId,
                TimestampMs = (ulong)message.TimestampMs,
                ContentType = message.ContentType,
                Media = message.Media,
                InboxSeq = inboxSeq,
                ClientMsgId = message.SenderUserId == _user ? message.ClientMsgId : 0,
            };
            if (_outbox.TryWriteDeliver(fields, message.Body.Span))
            {
                _context.Metrics.MessagesOut.Add(1);
            }
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
    /// CONNECT: starts the pump only when the inbox holds something after the device's position. The common
    /// reconnect has nothing to catch up, and a pump's first read (a cursor and a batch-sized list, ~9 KB) per
    /// connect was most of what a connection burst allocated. <paramref name="lastInboxSeq"/> was read after
    /// the session registered, so a message committed after that read notifies this session: before this
    /// call it finds <c>_pumping</c> set and marks <c>_pumpWanted</c> (the pump then runs); after it, the live
    /// path takes it. Either way nothing is skipped.
    /// </summary>
    private void StartCatchUp(ulong lastInboxSeq)
    {
        lock (_lock)
        {
            if (_delivered >= lastInboxSeq && !_pumpWanted && !_pumpRunning)
            {
                _pumping = false;
                TryCompleteSyncLocked(); // SYNC_DONE now unless large groups still have to catch up
                return;
            }

            _pumping = true;
            StartPumpLocked();
        }
    }

    private void StartPump()
    {
        lock (_lock)
        {
            _pumping = true;
            StartPumpLocked();
        }
    }

    private void StartPumpLocked()
    {
        if (_pumpRunning)
        {
            _pumpWanted = true;
            return;
        }

        _pumpRunning = true;
        _ = PumpAsync();
    }

    private async Task PumpAsync()
    {
        await Task.Yield(); // never run the store reads on the caller's thread (a SEND's completion)
        var store = _context.Chat.Store;
        var batch = _context.Options.Session.ResumeBatch;
        var highWatermark = _context.Options.Session.MaxOutboundBytes / 2;
        var lowWatermark = _context.Options.Session.MaxOutboundBytes / 4;
        try
        {
            while (true)
            {
                ulong from;
                lock (_lock)
                {
                    if (_closed)
                    {
                        _pumpRunning = false;
                        return;
                    }

                    from = _delivered;
                    _pumpWanted = false;
                }

                var entries = store.ReadInbox(_user, from, batch);
                // Consecutive entries of one conversation (the common case: a chat's messages in a row) are read
                // with one store range read instead of one seek per message.
                IReadOnlyList<StoredMessage> run = [];
                ulong runConversation = 0, runStart = 0, runEnd = 0;
                var runPos = 0;
                for (var i = 0; i < entries.Count; i++)
                {
                    var entry = entries[i];
                    // Never let catching up trip the slow-consumer bound: wait for the socket to take some.
                    if (_outbox.PendingBytes > highWatermark)
                    {
                        if (!await _outbox.WhenBelowAsync(lowWatermark, _context.Options.Session.StallTimeout).ConfigureAwait(false))
                        {
                            // Catching up waits for the socket instead of overflowing, so a device that stopped
                            // reading is recognised here: no progress for the stall timeout.
                            Close(ReasonCode.SlowConsumer, $"slow consumer: the socket took nothing for {_context.Options.Session.StallTimeout.TotalSeconds:0.#}s");
                        }

                        if (_outbox.IsClosing)
                        {
                            lock (_lock)
                            {
                                _pumpRunning = false;
                            }

                            return;
                        }
                    }

                    if (entry.ConversationId != runConversation || entry.Seq < runStart || entry.Seq > runEnd)
                    {
                        var length = 1;
                        while (i + length < entries.Count && length < batch
                            && entries[i + length].ConversationId == entry.ConversationId
                            && entries[i + length].Seq == entry.Seq + (ulong)length)
                        {
                            length++;
                        }

                        run = store.ReadRange(entry.ConversationId, entry.Seq, length);
                        (runConversation, runStart, runEnd, runPos) = (entry.ConversationId, entry.Seq, entry.Seq + (ulong)length - 1, 0);
                    }

                    while (runPos < run.Count && run[runPos].Seq < entry.Seq)
                    {
                        runPos++;
                    }

                    var stored = runPos < run.Count && run[runPos].Seq == entry.Seq ? run[runPos] : null;
                    lock (_lock)
                    {
                        if (_closed || entry.InboxSeq <= _delivered)
                        {
                            continue; // a SYNC moved the position meanwhile; the next round re-reads
                        }

                        _delivered = entry.InboxSeq;
                        if (stored is null || _context.Chat.IsExpired(stored.TimestampMs))
                        {
                            continue; // removed by retention, or due to be
                        }

                        var m = stored;
                        if (m.SenderUserId == _user && m.SenderDeviceId == _device)
                        {
                            continue;
                        }

                        WriteStoredDeliver(m, entry.InboxSeq);
                    }
                }

                if (entries.Count < batch)
                {
                    lock (_lock)
                    {
                        if (!_pumpWanted || _closed)
                        {
                            _pumping = false;
                            _pumpRunning = false;
                            TryCompleteSyncLocked(); // SYNC_DONE once the large groups have caught up too

                            return;
                        }
                    }

                    continue;
                }

            }
        }
        catch (StorageException e)
        {
            lock (_lock)
            {
                _pumpRunning = false;
            }

            Hosting.Log.DeliveryFailed(_context.Logger, _user, _device, e);
            Close(ReasonCode.ServerUnavailable, "messages could not be read; reconnect");
        }
    }

    // Under _lock.
    private void WriteStoredDeliver(StoredMessage m, ulong inboxSeq)
    {
        var fields = new DeliverFields
        {
            ConversationId = m.ConversationId,
            Seq = m.Seq,
            SenderUserId = m.SenderUserId,
            SenderDeviceId = m.SenderDeviceId,
            TimestampMs = (ulong)m.TimestampMs,
            ContentType = (ContentType)m.ContentType,
            Media = ChatService.ParseMedia(m.MediaRef),
            InboxSeq = inboxSeq,
            ClientMsgId = m.SenderUserId == _user ? m.ClientMsgId : 0,
        };
        if (_outbox.TryWriteDeliver(fields, m.Body.Span))
        {
            _context.Metrics.MessagesOut.Add(1);
        }
    }
}
