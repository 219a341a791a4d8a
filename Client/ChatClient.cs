using System.Threading.Channels;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Client;

/// <summary>
/// A device's connection to the broker: connect with a token, send with idempotent retry, receive a
/// deduplicated message stream, reconnect and resume by itself. Thread-safe: any thread may call any member.
/// <para>
/// Split by concern: this file is the public API and the queues; <c>ChatClient.Connection.cs</c> opens
/// connections and reconnects; <c>ChatClient.Reading.cs</c> is the read loop (DELIVER, SENT, ERROR ...);
/// <c>ChatClient.Writing.cs</c> the writer and keepalive loops.
/// </para>
/// <para>
/// client_msg_id: (Unix milliseconds at construction) &lt;&lt; 20, plus a counter. Unique per device as long
/// as one client instance sends fewer than 2^20 (about a million) messages per millisecond it has been
/// alive, and across restarts for the same reason, without persisting anything.
/// </para>
/// Lock: <c>_lock</c> guards the pending maps and the connection state fields; it is never held across I/O
/// or while completing a task.
/// </summary>
public sealed partial class ChatClient : IAsyncDisposable
{
    private readonly ChatClientOptions _options;
    private readonly TimeProvider _time;
    private readonly Channel<ReceivedMessage> _messages;
    private readonly Channel<ReceivedReceipt> _receipts;
    private readonly Channel<ConnectionEvent> _events;
    private readonly Channel<Outbound> _outbound;
    private readonly ulong _clientMsgIdBase;
    private long _clientMsgIdCounter;
    private long _requestIdCounter;

    private readonly Lock _lock = new();
    // Guarded by _lock.
    private readonly Dictionary<ulong, PendingSend> _pendingSends = [];
    // Sends beyond MaxPendingSends, in call order; promoted into _pendingSends as SENTs free slots.
    private readonly Queue<PendingSend> _waitingSends = new();
    private readonly Dictionary<ulong, PendingHistory> _pendingHistory = [];
    private readonly Dictionary<ulong, PendingSettings> _pendingSettings = [];
    private ChatConnectionState _state;
    private ReasonCode _closedReason;
    private bool _disposed;
    private bool _stopRequested;
    private CancellationTokenSource? _runCts;
    private Task? _supervisor;
    private Connection? _connection;
    private int _generation;
    private TaskCompletionSource _sync = NewSignal();
    // Sends refused with RATE_LIMITED/SERVER_BUSY/SERVER_UNAVAILABLE, and the time (TimeProvider timestamp) until
    // which the writer holds back SENDs; 0 = open.
    private List<PendingSend> _refusedSends = [];
    private long _sendGateUntil;

    // Written by the read loop only.
    private ulong _cursor;
    private int _ackQueued;
    private int _serverMaxFrameSize = ProtocolConstants.DefaultMaxFrameSize;

