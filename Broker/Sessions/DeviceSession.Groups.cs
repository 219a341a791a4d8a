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
        // Abuse limits (abuse.*): group creations, and users added or removed (a new group's members included), per
        // user per hour. Taken before the request runs, so a refused one changes nothing; a request that then fails
        // still counts (it cost the work).
        var members = request.OpCase switch
        {
            GroupRequest.OpOneofCase.Create => request.Create.MemberUserIds.Count,
            GroupRequest.OpOneofCase.AddMembers => request.AddMembers.UserIds.Count,
            GroupRequest.OpOneofCase.RemoveMembers => request.RemoveMembers.UserIds.Count,
            _ => 0,
        };
        string? refused = null;
        var retry = TimeSpan.Zero;
        if (request.OpCase == GroupRequest.OpOneofCase.Create && !_context.Abuse.TryTake(_user, AbuseLimit.GroupCreations, 1, out retry))
        {
            refused = $"at most {_context.Options.Abuse.GroupCreationsPerHour} group creations per user per hour (abuse.group_creations_per_hour)";
        }
        else if (!_context.Abuse.TryTake(_user, AbuseLimit.MembershipChanges, members, out retry))
        {
            refused = $"at most {_context.Options.Abuse.MembershipChangesPerHour} membership changes per user per hour (abuse.membership_changes_per_hour)";
        }

        if (refused is not null)
        {
            WriteError(ReasonCode.RateLimited, refused, request.RequestId, PacketType.GroupRequest, retry);
            return Handled.Ok;
        }

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
            WriteError(ReasonCode.BadRequest, e.Message, request.RequestId, PacketType.GroupRequest);
        }
        catch (StorageException)
        {
            WriteError(ReasonCode.ServerUnavailable, "the group change could not be stored; retry", request.RequestId, PacketType.GroupRequest);
        }

        return Handled.Ok;
    }

    /// <summary>
    /// CONNECT: one stream per large group of the user, and per group the device lists, each catching up. Runs
    /// after the session is registered and CONNACK is queued; notifications before this are parked in
    /// _pendingGroups (the catch-up reads what they announced from the store), so no DELIVER precedes CONNACK.
    /// Where each stream starts is read from the store through the core, outside the lock.
    /// </summary>
    private void SetUpGroupStreams(IReadOnlyList<ConversationCursor> listed)
    {
        var chat = _context.Chat;
        if (chat.Router is IGroupRouter router)
        {
            // Cluster mode: the groups' owners know where the streams start; the read loop goes on meanwhile, and
            // until the streams are set up nothing catches up (notifications park in _pendingGroups as above).
            _ = SetUpRoutedGroupStreamsAsync(router, listed);
            return;
        }

        var starts = new List<ConversationCursor>();
        foreach (var cursor in listed)
        {
            if (chat.GroupStreamStart(_user, _device, cursor.ConversationId, cursor.Seq) is { } position)
            {
                starts.Add(new ConversationCursor { ConversationId = cursor.ConversationId, Seq = position });
            }
        }

        foreach (var conversationId in chat.LargeGroupsOf(_user))
        {
            if (!Contains(starts, conversationId) && chat.GroupStreamStart(_user, _device, conversationId, named: null) is { } position)
            {
                starts.Add(new ConversationCursor { ConversationId = conversationId, Seq = position });
            }
        }

        for (var first = true; ; first = false)
        {
            HashSet<ulong>? pending;
            lock (_lock)
            {
                pending = TakeStartsLocked(starts, first);
            }

            if (pending is null)
            {
                return;
            }

            // Groups notified meanwhile (one that became large, or that this user joined): from the stored cursor.
            starts.Clear();
            foreach (var conversationId in pending)
            {
                if (chat.GroupStreamStart(_user, _device, conversationId, named: null) is { } position)
                {
                    starts.Add(new ConversationCursor { ConversationId = conversationId, Seq = position });
                }
            }
        }
    }

    /// <summary>
    /// Under _lock: starts the streams at checked positions (the <paramref name="first"/> round drops what an earlier
    /// CONNECT set up; a later duplicate wins, as a later SYNC would) and takes the groups notified meanwhile that
    /// still have no stream. Null when there were none: the streams are ready.
    /// </summary>
    private HashSet<ulong>? TakeStartsLocked(List<ConversationCursor> starts, bool first)
    {
        if (first)
        {
            _groupStreams?.Clear();
        }

        foreach (var start in starts)
        {
            AddStreamLocked(start.ConversationId, start.Seq);
        }

        var pending = _pendingGroups;
        _pendingGroups = null;
        if (pending is null)
        {
            _streamsReady = true;
            return null;
        }

        pending.RemoveWhere(id => _groupStreams?.ContainsKey(id) == true);
        return pending;
    }

    /// <summary>
    /// <see cref="SetUpGroupStreams"/> in cluster mode: the start of every large group of the user is asked of the
    /// group's owner (every node, for the groups it owns), then of the owners of groups notified meanwhile, until
    /// none was; then the streams are ready and catch-up starts (the CONNECT path's own call found them not ready).
    /// An owner that does not answer (within the cluster's read timeout) is left out: its groups get no stream
    /// until the device's next CONNECT or SYNC, and everything else is delivered.
    /// </summary>
    private async Task SetUpRoutedGroupStreamsAsync(IGroupRouter router, IReadOnlyList<ConversationCursor> listed)
    {
        try
        {
            var (starts, _) = await router.GroupStreamStartsAsync(_user, _device, listed, [], allLarge: true, partial: true, CancellationToken.None).ConfigureAwait(false);
            for (var first = true; ; first = false)
            {
                HashSet<ulong>? pending;
                lock (_lock)
                {
                    pending = TakeStartsLocked(starts, first);
                    if (pending is null)
                    {
                        StartCatchUpLocked();
                        return;
                    }
                }

                (starts, _) = await router.GroupStreamStartsAsync(_user, _device, [], pending, allLarge: false, partial: true, CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (RouteUnavailableException e)
        {
            Hosting.Log.DeliveryFailed(_context.Logger, _user, _device, e);
            Close(ReasonCode.ServerUnavailable, "messages could not be read; reconnect");
        }
    }

    private static bool Contains(List<ConversationCursor> cursors, ulong conversationId)
    {
        foreach (var cursor in cursors)
        {
            if (cursor.ConversationId == conversationId)
            {
                return true;
            }
        }

        return false;
    }

    // Under _lock: the stream of a group starts (again) at a position the core has checked.
    private void AddStreamLocked(ulong conversationId, ulong position)
    {
        if (_groupStreams is not null && _groupStreams.TryGetValue(conversationId, out var stream))
        {
            stream.MoveTo(position);
        }
        else
        {
            (_groupStreams ??= [])[conversationId] = new DeliveryStream(conversationId, position);
        }
    }

    /// <summary>SYNC: in cluster mode the large groups it names are checked by their owners first.</summary>
    private async ValueTask<Handled> HandleSyncAsync(Sync sync)
    {
        if (sync.Conversations.Count > 0 && _context.Chat.Router is IGroupRouter router)
        {
            try
            {
                var (starts, notMember) = await router.GroupStreamStartsAsync(_user, _device, sync.Conversations, [], allLarge: false, partial: false, CancellationToken.None).ConfigureAwait(false);
                lock (_lock)
                {
                    foreach (var start in starts)
                    {
                        AddStreamLocked(start.ConversationId, start.Seq);
                    }
                }

                foreach (var conversationId in notMember)
                {
                    WriteError(ReasonCode.NotAMember, $"not a member of conversation {conversationId}", sync.RequestId, PacketType.Sync);
                }
            }
            catch (RouteUnavailableException)
            {
                WriteError(ReasonCode.ServerUnavailable, "a group's node did not answer; repeat the SYNC", sync.RequestId, PacketType.Sync);
                return Handled.Ok;
            }

            HandleSync(sync, groupsDone: true);
            return Handled.Ok;
        }

        HandleSync(sync, groupsDone: false);
        return Handled.Ok;
    }

    /// <summary>SYNC naming large groups: restart those streams from the given cursors.</summary>
    private void SyncGroups(Sync sync)
    {
        foreach (var cursor in sync.Conversations)
        {
            if (_context.Chat.GroupStreamStart(_user, _device, cursor.ConversationId, cursor.Seq) is { } position)
            {
                lock (_lock)
                {
                    AddStreamLocked(cursor.ConversationId, position);
                }
            }
            else
            {
                WriteError(ReasonCode.NotAMember, $"not a member of conversation {cursor.ConversationId}", sync.RequestId, PacketType.Sync);
            }
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
