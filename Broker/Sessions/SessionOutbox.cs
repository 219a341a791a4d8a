using System.Buffers;
using System.Net.Sockets;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Sessions;

/// <summary>
/// The outbound side of one connection. Any thread may write whole frames; they go, under a lock, into a
/// pooled buffer, and a single send loop hands everything written so far to the socket in one send — so a
/// burst of deliveries costs one syscall, not one per frame, and an idle connection holds no buffer.
/// <para>
/// Bounded: when the bytes or frames not yet accepted by the socket pass the limits, the device is a slow
/// consumer. What was queued but not sent is dropped (the device catches up from its cursor on reconnect),
/// a DISCONNECT(SLOW_CONSUMER) is queued after the send in flight, and the socket is aborted if the peer
/// does not take even that within the drain timeout. Memory per connection therefore never passes the bound.
/// </para>
/// </summary>
internal sealed class SessionOutbox : IBufferWriter<byte>
{
    private const int InitialBufferSize = 4096;

    private readonly Socket _socket;
    private readonly int _maxBytes;
    private readonly int _maxFrames;
    private readonly Action<ReasonCode> _onOverflow;
    // Guards every field below. Held only while copying bytes in or swapping buffers out, never across I/O.
    private readonly Lock _lock = new();
    private byte[]? _buffer;
    private int _written;
    private int _frames;
    private int _inFlightBytes;
    private bool _sending;
    private bool _closing;
    private bool _finalWritten;
    private TaskCompletionSource? _sendCompleted;

    public SessionOutbox(Socket socket, int maxBytes, int maxFrames, Action<ReasonCode> onOverflow)
    {
        _socket = socket;
        _maxBytes = maxBytes;
        _maxFrames = maxFrames;
        _onOverflow = onOverflow;
    }

    /// <summary>Bytes written but not yet accepted by the socket.</summary>
    public int PendingBytes
    {
        get
        {
            lock (_lock)
            {
                return _written + _inFlightBytes;
            }
        }
    }

    public bool IsClosing
    {
        get
        {
            lock (_lock)
            {
                return _closing;
            }
        }
    }

    /// <summary>Queues one protobuf packet. False when the outbox is closing or overflowed.</summary>
    public bool TryWrite(IMessage message)
    {
        lock (_lock)
        {
            if (_closing)
            {
                return false;
            }

            FrameWriter.Write(this, message);
            return Committed();
        }
    }

    /// <summary>Queues one DELIVER built from stored fields and body bytes (no message object, no copy).</summary>
    public bool TryWriteDeliver(in DeliverFields fields, ReadOnlySpan<byte> body, FrameFlags flags = FrameFlags.None)
    {
        lock (_lock)
        {
            if (_closing)
            {
                return false;
            }

            DeliverWriter.Write(this, fields, body, flags);
            return Committed();
        }
    }

    /// <summary>
    /// Queues a final packet (DISCONNECT or a failed CONNACK) after whatever is queued, and stops taking more.
    /// Completes when everything queued was handed to the socket, or the socket failed.
    /// </summary>
    public async Task CloseWithAsync(IMessage? last)
    {
        lock (_lock)
        {
            _closing = true;
            if (!_finalWritten)
            {
                _finalWritten = true;
                if (last is not null)
                {
                    FrameWriter.Write(this, last);
                }
            }

            if (!_sending && _written > 0)
            {
                StartSend();
            }
        }

        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (!_sending && _written == 0)
                {
                    return;
                }

                wait = NextSendCompletion();
            }

            await wait.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Completes with true once the bytes not yet taken by the socket are at most <paramref name="bytes"/>
    /// (or the outbox closes); with false when the socket took nothing for <paramref name="stallTimeout"/>:
    /// the peer has stopped reading.
    /// </summary>
    public async Task<bool> WhenBelowAsync(int bytes, TimeSpan stallTimeout)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_written + _inFlightBytes <= bytes || _closing)
                {
                    return true;
                }

                wait = NextSendCompletion();
            }

            try
            {
                // Each completed send is progress and restarts the stall clock.
                await wait.WaitAsync(stallTimeout).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                return false;
            }
        }
    }

    // Under the lock: a task that completes when the send in flight finishes (or the loop stops).
    private Task NextSendCompletion() =>
        (_sendCompleted ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    // Under the lock.
    private void SignalSendCompleted()
    {
        var completed = _sendCompleted;
        _sendCompleted = null;
        completed?.TrySetResult();
    }

    // Called under the lock after a frame was written into the buffer.
    private bool Committed()
    {
        _frames++;
        if (_written + _inFlightBytes > _maxBytes || _frames > _maxFrames)
        {
            Overflow();
            return false;
        }

        if (!_sending)
        {
            StartSend();
        }

        return true;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private void Overflow()
    {
        // Drop what the socket has not taken: the device re-reads it from its cursor after reconnecting.
        ReturnBuffer();
        _closing = true;
        _ = Task.Run(() => _onOverflow(ReasonCode.SlowConsumer));
    }

    private void StartSend()
    {
        _sending = true;
        _ = SendLoopAsync();
    }

    private async Task SendLoopAsync()
    {
        await Task.Yield();
        while (true)
        {
            byte[] buffer;
            int length;
            lock (_lock)
            {
                if (_written == 0)
                {
                    _sending = false;
                    _frames = 0;
                    SignalSendCompleted();
                    return;
                }

                buffer = _buffer!;
                length = _written;
                _buffer = null;
                _written = 0;
                _frames = 0;
                _inFlightBytes = length;
            }

            try
            {
                var sent = 0;
                while (sent < length)
                {
                    sent += await _socket.SendAsync(buffer.AsMemory(sent, length - sent), SocketFlags.None).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                lock (_lock)
                {
                    _closing = true;
                    ReturnBuffer();
                    _inFlightBytes = 0;
                    _sending = false;
                    SignalSendCompleted();
                }

                ArrayPool<byte>.Shared.Return(buffer);
                return;
            }

            ArrayPool<byte>.Shared.Return(buffer);
            lock (_lock)
            {
                // Wake waiters (a resume pump waiting for room, or a close waiting to flush); they re-check.
                _inFlightBytes = 0;
                SignalSendCompleted();
            }
        }
    }

    private void ReturnBuffer()
    {
        if (_buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }

        _written = 0;
    }

    // IBufferWriter<byte>: used only by FrameWriter/DeliverWriter while the lock is held.
    void IBufferWriter<byte>.Advance(int count) => _written += count;

    Memory<byte> IBufferWriter<byte>.GetMemory(int sizeHint) => Ensure(sizeHint).AsMemory(_written);

    Span<byte> IBufferWriter<byte>.GetSpan(int sizeHint) => Ensure(sizeHint).AsSpan(_written);

    private byte[] Ensure(int sizeHint)
    {
        var needed = _written + Math.Max(sizeHint, 1);
        if (_buffer is null)
        {
            _buffer = ArrayPool<byte>.Shared.Rent(Math.Max(InitialBufferSize, needed));
        }
        else if (_buffer.Length < needed)
        {
            var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(_buffer.Length * 2, needed));
            _buffer.AsSpan(0, _written).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = bigger;
        }

        return _buffer;
    }
}