    public ChatClient(ChatClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        InitEndPoints();
        _time = options.TimeProvider;
        _cursor = options.ResumeInboxSeq;
        _messages = Channel.CreateBounded<ReceivedMessage>(new BoundedChannelOptions(options.MessageBufferSize)
        {
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _receipts = Channel.CreateBounded<ReceivedReceipt>(new BoundedChannelOptions(options.ReceiptBufferSize)
        {
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.DropOldest,
        });
        _events = Channel.CreateBounded<ConnectionEvent>(new BoundedChannelOptions(256)
        {
            FullMode = BoundedChannelFullMode.DropOldest,
        });
        // Unbounded, but what can pile up is bounded elsewhere: sends by MaxPendingSends, acks by coalescing.
        _outbound = Channel.CreateUnbounded<Outbound>(new UnboundedChannelOptions { SingleReader = true });
        _clientMsgIdBase = (ulong)_time.GetUtcNow().ToUnixTimeMilliseconds() << 20;
    }

    /// <summary>
    /// Received messages, deduplicated by (conversation id, seq), in arrival order. Bounded: when the app does
    /// not read, the client stops reading the socket, the broker eventually disconnects the device as a slow
    /// consumer, and the client catches up from <see cref="Cursor"/> when it reconnects. Use
    /// <c>Messages.ReadAllAsync()</c> for an <see cref="IAsyncEnumerable{T}"/>.
    /// </summary>
    public ChannelReader<ReceivedMessage> Messages => _messages.Reader;

    /// <summary>Delivered/read receipts for this user's messages (needs <see cref="Capability.Receipts"/>).</summary>
    public ChannelReader<ReceivedReceipt> Receipts => _receipts.Reader;

    /// <summary>Connection state changes: Connected, Disconnected(reason), Reconnecting(attempt, delay), Closed(reason).</summary>
    public ChannelReader<ConnectionEvent> ConnectionEvents => _events.Reader;

    /// <summary>The last received inbox_seq (DELIVERs handed to <see cref="Messages"/>, and SYNC_DONE seams). Persist it and pass it back as <see cref="ChatClientOptions.ResumeInboxSeq"/>.</summary>
    public ulong Cursor => Volatile.Read(ref _cursor);

    public ChatConnectionState State
    {
        get
        {
            lock (_lock)
            {
                return _state;
            }
        }
    }

    /// <summary>Sends awaiting SENT (on the wire or waiting for a slot).</summary>
    public int PendingSends
    {
        get
        {
            lock (_lock)
            {
                return _pendingSends.Count + _waitingSends.Count;
            }
        }
    }

    /// <summary>Sends a message to an existing conversation. Completes when the broker made it durable (SENT).</summary>
    /// <remarks>
    /// Many sends may be in flight at once (up to <see cref="ChatClientOptions.MaxPendingSends"/>; beyond that
    /// this waits for a slot). A pending send survives reconnects: it is re-sent with the same client_msg_id and
    /// DUP. RATE_LIMITED, SERVER_BUSY and SERVER_UNAVAILABLE are retried after retry_after_ms; other errors
    /// fault the task with <see cref="ChatClientException"/>. <paramref name="cancellationToken"/> only cancels
    /// the wait for a slot: once queued, a message cannot be unsent.
    /// </remarks>
    public Task<SentResult> SendAsync(ulong conversationId, ReadOnlyMemory<byte> body, ContentType contentType = ContentType.Text, CancellationToken cancellationToken = default)
    {
        if (conversationId == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(conversationId), "Conversation ids start at 1.");
        }

        return SendCoreAsync(new Send { ConversationId = conversationId, ContentType = contentType, Body = ByteString.CopyFrom(body.Span) }, cancellationToken);
    }

    /// <summary>Sends the first (or any) message of a direct chat with <paramref name="toUserId"/>; SENT names the conversation.</summary>
    public Task<SentResult> SendAsync(string toUserId, ReadOnlyMemory<byte> body, ContentType contentType = ContentType.Text, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(toUserId);
        return SendCoreAsync(new Send { ToUserId = toUserId, ContentType = contentType, Body = ByteString.CopyFrom(body.Span) }, cancellationToken);
    }

    /// <summary>Marks a conversation read up to <paramref name="upToSeq"/> (the broker sends READ receipts). Queued; sent on the current or next connection.</summary>
    public ValueTask ReadAsync(ulong conversationId, ulong upToSeq)
    {
        Enqueue(Outbound.Of(new Read { ConversationId = conversationId, UpToSeq = upToSeq }));
        return ValueTask.CompletedTask;
    }

    /// <summary>Acknowledges the inbox up to <paramref name="inboxSeq"/> (for apps with <see cref="ChatClientOptions.AutoAck"/> off). Queued.</summary>
    public ValueTask AckAsync(ulong inboxSeq)
    {
        ArgumentOutOfRangeException.ThrowIfZero(inboxSeq);
        Enqueue(Outbound.Of(new Ack { InboxSeq = inboxSeq }));
        return ValueTask.CompletedTask;
    }

    /// <summary>A page of older messages of a conversation (before <paramref name="beforeSeq"/>, 0 = newest). Re-sent after a reconnect until answered.</summary>
    public async Task<HistoryResult> HistoryAsync(ulong conversationId, ulong beforeSeq = 0, uint limit = 0, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfZero(conversationId);
        var request = new History
        {
            RequestId = (ulong)Interlocked.Increment(ref _requestIdCounter),
            ConversationId = conversationId,
            BeforeSeq = beforeSeq,
            Limit = limit,
        };
        var pending = new PendingHistory(request);
        lock (_lock)
        {
            ThrowIfUnusable();
            _pendingHistory.Add(request.RequestId, pending);
        }

        Enqueue(Outbound.Of(pending));
        using var registration = cancellationToken.Register(() =>
        {
            lock (_lock)
            {
                _pendingHistory.Remove(request.RequestId);
            }

            pending.TryCancel(cancellationToken);
        });
        return await pending.Task.ConfigureAwait(false);
    }

    /// <summary>
    /// Reads or changes the user's settings (SETTINGS, docs/protocol.md §5): who may see the user's presence and the
    /// contact list that "contacts" refers to. Leave a part null to keep it. Re-sent after a reconnect until answered;
    /// a refusal (e.g. BAD_REQUEST past privacy.max_contacts) faults the task with a <see cref="ChatClientException"/>.
    /// </summary>
    public async Task<SettingsResult> SettingsAsync(
        PresenceVisibility? presenceVisibility = null, IEnumerable<string>? replaceContacts = null,
        IEnumerable<string>? addContacts = null, IEnumerable<string>? removeContacts = null, CancellationToken cancellationToken = default)
    {
        var request = new Settings { RequestId = (ulong)Interlocked.Increment(ref _requestIdCounter) };
        if (presenceVisibility is { } visibility)
        {
            request.SetPresenceVisibility = true;
            request.PresenceVisibility = visibility;
        }

        if (replaceContacts is not null)
        {
            request.ReplaceContacts = true;
            request.Contacts.AddRange(replaceContacts);
        }

        if (addContacts is not null)
        {
            request.AddContacts.AddRange(addContacts);
        }

        if (removeContacts is not null)
        {
            request.RemoveContacts.AddRange(removeContacts);
        }

        var pending = new PendingSettings(request);
        lock (_lock)
        {
            ThrowIfUnusable();
            _pendingSettings.Add(request.RequestId, pending);
        }

        Enqueue(Outbound.Of(pending));
        using var registration = cancellationToken.Register(() =>
        {
            lock (_lock)
            {
                _pendingSettings.Remove(request.RequestId);
            }

            pending.TryCancel(cancellationToken);
        });
        return await pending.Task.ConfigureAwait(false);
    }

    /// <summary>Completes when SYNC_DONE of the current (or next) connection arrives: the backlog is in <see cref="Messages"/> and what follows is live.</summary>
    public Task WaitForSyncAsync(CancellationToken cancellationToken = default)
    {
        Task task;
        lock (_lock)
        {
            task = _sync.Task;
        }

        return task.WaitAsync(cancellationToken);
    }

    private ulong NextClientMsgId() => _clientMsgIdBase + (ulong)Interlocked.Increment(ref _clientMsgIdCounter);

    /// <summary>
    /// Queues a send. The id is assigned and the send queued under one lock, so the wire order of SENDs is the
    /// order of the calls (and of the ids): a conversation's messages keep the order the app sent them in.
    /// Beyond MaxPendingSends a send waits in a FIFO queue (not on the wire) until a SENT frees a slot.
    /// </summary>
    private Task<SentResult> SendCoreAsync(Send send, CancellationToken cancellationToken)
    {
        send.ClientMsgId = _clientMsgIdBase; // same varint size as the real id
        var bodyLength = send.CalculateSize();
        if (bodyLength > Volatile.Read(ref _serverMaxFrameSize))
        {
            return Task.FromException<SentResult>(new ChatClientException(ReasonCode.FrameTooLarge, $"a SEND of {bodyLength} bytes is over the server's max frame size"));
        }

        cancellationToken.ThrowIfCancellationRequested();
        PendingSend pending;
        lock (_lock)
        {
            if (_disposed || _state == ChatConnectionState.Closed)
            {
                return Task.FromException<SentResult>(_disposed ? new ObjectDisposedException(nameof(ChatClient)) : new ChatClientException(_closedReason, "the client is closed"));
            }

            send.ClientMsgId = NextClientMsgId();
            pending = new PendingSend(send);
            if (_waitingSends.Count == 0 && _pendingSends.Count < _options.MaxPendingSends)
            {
                _pendingSends.Add(send.ClientMsgId, pending);
                _outbound.Writer.TryWrite(Outbound.Of(pending));
                return pending.Task;
            }

            _waitingSends.Enqueue(pending);
        }

        if (cancellationToken.CanBeCanceled)
        {
            // Only a send still waiting for a slot can be cancelled: promotion skips completed ones.
            var registration = cancellationToken.Register(static state =>
            {
                var (client, waiting, token) = ((ChatClient, PendingSend, CancellationToken))state!;
                lock (client._lock)
                {
                    if (client._pendingSends.ContainsKey(waiting.Id))
                    {
                        return;
                    }

                    waiting.TryCancel(token);
                }
            }, (this, pending, cancellationToken));
            pending.Task.ContinueWith(static (_, r) => ((CancellationTokenRegistration)r!).Dispose(), registration, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        return pending.Task;
    }

    /// <summary>Moves waiting sends into free slots, in call order. Under _lock.</summary>
    private void PromoteWaitingSendsLocked()
    {
        while (_waitingSends.Count > 0 && _pendingSends.Count < _options.MaxPendingSends)
        {
            var next = _waitingSends.Dequeue();
            if (next.IsDone)
            {
                continue; // cancelled while waiting
            }

            _pendingSends.Add(next.Id, next);
            _outbound.Writer.TryWrite(Outbound.Of(next));
        }
    }

    private void Enqueue(in Outbound item)
    {
        if (!_outbound.Writer.TryWrite(item))
        {
            throw new ObjectDisposedException(nameof(ChatClient));
        }
    }

    // Under _lock.
    private void ThrowIfUnusable()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_state == ChatConnectionState.Closed)
        {
            throw new ChatClientException(_closedReason, "the client is closed");
        }
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private void Publish(ChatConnectionState state, ReasonCode reason = ReasonCode.Success, string? message = null, int attempt = 0, TimeSpan delay = default)
    {
        lock (_lock)
        {
            if (_state == ChatConnectionState.Closed && state != ChatConnectionState.Closed)
            {
                return;
            }

            _state = state;
        }

        _events.Writer.TryWrite(new ConnectionEvent(state, reason, message, attempt, delay));
    }

    /// <summary>Fails every pending send and history request (the client is closed for good).</summary>
    private void FailPending(Exception error)
    {
        PendingSend[] sends;
        PendingHistory[] histories;
        PendingSettings[] settings;
        lock (_lock)
        {
            sends = [.. _pendingSends.Values, .. _waitingSends];
            histories = [.. _pendingHistory.Values];
            settings = [.. _pendingSettings.Values];
            _pendingSends.Clear();
            _waitingSends.Clear();
            _pendingHistory.Clear();
            _pendingSettings.Clear();
        }

        foreach (var request in settings)
        {
            request.TryFail(error);
        }

        foreach (var send in sends)
        {
            send.TryFail(error);
        }

        foreach (var history in histories)
        {
            history.TryFail(error);
        }
    }
}
