using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using ChatBroker.Broker.Hosting;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// One device's connection: reads frames off the socket, runs the protocol state machine, hands requests to
/// the messaging core and delivers the device's inbox in order. Split by concern: this file is the read
/// loop and the session's life; <c>DeviceSession.Packets.cs</c> handles each packet type;
/// <c>DeviceSession.Delivery.cs</c> is the ordered inbox delivery (live and catch-up).
/// <para>
/// Memory: while idle the session waits in a zero-byte receive, so it holds no receive buffer; the pipe's
/// segments are rented only while bytes are being parsed, and the outbox rents only while bytes are queued.
/// </para>
/// </summary>
internal sealed partial class DeviceSession : IDeviceLink
{
    private const int ReceiveChunk = 4096;

    private static readonly PipeOptions InboundPipeOptions = new(
        pool: MemoryPool<byte>.Shared,
        readerScheduler: PipeScheduler.Inline,
        writerScheduler: PipeScheduler.Inline,
        // The read loop is both writer and reader, so the writer must never wait for the reader. The bound
        // is enforced by FrameReader instead: unparsed bytes never exceed one max-size frame plus a chunk.
        pauseWriterThreshold: 0,
        resumeWriterThreshold: 0,
        minimumSegmentSize: ReceiveChunk,
        useSynchronizationContext: false);

    private readonly BrokerContext _context;
    private readonly Socket _socket;
    private readonly long _connectionId;
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
    private TokenBucket _sendRate;
    private TokenBucket _byteRate;

    public DeviceSession(BrokerContext context, Socket socket, long connectionId)
    {
        _context = context;
        _socket = socket;
        _connectionId = connectionId;
        _maxFrameSize = context.Options.Tcp.MaxFrameBytes;
        var session = context.Options.Session;
        _outbox = new SessionOutbox(socket, session.MaxOutboundBytes, session.MaxOutboundFrames, OnOutboxOverflow);
        _sendRate = new TokenBucket(context.Options.Limits.SendsPerSecond);
        _byteRate = new TokenBucket(context.Options.Limits.BytesPerSecond);
    }

    public string UserId => _user;

    public string DeviceId => _device;

    public ulong Capabilities => _capabilities;

    /// <summary>True when nothing arrived for 1.5 × the negotiated keepalive (checked by <see cref="KeepaliveMonitor"/>).</summary>
    internal bool IsKeepaliveExpired(long nowMs) =>
        _keepaliveWindowMs > 0 && nowMs - Volatile.Read(ref _lastReceivedMs) > _keepaliveWindowMs;

    public async Task RunAsync(CancellationToken stopping)
    {
        var pipe = new Pipe(InboundPipeOptions);
        // Only until CONNECT: its timer is released as soon as the session is registered, so an idle
        // authenticated connection holds no timer.
        var handshake = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        handshake.CancelAfter(_context.Options.Tcp.ConnectTimeout);
        var closeReason = ReasonCode.NormalDisconnect;
        var remote = _socket.RemoteEndPoint;
        long unparsed = 0;
        try
        {
            while (Volatile.Read(ref _closing) == 0)
            {
                if (_registered && handshake is not null)
                {
                    handshake.Dispose();
                    handshake = null;
                }

                var token = handshake?.Token ?? stopping;

                // Wait for readability without a buffer: an idle connection holds none.
                await _socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, token).ConfigureAwait(false);
                var memory = pipe.Writer.GetMemory(ReceiveChunk);
                var received = await _socket.ReceiveAsync(memory, SocketFlags.None, token).ConfigureAwait(false);
                if (received == 0)
                {
                    // The peer closed (or half-closed). Bytes left unparsed mean it stopped inside a frame:
                    // a half-closed peer can still read, so say why (best effort) before closing.
                    if (unparsed > 0)
                    {
                        closeReason = ReasonCode.TruncatedFrame;
                        _context.Metrics.ProtocolErrors.Add(1, new KeyValuePair<string, object?>("reason", closeReason.ToString()));
                        await FailAsync(ReasonCode.TruncatedFrame, "the stream ended inside a frame").ConfigureAwait(false);
                    }

                    break;
                }

                pipe.Writer.Advance(received);
                await pipe.Writer.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                Volatile.Write(ref _lastReceivedMs, Environment.TickCount64);

                pipe.Reader.TryRead(out var result);
                var buffer = result.Buffer;
                var error = await ProcessFramesAsync(buffer, stopping).ConfigureAwait(false);
                if (error.Reason != ReasonCode.Success)
                {
                    _context.Metrics.ProtocolErrors.Add(1, new KeyValuePair<string, object?>("reason", error.Reason.ToString()));
                    await FailAsync(error.Reason, error.Message).ConfigureAwait(false);
                    closeReason = error.Reason;
                    break;
                }

                unparsed = buffer.Slice(error.Consumed).Length;
                pipe.Reader.AdvanceTo(error.Consumed, buffer.End);
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            closeReason = ReasonCode.ServerShuttingDown;
            await CloseAsync(new Disconnect { Reason = ReasonCode.ServerShuttingDown, Message = "server is shutting down", RetryAfterMs = 1000 }).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            closeReason = ReasonCode.KeepaliveTimeout;
            await FailAsync(ReasonCode.KeepaliveTimeout, $"no CONNECT within {_context.Options.Tcp.ConnectTimeout.TotalSeconds:0.#}s").ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // The peer vanished or the session was closed from elsewhere (takeover, slow consumer, keepalive).
        }
        finally
        {
            handshake?.Dispose();
            await pipe.Reader.CompleteAsync().ConfigureAwait(false);
            await pipe.Writer.CompleteAsync().ConfigureAwait(false);
            Task? closing;
            lock (_deliveryLock)
            {
                closing = _closeTask;
                _closed = true;
            }

            if (closing is not null)
            {
                // A close started elsewhere (takeover, slow consumer, keepalive) is still draining its last
                // packet: the socket must outlive it, since the listener disposes it when this returns.
                await closing.ConfigureAwait(false);
            }

            if (_registered)
            {
                _context.Registry.Unregister(this);
                _ = _context.Presence.DeviceOffline(this); // last-seen is written in the background
                _context.Metrics.Sessions.Add(-1);
            }

            if (Volatile.Read(ref _closeReasonRecorded) == 0)
            {
                RecordDisconnect(closeReason);
            }

            Log.ConnectionClosed(_context.Logger, _connectionId, remote, _closeReason.ToString());
        }
    }

