using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// GROUP_REQUEST, and ordered delivery of large groups (fan-out on read) to this device.
/// <para>
/// A large group's messages are not in the inbox: each is stored once and pushed to online members'
/// devices with inbox_seq = 0. Per large group the session keeps a <see cref="GroupStream"/> mirroring the
/// inbox design of DeviceSession.Delivery.cs: <c>Delivered</c> is the last seq queued to the device; a
/// committed message with seq exactly <c>Delivered + 1</c> is written straight from memory (live path); any
/// other position — resume, a gap — makes the stream "pumping", and the group pump reads the log from the
/// store after <c>Delivered</c>. While a stream pumps, the live path only marks it wanted, and the pump
/// leaves it only after a read that found everything with no notification since: no gap, no duplicate.
/// </para>
/// <para>
/// SYSTEM messages of large groups come through the inbox (see <see cref="ChatService.EnqueueSystemMessage"/>);
/// the stream only steps over them. The stream starts at the cursor the device lists in CONNECT
/// (resume_conversations) or SYNC, else at the device's stored cursor for that group (moved by
/// ACK.conversations), else at 0 (the whole retained log, as a fresh device gets its whole inbox).
/// </para>
/// Locking: <c>_lock</c> (the session's one lock, shared with the outbox) guards every stream, as for the inbox.
/// </summary>
internal sealed partial class DeviceSession
{
    private sealed class GroupStream(ulong delivered, bool pumping)
    {
        public ulong Delivered = delivered;
        public bool Pumping = pumping;
        public bool Wanted;
    }

    // All guarded by _lock.
    // Created with the first stream: most devices are in no large group, and an empty dictionary is ~100 bytes.
    private Dictionary<ulong, GroupStream>? _groupStreams;
    private HashSet<ulong>? _pendingGroups; // notified before CONNECT set the streams up
    private bool _groupsReady;
    private bool _groupPumpRunning;

    private async ValueTask<Handled> HandleGroupRequestAsync(GroupRequest request, CancellationToken stopping)
    {
        try
        {
            var outcome = await _context.Groups.HandleAsync(_user, request, _maxFrameSize, stopping).ConfigureAwait(false);
            if (outcome.Error != ReasonCode.Success)
            {
                if (outcome.Error == ReasonCode.GroupFull)
                {
                    _context.Metrics.RateLimited.Add(1, new KeyValuePair<string, object?>("limit", "group_members"));
                }

                WriteError(outcome.Error, outcome.Message!, request.RequestId, PacketType.GroupRequest);
            }
            else
            {
                _outbox.TryWrite(outcome.Result!);
            }
        }
        catch (ArgumentException e)
        {
            WriteError(ReasonCode.InvalidField, e.Message, request.RequestId, PacketType.GroupRequest);
        }
        catch (StorageException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the group change could not be stored; retry", request.RequestId, PacketType.GroupRequest);
        }

        return Handled.Ok;
    }

    public void OnGroupLogAppended(DeliveryMessage message, bool write)
    {
        lock (_lock)
        {
            if (_closed)
            {
                return;
            }

            if (!_groupsReady)
            {
                (_pendingGroups ??= []).Add(message.ConversationId);
                return;
            }

            if (_groupStreams is null || !_groupStreams.TryGetValue(message.ConversationId, out var stream))
            {
                // A group that became large, or that this user joined, while the device was online: live from here.
                stream = new GroupStream(message.Seq - 1, pumping: false);
                (_groupStreams ??= [])[message.ConversationId] = stream;
            }

            if (stream.Pumping)
            {
                stream.Wanted = true;
                StartGroupPumpLocked();
                return;
            }

            if (message.Seq <= stream.Delivered)
            {
                return;
            }

            if (message.Seq != stream.Delivered + 1)
            {
                stream.Pumping = true; // an earlier commit's notification is still on its way: read the store
                StartGroupPumpLocked();
                return;
            }

            stream.Delivered = message.Seq;
            if (!write || (message.SenderUserId == _user && message.SenderDeviceId == _device))
            {
                return;
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
                InboxSeq = 0,
                ClientMsgId = message.SenderUserId == _user ? message.ClientMsgId : 0,
            };
            if (_outbox.TryWriteDeliver(fields, message.Body.Span))
            {
                _context.Metrics.MessagesOut.Add(1);
            }
        }
    }

