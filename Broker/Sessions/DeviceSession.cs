using System.Buffers;
using System.Net.Sockets;
using ChatBroker.Broker.Hosting;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Transport;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// One device's connection: reads frames off its transport (<see cref="IDeviceTransport"/>: a TCP socket, or in
/// tests an in-memory pipe), runs the protocol state machine, hands requests to the messaging core and delivers
/// the device's inbox in order. Split by concern: this file is the read loop and the session's life;
/// <c>DeviceSession.Packets.cs</c> handles each packet type; <c>DeviceSession.Delivery.cs</c> is the ordered
/// inbox delivery (live and catch-up).
/// <para>
/// Memory: an idle phone is the common case, so an idle session holds as little as possible. It waits for
/// data without a buffer (<see cref="IDeviceTransport.WaitReadableAsync"/>, a zero-byte receive on a socket),
/// so it holds no receive buffer: one is rented when bytes arrive and returned as soon as
/// every complete frame in it was handled. A registered session waits without a cancellation token (a
/// registration per waiting receive would cost every idle phone ~80 bytes): shutdown reaches it through the
/// registry instead (<see cref="DeviceConnectionHandler"/>). The read loop is the session's only state machine.
/// </para>
/// </summary>
internal sealed partial class DeviceSession : IDeviceLink, IOutboxOwner, IThreadPoolWorkItem
{
    private const int ReceiveChunk = 4096;

    // The session's one lock: inbox position and group streams, SENDs in flight and their replies, and the
    // outbox's queue. One per concern cost 40 bytes each for every idle phone; they are rarely contended, since
    // each guards one device's state. A monitor on the outbox rather than a System.Threading.Lock: the 40 bytes
    // of one more object per idle phone (a monitor needs no object of its own until contended). Never held
    // across I/O or an await.
    private readonly object _lock;
    private readonly BrokerContext _context;
    private readonly IDeviceTransport _transport;
    private readonly long _connectionId;
    private readonly IConnectionOwner _owner;
    private readonly SessionOutbox _outbox;
    private readonly ProtocolStateMachine _state = new(ProtocolRole.Server);
    private readonly int _maxFrameSize;
    private string _user = "";
    private string _device = "";
    private ulong _capabilities;
    private long _keepaliveWindowMs;
    private long _lastReceivedMs = Environment.TickCount64;
    private int _closing;
    private bool _registered;
    // Created by the first rate-limited request (an idle phone makes none); only the read loop uses it.
    private RateBuckets? _rates;
    // Owned by the read loop: entered around the handling of one receive, and passed to the store with this
    // session's appends and cursor moves, so that appends of other sessions this thread writes along with its
    // own complete here, outside every lock (AppendCompletionScope). Made at the first receive.
    private AppendCompletionScope? _appendCompletions;

    public DeviceSession(BrokerContext context, IDeviceTransport transport, long connectionId, IConnectionOwner owner)
    {
        _context = context;
        _transport = transport;
        _connectionId = connectionId;
        _owner = owner;
        _maxFrameSize = context.Options.Tcp.MaxFrameBytes;
        var session = context.Options.Session;
        _outbox = new SessionOutbox(transport, session.MaxOutboundBytes, session.MaxOutboundFrames, this);
        _lock = _outbox;
    }

    public string UserId => _user;

    private RateBuckets Rates => _rates ??= new RateBuckets();

    public string DeviceId => _device;

    public ulong Capabilities => _capabilities;

    /// <summary>True when nothing arrived for 1.5 × the negotiated keepalive (checked by <see cref="KeepaliveMonitor"/>).</summary>
    internal bool IsKeepaliveExpired(long nowMs) =>
        _keepaliveWindowMs > 0 && nowMs - Volatile.Read(ref _lastReceivedMs) > _keepaliveWindowMs;

