using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests.Checker;

/// <summary>
/// One device of a checker run, on raw frames (the Client SDK hides what the checker must see: it chooses
/// client_msg_ids itself, dedupes before the app, and knows one endpoint). It behaves as the SDK does — at-least-once
/// SEND with the same client_msg_id and DUP after every reconnect, resume from its cursor, dedupe by
/// (conversation, seq), ACK after each read — and records every step in the history. Each connection goes to a
/// node of <c>targets</c> picked by the device's seeded random (a cluster client may land elsewhere after a fault).
/// </summary>
public sealed class CheckerDevice
{
    /// <summary>A SEND body: the client_msg_id (little-endian), so a receiver can name the message; the rest is filler.</summary>
    public const int BodyIdBytes = 8;

    private static readonly TimeSpan PingInterval = TimeSpan.FromSeconds(2);

    // A connection that hears nothing this long after PINGs is dead (a paused or partitioned node): reconnect.
    private static readonly TimeSpan SilenceLimit = TimeSpan.FromSeconds(8);

    private readonly TargetSet _targets;
    private readonly Func<string, string, string> _token;
    private readonly HistoryRecorder _history;
    private readonly Random _random;
    private readonly Mode _mode;
    private readonly int _bodySize;
    private readonly Lock _lock = new();

    // Guarded by _lock: the sends without an outcome (by client_msg_id, so a resend goes out in id order), the
    // current session, what the device has surfaced to its "application", and its cursor.
    private readonly SortedDictionary<ulong, PendingSend> _pending = [];
    private readonly HashSet<(ulong Conv, ulong Seq)> _surfaced = [];
    private readonly Dictionary<ulong, ulong> _acked = [];
    private readonly Dictionary<ulong, TaskCompletionSource<Google.Protobuf.IMessage>> _requests = [];
    private Session? _session;
    private ulong _cursor;
    private ulong _nextCmid;
    private ulong _nextRequest;
    private int _sessions;

    private readonly SemaphoreSlim _window;
    private readonly TaskCompletionSource _synced = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public enum Mode
    {
        /// <summary>Sends and receives for the whole run; DELIVERs recorded as DELIVER.</summary>
        Live,

        /// <summary>A fresh device for the final read: DELIVERs recorded as READ_INBOX, no ACK.</summary>
        FinalReader,
    }

    public CheckerDevice(string user, string device, TargetSet targets, Func<string, string, string> token,
        HistoryRecorder history, int seed, Mode mode, int window, int bodySize)
    {
        User = user;
        Name = user + "/" + device;
        DeviceId = device;
        _targets = targets;
        _token = token;
        _history = history;
        _random = new Random(seed);
        _mode = mode;
        _bodySize = Math.Max(BodyIdBytes, bodySize);
        _window = new SemaphoreSlim(Math.Max(1, window));

        // Unique per sending device and never reused: user names are unique per run, so a counter from 1 will do.
        _nextCmid = 1;
    }

    public string User { get; }

    public string DeviceId { get; }

    /// <summary>"user/device", as in the history.</summary>
    public string Name { get; }

    /// <summary>The first SYNC_DONE arrived: the backlog from the resume cursor has been received.</summary>
    public Task Synced => _synced.Task;

    public int PendingSends
    {
        get
        {
            lock (_lock)
            {
                return _pending.Count;
            }
        }
    }

    /// <summary>Highest seq acknowledged to this device (by SENT) per conversation.</summary>
    public Dictionary<ulong, ulong> AckedMaxSeq()
    {
        lock (_lock)
        {
            return new Dictionary<ulong, ulong>(_acked);
        }
    }

    /// <summary>How many distinct seqs of <paramref name="conversation"/> this device has surfaced.</summary>
    public int SurfacedCount(ulong conversation)
    {
        lock (_lock)
        {
            var n = 0;
            foreach (var (conv, _) in _surfaced)
            {
                if (conv == conversation)
                {
                    n++;
                }
            }

            return n;
        }
    }

    /// <summary>The conversations this device has surfaced messages of.</summary>
    public HashSet<ulong> SurfacedConversations()
    {
        lock (_lock)
        {
            var set = new HashSet<ulong>();
            foreach (var (conv, _) in _surfaced)
            {
                set.Add(conv);
            }

            return set;
        }
    }