    /// <summary>
    /// CONNECT: one stream per large group of the user, and per group the device lists, each waiting for the
    /// pump. Runs after the session is registered and CONNACK is queued; notifications before this are parked
    /// in _pendingGroups (the pump reads what they announced from the store), so no DELIVER precedes CONNACK.
    /// </summary>
    private void SetUpGroupStreams(IReadOnlyList<ConversationCursor> listed)
    {
        lock (_lock)
        {
            SetUpGroupStreamsLocked(listed);
        }
    }

    private void SetUpGroupStreamsLocked(IReadOnlyList<ConversationCursor> listed)
    {
        var store = _context.Chat.Store;
        var directory = _context.Directory;
        _groupStreams?.Clear();
        foreach (var cursor in listed)
        {
            AddStreamLocked(cursor.ConversationId, cursor.Seq);
        }

        foreach (var conversationId in store.ListConversations(_user))
        {
            if (_groupStreams?.ContainsKey(conversationId) != true && directory.IsGroup(conversationId)
                && _context.Chat.IsLarge(directory.MembersOf(conversationId)?.Length ?? 0))
            {
                AddStreamLocked(conversationId, store.GetCursor(_user, _device, CursorStream.Conversation(conversationId)));
            }
        }

        if (_pendingGroups is not null)
        {
            foreach (var conversationId in _pendingGroups)
            {
                if (_groupStreams?.ContainsKey(conversationId) != true)
                {
                    AddStreamLocked(conversationId, store.GetCursor(_user, _device, CursorStream.Conversation(conversationId)));
                }
            }

            _pendingGroups = null;
        }

        _groupsReady = true;
    }

    /// <summary>False when the user is not a member (nothing is delivered from a group the user is not in).</summary>
    private bool AddStreamLocked(ulong conversationId, ulong cursor)
    {
        var members = conversationId == 0 ? null : _context.Directory.MembersOf(conversationId);
        if (members is null || !ConversationDirectory.Contains(members, _user))
        {
            return false;
        }

        // A device may not claim a position beyond the log: it would silently skip what comes next.
        var position = Math.Min(cursor, _context.Chat.Store.GetLastSeq(conversationId));
        if (_groupStreams is not null && _groupStreams.TryGetValue(conversationId, out var stream))
        {
            stream.Delivered = position;
            stream.Pumping = true;
        }
        else
        {
            (_groupStreams ??= [])[conversationId] = new GroupStream(position, pumping: true);
        }

        return true;
    }

    private void StartGroupPump()
    {
        lock (_lock)
        {
            StartGroupPumpLocked();
        }
    }

    private void StartGroupPumpLocked()
    {
        if (_groupPumpRunning || !_groupsReady)
        {
            return;
        }

        if (AnyGroupStreamPumpingLocked())
        {
            _groupPumpRunning = true;
            _ = GroupPumpAsync();
            return;
        }

        TryCompleteSyncLocked();
    }

    /// <summary>
    /// Reads pumping streams from the store, one batch at a time, until every stream has caught up. One
    /// task per session whatever the number of groups, waiting for the socket between messages as the
    /// inbox pump does.
    /// </summary>
    private async Task GroupPumpAsync()
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
                ulong conversationId = 0;
                GroupStream? stream = null;
                ulong from;
                lock (_lock)
                {
                    if (!_closed && _groupStreams is not null)
                    {
                        foreach (var (id, s) in _groupStreams)
                        {
                            if (s.Pumping)
                            {
                                (conversationId, stream) = (id, s);
                                break;
                            }
                        }
                    }

                    if (stream is null)
                    {
                        _groupPumpRunning = false;
                        if (!_closed)
                        {
                            TryCompleteSyncLocked();
                        }

                        return;
                    }

                    from = stream.Delivered;
                    stream.Wanted = false;
                }