    private readonly record struct ProcessResult(ReasonCode Reason, string? Message, SequencePosition Consumed);

    /// <summary>Handles every complete frame in <paramref name="buffer"/>; returns where parsing stopped, or a fatal error.</summary>
    private async ValueTask<ProcessResult> ProcessFramesAsync(ReadOnlySequence<byte> buffer, CancellationToken stopping)
    {
        ReasonCode error;
        while (FrameReader.TryRead(buffer, _maxFrameSize, out var frame, out var consumed, out error))
        {
            // State first: never parse a body the peer was not allowed to send.
            error = _state.OnReceived(frame.Type);
            if (error != ReasonCode.Success)
            {
                return new(error, $"{frame.Type} is not allowed now", buffer.Start);
            }

            if (!PacketDecoder.TryDecode(frame, out var message, out error))
            {
                return new(error, $"bad {frame.Type} packet", buffer.Start);
            }

            var handled = await HandleAsync(message, frame.Flags, stopping).ConfigureAwait(false);
            if (handled.Reason != ReasonCode.Success)
            {
                return new(handled.Reason, handled.Message, buffer.Start);
            }

            buffer = buffer.Slice(consumed);
            if (Volatile.Read(ref _closing) != 0)
            {
                break;
            }
        }

        return error == ReasonCode.Success
            ? new(ReasonCode.Success, null, buffer.Start)
            : new(error, DescribeFrameError(error), buffer.Start);
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
    private Task FailAsync(ReasonCode reason, string? message)
    {
        IMessage last = _registered
            ? new Error { Reason = reason, Message = message ?? "" }
            : new Connack { Reason = reason, Message = message ?? "" };
        return CloseAsync(last);
    }

    /// <summary>Ends the session from any thread: queue a DISCONNECT, let it drain, close the socket.</summary>
    public void Close(ReasonCode reason, string message) =>
        _ = CloseAsync(new Disconnect { Reason = reason, Message = message });

    private int _closeReasonRecorded;
    // Set once (under _deliveryLock) by the first close; the read loop awaits it before the socket is released.
    private Task? _closeTask;

    private Task CloseAsync(IMessage? last)
    {
        lock (_deliveryLock)
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

        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        // A receive still pending ends with 0 or an error once the socket is shut down and closed.
        _socket.Close();
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

    private void OnOutboxOverflow(ReasonCode reason) =>
        Close(reason, $"slow consumer: more than {_context.Options.Session.MaxOutboundBytes} bytes or {_context.Options.Session.MaxOutboundFrames} frames queued");
}

/// <summary>Creates a <see cref="DeviceSession"/> for each accepted socket.</summary>
internal sealed class DeviceConnectionHandler(BrokerContext context) : Transport.ISocketConnectionHandler
{
    public Task RunAsync(Socket socket, long connectionId, CancellationToken stopping) =>
        new DeviceSession(context, socket, connectionId).RunAsync(stopping);
}