    /// <summary>
    /// Waits for room in the window, then queues a new message to <paramref name="toUser"/> (a direct chat) or,
    /// when it is null, into <paramref name="conversation"/> (a group).
    /// </summary>
    public async Task SendAsync(string? toUser, ulong conversation, CancellationToken cancellationToken)
    {
        await _window.WaitAsync(cancellationToken).ConfigureAwait(false);
        lock (_lock)
        {
            var send = new PendingSend(_nextCmid++, toUser, conversation);
            _pending.Add(send.Cmid, send);
            if (_session is { } session)
            {
                WriteSend(session, send);
            }
        }
    }

    /// <summary>Pages HISTORY of <paramref name="conversation"/> from the newest back to seq 1, recording READ_CONV for every message.</summary>
    public async Task<int> ReadConversationAsync(ulong conversation, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var pages = new List<IList<Deliver>>();
        ulong before = 0;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        var retries = 0;
        for (var page = 0; page < 1_000_000; page++)
        {
            HistoryPage result;
            try
            {
                result = (HistoryPage)await RequestAsync(id => new History { RequestId = id, ConversationId = conversation, BeforeSeq = before, Limit = 200 })
                    .WaitAsync(deadline.Token).ConfigureAwait(false);
            }
            catch (IOException e) when (retries < 20 && (e.Message.Contains(nameof(ReasonCode.ServerUnavailable), StringComparison.Ordinal)
                || e.Message.Contains(nameof(ReasonCode.ServerBusy), StringComparison.Ordinal)))
            {
                // Retryable (the owner is busy or away for a moment, e.g. in a cluster): the same page again. Safe,
                // since nothing is recorded until every page is in.
                retries++;
                page--;
                await Task.Delay(500, deadline.Token).ConfigureAwait(false);
                continue;
            }

            pages.Add(result.Messages);
            if (!result.More || result.Messages.Count == 0)
            {
                break;
            }

            before = result.Messages[0].Seq;
        }

        var n = 0;
        for (var i = pages.Count - 1; i >= 0; i--)
        {
            foreach (var m in pages[i])
            {
                _history.Record(new HistoryEvent
                {
                    Op = HistoryEvent.ReadConversation, Client = Name, Conv = m.ConversationId, Seq = m.Seq,
                    Cmid = CmidOf(m), Sender = m.SenderUserId + "/" + m.SenderDeviceId,
                });
                n++;
            }
        }

        return n;
    }

    /// <summary>Creates a group of this device's user and <paramref name="members"/> (not retried: run it before any fault); returns its conversation id.</summary>
    public async Task<ulong> CreateGroupAsync(string title, IEnumerable<string> members, TimeSpan timeout)
    {
        var create = new GroupCreate { Title = title };
        create.MemberUserIds.AddRange(members);
        var result = (GroupResult)await RequestAsync(id => new GroupRequest { RequestId = id, Create = create }).WaitAsync(timeout).ConfigureAwait(false);
        return result.ConversationId;
    }

    private Task<Google.Protobuf.IMessage> RequestAsync(Func<ulong, Google.Protobuf.IMessage> request)
    {
        var tcs = new TaskCompletionSource<Google.Protobuf.IMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            var id = ++_nextRequest;
            var session = _session ?? throw new IOException(Name + ": not connected");
            _requests[id] = tcs;
            session.Enqueue(Frame(request(id)));
        }