    // Queued by the handler: the accept loop goes on accepting while this connection starts on the pool. Also
    // what a transport that notifies readiness (INotifyingTransport) calls once data has arrived for a session
    // whose read loop had returned to wait (on its event thread, or queued to the pool).
    void IThreadPoolWorkItem.Execute() => _ = RunAsync();

    // True while the read loop has returned to wait for data through INotifyingTransport: the next activation
    // starts with a receive (the wait is over) and without the handshake deadline (it is registered).
    private bool _suspended;

    /// <summary>
    /// The read loop. With a transport that notifies readiness (<see cref="INotifyingTransport"/>, the TCP
    /// listener's with tcp.readiness_poller), a registered session that has nothing left to parse does not stay
    /// suspended in an await: it asks to be called when data arrives and returns, so an idle connection holds no
    /// state machine (a box of ≈ 272 bytes, docs/performance.md "Issue 21"); the call starts the next activation
    /// with a receive. The boxes of running activations are pooled (<see cref="System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder"/>),
    /// so a wake-up allocates none. The session's end (the finally below) runs only in the activation that
    /// actually ends, never in one that returned to wait.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask RunAsync()
    {
        var stopping = _owner.Stopping;
        var resumed = _suspended;
        _suspended = false;
        var waiting = false;
        // Only until CONNECT (shared with the connections accepted at about the same time, and dropped once
        // the session is registered): an idle authenticated connection holds no timer.
        var handshake = resumed ? default : _context.Handshakes.Next();
        var closeReason = ReasonCode.NormalDisconnect;
        Exception? failure = null;
        // Received bytes not parsed yet are buffer[0..length): never more than one frame, which FrameReader
        // bounds by tcp.max_frame_bytes before its body arrives. No buffer while length is 0.
        byte[]? buffer = null;
        var length = 0;
        try
        {
            while (Volatile.Read(ref _closing) == 0)
            {
                if (length == 0)
                {
                    if (buffer is not null)
                    {
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = null;
                    }

                    if (_registered && handshake.CanBeCanceled)
                    {
                        handshake = default;
                        // From here the receive waits without a token and shutdown comes through the registry;
                        // a session that registered just as that sweep ran may have been missed, so look once.
                        Interlocked.MemoryBarrier();
                        stopping.ThrowIfCancellationRequested();
                    }

                    if (resumed)
                    {
                        resumed = false; // the notification that started this activation: bytes (or the end) are there
                    }
                    else if (_registered && !handshake.CanBeCanceled && _transport is INotifyingTransport notifying)
                    {
                        // Return instead of awaiting: the transport calls Execute when data arrives, which may be
                        // at once and on another thread, so nothing of the session is touched after asking.
                        waiting = true;
                        _suspended = true;
                        notifying.NotifyWhenReadable(this);
                        return;
                    }
                    else
                    {
                        // Wait for readability without a buffer: an idle connection holds none.
                        await _transport.WaitReadableAsync(handshake).ConfigureAwait(false);
                    }

                    buffer = ArrayPool<byte>.Shared.Rent(ReceiveChunk);
                }
                else if (length == buffer!.Length)
                {
                    // A frame larger than the buffer is arriving (its declared length was within the limit).
                    var bigger = ArrayPool<byte>.Shared.Rent(buffer.Length * 2);
                    buffer.AsSpan(0, length).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = bigger;
                }

                var received = await _transport.ReceiveAsync(buffer.AsMemory(length), handshake).ConfigureAwait(false);
                if (received == 0)
                {
                    // The peer closed (or half-closed). Bytes left unparsed mean it stopped inside a frame:
                    // a half-closed peer can still read, so say why (best effort) before closing.
                    if (length > 0)
                    {
                        closeReason = ReasonCode.TruncatedFrame;
                        _context.Metrics.ProtocolErrors.Add(1, new KeyValuePair<string, object?>("reason", closeReason.ToString()));
                        await FailAsync(ReasonCode.TruncatedFrame, "the stream ended inside a frame").ConfigureAwait(false);
                    }

                    break;
                }

                length += received;
                Volatile.Write(ref _lastReceivedMs, Environment.TickCount64);

                // Replies and deliveries written while the frames are handled are sent by this thread once the
                // handler returns or suspends, not by a pool thread woken per outbox: `sends` collects them (null
                // when this thread already runs a read loop's scope, which then sends them). Appends of other
                // sessions that this thread wrote along with its own are completed here too, before the sends,
                // so their replies join them (AppendCompletionScope).
                ValueTask<ProcessResult> processing;
                var sends = OutboxFlushScope.Open();
                var completions = _appendCompletions ??= new AppendCompletionScope();
                var completing = completions.Enter();
                try
                {
                    processing = ProcessFramesAsync(buffer, length, stopping);
                }
                finally
                {
                    if (completing)
                    {
                        completions.Exit();
                    }

                    sends?.SendAll();
                }

                var result = await processing.ConfigureAwait(false);
                if (result.Reason != ReasonCode.Success)
                {
                    _context.Metrics.ProtocolErrors.Add(1, new KeyValuePair<string, object?>("reason", result.Reason.ToString()));
                    await FailAsync(result.Reason, result.Message, result.RequestId, result.InReplyTo).ConfigureAwait(false);
                    closeReason = result.Reason;
                    break;
                }

                // Keep the start of a partial frame at the front (usually nothing: frames arrive whole).
                length -= result.Consumed;
                if (length > 0 && result.Consumed > 0)
                {
                    buffer.AsSpan(result.Consumed, length).CopyTo(buffer);
                }
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            closeReason = ReasonCode.ServerShuttingDown;
            await CloseForShutdownAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            closeReason = ReasonCode.KeepaliveTimeout;
            await FailAsync(ReasonCode.KeepaliveTimeout, $"no CONNECT within {_context.Options.Tcp.ConnectTimeout.TotalSeconds:0.#}s").ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            // The peer vanished or the session was closed from elsewhere (takeover, slow consumer, keepalive).
        }
        catch (Exception e)
        {
            failure = e;
        }
        finally
        {
            if (!waiting)
            {
                await EndRunAsync(buffer, closeReason, failure).ConfigureAwait(false);
            }
        }
    }

    // The read loop has ended for good: the session's end, then the transport and the listener's count.
    private async Task EndRunAsync(byte[]? buffer, ReasonCode closeReason, Exception? failure)
    {
        try
        {
            await EndAsync(buffer, closeReason).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            failure ??= e;
        }
        finally
        {
            _transport.Close();
            _owner.Release(_connectionId, failure);
        }
    }

    // The read loop has stopped: let a close started elsewhere finish, leave the registry, record why.
    private async Task EndAsync(byte[]? buffer, ReasonCode closeReason)
    {
        if (buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        Task? closing;
        lock (_lock)
        {
            closing = _closeTask;
            _closed = true;
        }

        if (closing is not null)
        {
            // A close started elsewhere (takeover, slow consumer, keepalive) is still draining its last
            // packet: the transport must outlive it, since it is closed once the read loop ends.
            await closing.ConfigureAwait(false);
        }

        if (_registered)
        {
            if (_context.Registry.Unregister(this))
            {
                _context.Chat.Router?.OnDeviceSession(this, online: false);
            }

            _ = _context.Presence.DeviceOffline(this); // last-seen is written in the background
            _context.Metrics.Sessions.Add(-1);
        }

        if (Volatile.Read(ref _closeReasonRecorded) == 0)
        {
            RecordDisconnect(closeReason);
        }

        if (_context.Logger.IsEnabled(LogLevel.Debug))
        {
            // Asked for here, not held by the session: the transport is still open (it is closed after this).
            Log.ConnectionClosed(_context.Logger, _connectionId, _transport.RemoteEndPoint, _closeReason.ToString());
        }
    }

    /// <summary>The per-connection rate limits (limits.*), each a token bucket.</summary>
    private sealed class RateBuckets
    {
        public TokenBucket Sends;
        public TokenBucket Bytes;
        public TokenBucket Typing;
        public TokenBucket KeyFetches;
    }

    // RequestId/InReplyTo name the request a fatal error answers, wherever the frame could be parsed that far.
    private readonly record struct ProcessResult(ReasonCode Reason, string? Message, int Consumed, ulong RequestId = 0, PacketType InReplyTo = default);

    /// <summary>
    /// Handles every complete frame in <paramref name="bytes"/>[0..<paramref name="length"/>); returns how many
    /// bytes that was, or a fatal error.
    /// </summary>
    private async ValueTask<ProcessResult> ProcessFramesAsync(byte[] bytes, int length, CancellationToken stopping)
    {
        ReasonCode error;
        var offset = 0;
        var buffer = new ReadOnlySequence<byte>(bytes, 0, length);
        while (FrameReader.TryRead(buffer, _maxFrameSize, out var frame, out _, out error))
        {
            var frameLength = (int)frame.Length;
            // State first: never parse a body the peer was not allowed to send.
            error = _state.OnReceived(frame.Type);
            if (error != ReasonCode.Success)
            {
                return new(error, $"{frame.Type} is not allowed now", offset, 0, frame.Type);
            }

            if (!PacketDecoder.TryDecode(frame, out var message, out var invalid, out error))
            {
                return new(error, $"bad {frame.Type} packet", offset, invalid is null ? 0 : RequestIdOf(invalid), frame.Type);
            }

            var handled = await HandleAsync(message, frame.Flags, stopping).ConfigureAwait(false);
            if (handled.Reason != ReasonCode.Success)
            {
                return new(handled.Reason, handled.Message, offset, RequestIdOf(message), frame.Type);
            }

            // Appends of other sessions that this thread wrote along with its own are completed between two
            // frames (no lock is held here), not only when the whole receive is handled.
            _appendCompletions?.CompletePending();

            // Decoded messages own copies of their fields, so the bytes may be reused once handled.
            offset += frameLength;
            buffer = new ReadOnlySequence<byte>(bytes, offset, length - offset);
            if (Volatile.Read(ref _closing) != 0)
            {
                break;
            }
        }

        return error == ReasonCode.Success
            ? new(ReasonCode.Success, null, offset)
            : new(error, DescribeFrameError(error), offset);
    }

    private string DescribeFrameError(ReasonCode error) => error switch
    {
        ReasonCode.FrameTooLarge => $"frame larger than the {_maxFrameSize} bytes this broker accepts",
        ReasonCode.MalformedLength => "remaining length is longer than 4 bytes or not minimally encoded",
        ReasonCode.UnknownPacketType => "unknown packet type",
        ReasonCode.InvalidFlags => "flag bits not allowed for this packet type",
        _ => "malformed frame",
    };

    /// <summary>A fatal error: CONNACK with the reason before CONNECT completed, else ERROR; then close.</summary>
    private Task FailAsync(ReasonCode reason, string? message, ulong requestId = 0, PacketType inReplyTo = default)
    {
        IMessage last = _registered
            ? new Error { Reason = reason, Message = message ?? "", RequestId = requestId, InReplyTo = inReplyTo }
            : new Connack { Reason = reason, Message = message ?? "" };
        return CloseAsync(last);
    }

    /// <summary>Ends the session from any thread: queue a DISCONNECT, let it drain, close the transport.</summary>
    public void Close(ReasonCode reason, string message) =>
        _ = CloseAsync(new Disconnect { Reason = reason, Message = message });

    /// <summary>The broker is stopping: DISCONNECT(SERVER_SHUTTING_DOWN) with a retry hint, then close.</summary>
    internal Task CloseForShutdownAsync() =>
        CloseAsync(new Disconnect { Reason = ReasonCode.ServerShuttingDown, Message = "server is shutting down", RetryAfterMs = 1000 });

    private int _closeReasonRecorded;
    // Set once (under _lock) by the first close; the read loop awaits it before the transport is released.
    private Task? _closeTask;

    private Task CloseAsync(IMessage? last)
    {
        lock (_lock)
        {
            if (_closeTask is null)
            {
                Volatile.Write(ref _closing, 1);
                _closeTask = CloseCoreAsync(last);
            }

            return _closeTask;
        }
    }

    private async Task CloseCoreAsync(IMessage? last)
    {
        RecordDisconnect(last switch
        {
            Disconnect d => d.Reason,
            Error e => e.Reason,
            Connack c => c.Reason,
            _ => ReasonCode.NormalDisconnect,
        });
        try
        {
            await _outbox.CloseWithAsync(last).WaitAsync(_context.Options.Session.DrainTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The peer does not read: cut it.
        }

        // A receive still pending ends with 0 or an error once the transport is closed.
        _transport.Close();
    }

    private void RecordDisconnect(ReasonCode reason)
    {
        if (Interlocked.Exchange(ref _closeReasonRecorded, 1) == 0)
        {
            _closeReason = reason;
            _context.Metrics.Disconnects.Add(1, new KeyValuePair<string, object?>("reason", reason.ToString()));
        }
    }

    // The reason the session ended, as first recorded (written once, before the read loop logs it).
    private ReasonCode _closeReason = ReasonCode.NormalDisconnect;

    void IOutboxOwner.OnOutboxOverflow(ReasonCode reason) =>
        Close(reason, $"slow consumer: more than {_context.Options.Session.MaxOutboundBytes} bytes or {_context.Options.Session.MaxOutboundFrames} frames queued");
}

/// <summary>Creates a <see cref="DeviceSession"/> for each accepted connection, and closes them all on shutdown.</summary>
internal sealed class DeviceConnectionHandler(BrokerContext context) : IPolledConnectionHandler, IDeviceConnectionHandler
{
    private readonly Lock _lock = new();
    private readonly List<CancellationToken> _watched = [];
    private CancellationToken _lastWatched;

    public ReadinessPoller? Poller => ReadinessPoller.For(context.Options.Tcp);

    // Only without the readiness poller (tcp.readiness_poller = false, or not Linux x64): .NET's socket and its async state.
    public void Start(Socket socket, long connectionId, IConnectionOwner owner) =>
        Start(new SocketTransport(socket), connectionId, owner);

    /// <summary>Starts a session over any transport (the socket listener's, or an in-memory one in tests).</summary>
    public void Start(IDeviceTransport transport, long connectionId, IConnectionOwner owner)
    {
        Watch(owner.Stopping);
        IThreadPoolWorkItem session = new DeviceSession(context, transport, connectionId, owner);
        if (transport is PolledSocketTransport)
        {
            // On the listener's accept thread: the first activation only arms the wait for CONNECT (which a readiness
            // loop then handles), so it runs here rather than waking a pool thread per connect.
            session.Execute();
        }
        else
        {
            ThreadPool.UnsafeQueueUserWorkItem(session, preferLocal: false);
        }
    }

    // One registration per listener rather than one per waiting receive: registered sessions wait without a
    // token, so shutdown closes them through the registry. Sessions still in the handshake watch the token.
    private void Watch(CancellationToken stopping)
    {
        if (stopping == _lastWatched)
        {
            return; // the usual case: one listener, already watched (a token is one reference: read atomically)
        }

        lock (_lock)
        {
            _lastWatched = stopping;
            foreach (var watched in _watched)
            {
                if (watched == stopping)
                {
                    return;
                }
            }

            _watched.Add(stopping);
        }

        stopping.UnsafeRegister(static state => ((DeviceConnectionHandler)state!).CloseAllForShutdown(), this);
    }

    private void CloseAllForShutdown()
    {
        context.Handshakes.CancelAll();
        foreach (var link in context.Registry.Sessions())
        {
            if (link is DeviceSession session)
            {
                _ = session.CloseForShutdownAsync();
            }
        }
    }
}
