using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// GROUP_REQUEST, and the set-up of large-group delivery streams (fan-out on read; see
/// <see cref="DeliveryStream"/> and DeviceSession.Delivery.cs).
/// <para>
/// A large group's messages are not in the inbox: each is stored once and pushed to online members' devices with
/// inbox_seq = 0, and read back from the group's log on catch-up. SYSTEM messages of large groups come through
/// the inbox (see <see cref="ChatService.EnqueueSystemMessage"/>); the group's stream only steps over them. A
/// stream starts at the cursor the device lists in CONNECT (resume_conversations) or SYNC, else at the device's
/// stored cursor for that group (moved by ACK.conversations), else at 0 (the whole retained log, as a fresh
/// device gets its whole inbox).
/// </para>
/// Locking: <c>_lock</c> (the session's one lock, shared with the outbox) guards every stream, as for the inbox.
/// </summary>
internal sealed partial class DeviceSession
{
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
        catch (Exception e) when (e is StorageException or IOException or KeyNotFoundException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the group change could not be stored; retry", request.RequestId, PacketType.GroupRequest);
        }

        return Handled.Ok;
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

        _streamsReady = true;
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
            stream.MoveTo(position);
        }
        else
        {
            (_groupStreams ??= [])[conversationId] = new DeliveryStream(conversationId, position);
        }

        return true;
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
            var (error, message) = await _context.Chat.AckConversationsAsync(this, ack.Conversations, stopping).ConfigureAwait(false);
            if (error != ReasonCode.Success)
            {
                WriteError(error, message!, 0, PacketType.Ack);
            }
        }
        catch (Exception e) when (e is StorageException or IOException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the acknowledgement could not be stored; repeat it", 0, PacketType.Ack);
        }
    }
}