        return tcs.Task;
    }

    /// <summary>Connects, serves, and reconnects (to a node picked by the seeded random) until <paramref name="stop"/>.</summary>
    public async Task RunAsync(CancellationToken stop)
    {
        var failures = 0;
        while (!stop.IsCancellationRequested)
        {
            var target = _targets.Pick(_random);
            var node = target.ToString();
            try
            {
                if (await RunSessionAsync(target, node, stop).ConfigureAwait(false))
                {
                    failures = 0;
                }
            }
            catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or InvalidDataException or TimeoutException)
            {
                // Could not connect, or the session setup failed: back off and pick a node again.
            }

            if (stop.IsCancellationRequested)
            {
                return;
            }

            // Backoff with full jitter, short: a checker run wants many faults, not long pauses.
            failures++;
            var ceiling = Math.Min(2000, 50 << Math.Min(failures, 6));
            try
            {
                await Task.Delay(_random.Next(ceiling / 2, ceiling), stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>One connection: false when the broker refused it (CONNACK reason), true once it was up.</summary>
    private async Task<bool> RunSessionAsync(IPEndPoint target, string node, CancellationToken stop)
    {
        using var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using (var connectTimeout = CancellationTokenSource.CreateLinkedTokenSource(stop))
        {
            connectTimeout.CancelAfter(TimeSpan.FromSeconds(5));
            await socket.ConnectAsync(target, connectTimeout.Token).ConfigureAwait(false);
        }

        await using var stream = new NetworkStream(socket, ownsSocket: false);
        var reader = PipeReader.Create(stream);
        ulong resume;
        lock (_lock)
        {
            resume = _cursor;
        }

        await stream.WriteAsync(Frame(new Connect
        {
            ProtocolVersion = ProtocolConstants.ProtocolVersion,
            UserId = User,
            DeviceId = DeviceId,
            Token = _token(User, DeviceId),
            ResumeInboxSeq = resume,
            KeepaliveS = 30,
            ClientInfo = "chatbroker-check",
        }), stop).ConfigureAwait(false);

        using var sessionStop = CancellationTokenSource.CreateLinkedTokenSource(stop);
        sessionStop.CancelAfter(TimeSpan.FromSeconds(10)); // CONNACK must come within this
        var connack = await ReadConnackAsync(reader, sessionStop.Token).ConfigureAwait(false);
        if (connack.Reason != ReasonCode.Success)
        {
            _history.Record(new HistoryEvent { Op = HistoryEvent.Disconnect, Client = Name, Node = node, Conn = _sessions, Reason = "CONNACK " + connack.Reason });
            return false;
        }

        var conn = ++_sessions;

        sessionStop.CancelAfter(Timeout.InfiniteTimeSpan);
        var session = new Session(node, conn);
        _history.Record(new HistoryEvent { Op = HistoryEvent.Connect, Client = Name, Node = node, Conn = conn });
        lock (_lock)
        {
            _session = session;

            // Resend what has no outcome yet, in client_msg_id order, before anything new (the lock keeps new sends out).
            foreach (var send in _pending.Values)
            {
                WriteSend(session, send);
            }
        }

        var writing = WriteLoopAsync(session, stream, sessionStop.Token);
        var pinging = PingLoopAsync(session, sessionStop);
        var end = "closed";
        try
        {
            end = await ReadLoopAsync(session, reader, sessionStop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or InvalidDataException)
        {
            end = stop.IsCancellationRequested ? "stopped" : session.Silent ? "silent" : e.GetType().Name;
        }
        finally
        {
            lock (_lock)
            {
                _session = null;
                foreach (var tcs in _requests.Values)
                {
                    tcs.TrySetException(new IOException("connection lost during a request"));
                }

                _requests.Clear();
            }

            session.Complete();
            await sessionStop.CancelAsync().ConfigureAwait(false);
            socket.Close(0);
            await Task.WhenAll(writing, pinging).ConfigureAwait(false);
            await reader.CompleteAsync().ConfigureAwait(false);
            _history.Record(new HistoryEvent { Op = HistoryEvent.Disconnect, Client = Name, Node = node, Conn = conn, Reason = end });
        }

        return true;
    }

    private static async Task<Connack> ReadConnackAsync(PipeReader reader, CancellationToken cancellationToken)
    {
        while (true)
        {
            var read = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = read.Buffer;
            if (FrameReader.TryRead(buffer, ProtocolConstants.MaxRemainingLength, out var frame, out var consumed, out var error))
            {
                if (frame.Type != PacketType.Connack)
                {
                    throw new InvalidDataException("expected CONNACK, got " + frame.Type);
                }

                var connack = Connack.Parser.ParseFrom(frame.Body);
                reader.AdvanceTo(consumed);
                return connack;
            }

            if (error != ReasonCode.Success)
            {
                throw new InvalidDataException("malformed frame from the broker: " + error);
            }

            if (read.IsCompleted)
            {
                throw new IOException("the broker closed the connection before CONNACK");
            }

            reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    private async Task<string> ReadLoopAsync(Session session, PipeReader reader, CancellationToken cancellationToken)
    {
        while (true)
        {
            var read = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = read.Buffer;
            string? end = null;
            var any = false;
            while (end is null && FrameReader.TryRead(buffer, ProtocolConstants.MaxRemainingLength, out var frame, out var consumed, out var error))
            {
                end = Dispatch(session, frame);
                buffer = buffer.Slice(consumed);
                any = true;
            }

            if (any)
            {
                session.LastReceive = Environment.TickCount64;
                AckIfMoved(session);
            }

            if (end is not null)
            {
                return end;
            }

            if (read.IsCompleted)
            {
                return "closed";
            }

            reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>Handles one frame; returns why the session ends, or null to go on.</summary>
    private string? Dispatch(Session session, in Frame frame)
    {
        switch (frame.Type)
        {
            case PacketType.Sent:
                OnSent(session, Sent.Parser.ParseFrom(frame.Body));
                return null;
            case PacketType.Deliver:
                OnDeliver(session, Deliver.Parser.ParseFrom(frame.Body));
                return null;
            case PacketType.SyncDone:
                var done = SyncDone.Parser.ParseFrom(frame.Body);
                lock (_lock)
                {
                    _cursor = Math.Max(_cursor, done.InboxSeq);
                }

                _synced.TrySetResult();
                return null;
            case PacketType.HistoryPage:
                var page = HistoryPage.Parser.ParseFrom(frame.Body);
                Answer(page.RequestId, page);
                return null;
            case PacketType.GroupResult:
                var group = GroupResult.Parser.ParseFrom(frame.Body);
                Answer(group.RequestId, group);
                return null;
            case PacketType.Error:
                return OnError(session, Error.Parser.ParseFrom(frame.Body));
            case PacketType.Disconnect:
                return "DISCONNECT " + Disconnect.Parser.ParseFrom(frame.Body).Reason;
            default:
                return null; // PONG, RECEIPT: nothing to record
        }
    }

    private void OnSent(Session session, Sent sent)
    {
        bool freed;
        lock (_lock)
        {
            freed = _pending.Remove(sent.ClientMsgId);
            if (sent.Seq > _acked.GetValueOrDefault(sent.ConversationId))
            {
                _acked[sent.ConversationId] = sent.Seq;
            }

            // The device's own message: the broker does not echo it to this device, the SENT stands for it.
            _surfaced.Add((sent.ConversationId, sent.Seq));
        }

        _history.Record(new HistoryEvent
        {
            Op = HistoryEvent.Sent, Client = Name, Node = session.Node, Conn = session.Conn,
            Cmid = sent.ClientMsgId, Conv = sent.ConversationId, Seq = sent.Seq,
        });
        if (freed)
        {
            _window.Release();
        }
    }

    private void OnDeliver(Session session, Deliver deliver)
    {
        _history.Record(new HistoryEvent
        {
            Op = _mode == Mode.Live ? HistoryEvent.Deliver : HistoryEvent.ReadInbox,
            Client = Name, Node = session.Node, Conn = session.Conn, Conv = deliver.ConversationId, Seq = deliver.Seq,
            Inbox = deliver.InboxSeq, Cmid = CmidOf(deliver), Sender = deliver.SenderUserId + "/" + deliver.SenderDeviceId,
        });
        lock (_lock)
        {
            _surfaced.Add((deliver.ConversationId, deliver.Seq)); // the client's dedupe key
            _cursor = Math.Max(_cursor, deliver.InboxSeq);
        }
    }

    private string? OnError(Session session, Error error)
    {
        if (error.InReplyTo == PacketType.Send)
        {
            if (error.Reason is ReasonCode.RateLimited or ReasonCode.ServerBusy or ReasonCode.ServerUnavailable)
            {
                // Retryable: the SEND goes out again (same id, DUP) after retry_after on this session, or on the next.
                // Recorded: in a cluster the checker counts these per owner node of the conversation.
                _history.Record(new HistoryEvent
                {
                    Op = HistoryEvent.SendRefused, Client = Name, Node = session.Node, Conn = session.Conn,
                    Cmid = error.RequestId, Reason = error.Reason.ToString(),
                });
                _ = ResendLaterAsync(session, error.RequestId, TimeSpan.FromMilliseconds(Math.Max(50, error.RetryAfterMs)));
            }
            else
            {
                bool freed;
                lock (_lock)
                {
                    freed = _pending.Remove(error.RequestId);
                }

                _history.Record(new HistoryEvent
                {
                    Op = HistoryEvent.SendFailed, Client = Name, Node = session.Node, Conn = session.Conn,
                    Cmid = error.RequestId, Reason = error.Reason.ToString(),
                });
                if (freed)
                {
                    _window.Release();
                }
            }
        }
        else if (error.InReplyTo is PacketType.History or PacketType.GroupRequest)
        {
            lock (_lock)
            {
                if (_requests.Remove(error.RequestId, out var tcs))
                {
                    tcs.TrySetException(new IOException($"{error.InReplyTo} failed: {error.Reason} {error.Message}"));
                }
            }
        }

        return ReasonCodes.IsFatal(error.Reason) ? "ERROR " + error.Reason : null;
    }

    private void Answer(ulong requestId, Google.Protobuf.IMessage answer)
    {
        lock (_lock)
        {
            if (_requests.Remove(requestId, out var tcs))
            {
                tcs.TrySetResult(answer);
            }
        }
    }

    private async Task ResendLaterAsync(Session session, ulong cmid, TimeSpan delay)
    {
        await Task.Delay(delay).ConfigureAwait(false);
        lock (_lock)
        {
            if (_session == session && _pending.TryGetValue(cmid, out var send))
            {
                WriteSend(session, send);
            }
        }
    }

    // Under _lock.
    private void WriteSend(Session session, PendingSend send)
    {
        send.Attempts++;
        var body = new byte[_bodySize];
        BinaryPrimitives.WriteUInt64LittleEndian(body, send.Cmid);
        body.AsSpan(BodyIdBytes).Fill((byte)'c');
        var message = new Send { ClientMsgId = send.Cmid, Body = Google.Protobuf.ByteString.CopyFrom(body) };
        if (send.ToUser is not null)
        {
            message.ToUserId = send.ToUser;
        }
        else
        {
            message.ConversationId = send.Conversation;
        }

        session.Enqueue(Frame(message, send.Attempts > 1 ? FrameFlags.Dup : FrameFlags.None));
        _history.Record(new HistoryEvent
        {
            Op = HistoryEvent.Send, Client = Name, Node = session.Node, Conn = session.Conn, Cmid = send.Cmid, To = send.ToUser,
            Conv = send.ToUser is null ? send.Conversation : 0, Attempt = send.Attempts,
        });
    }

    private void AckIfMoved(Session session)
    {
        if (_mode != Mode.Live)
        {
            return;
        }

        ulong cursor;
        lock (_lock)
        {
            cursor = _cursor;
        }

        if (cursor > session.LastAck)
        {
            session.LastAck = cursor;
            session.Enqueue(Frame(new Ack { InboxSeq = cursor }));
            _history.Record(new HistoryEvent { Op = HistoryEvent.Ack, Client = Name, Node = session.Node, Conn = session.Conn, Inbox = cursor });
        }
    }

    private static async Task WriteLoopAsync(Session session, NetworkStream stream, CancellationToken cancellationToken)
    {
        try
        {
            var reader = session.Outbox.Reader;
            while (await reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
            {
                while (reader.TryRead(out var frame))
                {
                    await stream.WriteAsync(frame, cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private static async Task PingLoopAsync(Session session, CancellationTokenSource sessionStop)
    {
        try
        {
            while (true)
            {
                await Task.Delay(PingInterval, sessionStop.Token).ConfigureAwait(false);
                if (Environment.TickCount64 - Volatile.Read(ref session.LastReceive) > (long)SilenceLimit.TotalMilliseconds)
                {
                    session.Silent = true;
                    await sessionStop.CancelAsync().ConfigureAwait(false);
                    return;
                }

                session.Enqueue(PingFrame);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>The client_msg_id a checker body starts with; 0 for SYSTEM messages (group changes), whose body is the broker's.</summary>
    private static ulong CmidOf(Deliver deliver) =>
        deliver.ContentType != ContentType.System && deliver.Body.Length >= BodyIdBytes ? BinaryPrimitives.ReadUInt64LittleEndian(deliver.Body.Span) : 0;

    private static byte[] Frame(Google.Protobuf.IMessage message, FrameFlags flags = FrameFlags.None)
    {
        var buffer = new ArrayBufferWriter<byte>(64);
        FrameWriter.Write(buffer, message, flags);
        return buffer.WrittenSpan.ToArray();
    }

    private static readonly byte[] PingFrame = Frame(new Ping());

    private sealed class PendingSend(ulong cmid, string? toUser, ulong conversation)
    {
        public ulong Cmid { get; } = cmid;

        public string? ToUser { get; } = toUser;

        public ulong Conversation { get; } = conversation;

        public int Attempts { get; set; }
    }

    private sealed class Session(string node, int conn)
    {
        public string Node { get; } = node;

        public int Conn { get; } = conn;

        public Channel<byte[]> Outbox { get; } = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });

        public long LastReceive = Environment.TickCount64;

        public ulong LastAck;

        public volatile bool Silent;

        public void Enqueue(byte[] frame) => Outbox.Writer.TryWrite(frame);

        public void Complete() => Outbox.Writer.TryComplete();
    }
}