                var messages = store.ReadRange(conversationId, from + 1, batch);
                // Checked after the read: a message sequenced after this user's removal was appended after the
                // directory dropped the user, so it is never delivered. The removal itself came via the inbox.
                var members = _context.Directory.MembersOf(conversationId);
                if (members is null || !ConversationDirectory.Contains(members, _user))
                {
                    lock (_lock)
                    {
                        _groupStreams?.Remove(conversationId);
                    }

                    continue;
                }

                foreach (var m in messages)
                {
                    if (_outbox.PendingBytes > highWatermark)
                    {
                        if (!await _outbox.WhenBelowAsync(lowWatermark, _context.Options.Session.StallTimeout).ConfigureAwait(false))
                        {
                            Close(ReasonCode.SlowConsumer, $"slow consumer: the socket took nothing for {_context.Options.Session.StallTimeout.TotalSeconds:0.#}s");
                        }

                        if (_outbox.IsClosing)
                        {
                            lock (_lock)
                            {
                                _groupPumpRunning = false;
                            }

                            return;
                        }
                    }

                    lock (_lock)
                    {
                        if (_closed || m.Seq <= stream.Delivered)
                        {
                            continue; // a SYNC moved the position meanwhile; the next round re-reads
                        }

                        stream.Delivered = m.Seq;
                        if (m.ContentType == (uint)ContentType.System || (m.SenderUserId == _user && m.SenderDeviceId == _device)
                            || _context.Chat.IsExpired(m.TimestampMs))
                        {
                            continue; // SYSTEM messages come through the inbox; the sender has its own message; expired
                        }

                        WriteStoredDeliver(m, inboxSeq: 0);
                    }
                }

                if (messages.Count < batch)
                {
                    lock (_lock)
                    {
                        if (!stream.Wanted)
                        {
                            stream.Pumping = false;
                        }
                    }
                }
            }
        }
        catch (StorageException e)
        {
            lock (_lock)
            {
                _groupPumpRunning = false;
            }

            Hosting.Log.DeliveryFailed(_context.Logger, _user, _device, e);
            Close(ReasonCode.ServerUnavailable, "messages could not be read; reconnect");
        }
    }

    // Under _lock.
    private bool AnyGroupStreamPumpingLocked()
    {
        if (_groupStreams is not null)
        {
            foreach (var (_, stream) in _groupStreams)
            {
                if (stream.Pumping)
                {
                    return true;
                }
            }
        }

        return false;
    }

    /// <summary>SYNC_DONE once the inbox and every large group have caught up (under _lock).</summary>
    private void TryCompleteSyncLocked()
    {
        if (!_syncPending || _closed || _pumping || _groupPumpRunning)
        {
            return;
        }

        if (AnyGroupStreamPumpingLocked())
        {
            return;
        }

        _syncPending = false;
        var done = new SyncDone { RequestId = _syncRequestId, InboxSeq = _delivered };
        if (_groupStreams is not null)
        {
            foreach (var (conversationId, stream) in _groupStreams)
            {
                done.Conversations.Add(new ConversationCursor { ConversationId = conversationId, Seq = stream.Delivered });
            }
        }

        _outbox.TryWrite(done);
    }

    /// <summary>SYNC naming large groups: restart those streams from the given cursors.</summary>
    private void SyncGroups(Sync sync)
    {
        var refused = new List<ulong>();
        lock (_lock)
        {
            foreach (var cursor in sync.Conversations)
            {
                if (!AddStreamLocked(cursor.ConversationId, cursor.Seq))
                {
                    refused.Add(cursor.ConversationId);
                }
            }
        }

        foreach (var conversationId in refused)
        {
            WriteError(ReasonCode.NotAMember, $"not a member of conversation {conversationId}", sync.RequestId, PacketType.Sync);
        }
    }

    private async ValueTask AckConversationsAsync(Ack ack, CancellationToken stopping)
    {
        try
        {
            var (error, message) = await _context.Chat.AckConversationsAsync(this, ack.Conversations, _appendCompletions, stopping).ConfigureAwait(false);
            if (error != ReasonCode.Success)
            {
                WriteError(error, message!, 0, PacketType.Ack);
            }
        }
        catch (StorageException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the acknowledgement could not be stored; repeat it", 0, PacketType.Ack);
        }
    }
}
