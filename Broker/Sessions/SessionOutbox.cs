using System.Buffers;
using ChatBroker.Broker.Transport;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Sessions;

/// <summary>What an outbox tells its session.</summary>
internal interface IOutboxOwner
{
    /// <summary>More than the bound is queued (called on the thread pool, never under the outbox's lock).</summary>
    void OnOutboxOverflow(ReasonCode reason);
}

/// <summary>
/// The outbound side of one connection. Any thread may write whole frames; they go, under a lock, into a
/// pooled buffer, and a single sender hands everything written so far to the transport in one send — so a
/// burst of deliveries costs one syscall, not one per frame, and an idle connection holds no buffer.
/// <para>
/// Bounded: when the bytes or frames not yet accepted by the transport pass the limits, the device is a slow
/// consumer. What was queued but not sent is dropped (the device catches up from its cursor on reconnect),
/// a DISCONNECT(SLOW_CONSUMER) is queued after the send in flight, and the connection is cut if the peer
/// does not take even that within the drain timeout. Memory per connection therefore never passes the bound.
/// </para>
/// <para>
/// Idle cost: the outbox is a few fields and shares its session's lock. It hands its own buffer to
/// <see cref="IDeviceTransport.Send"/> and is itself the completion, so a send allocates nothing and an idle
/// outbox holds no send state (<see cref="SocketTransport"/> rents its event args per send). The sender runs as a thread-pool work item (the outbox itself), so starting one allocates nothing; a
/// read loop sends the outboxes it wrote to itself at the end of the receive (<see cref="OutboxFlushScope"/>).
/// </para>
/// </summary>
internal sealed class SessionOutbox : IBufferWriter<byte>, IThreadPoolWorkItem, ITransportSendCompletion
{
    private const int InitialBufferSize = 4096;

    private readonly IDeviceTransport _transport;
    private readonly int _maxBytes;
    private readonly int _maxFrames;
    private readonly IOutboxOwner _owner;
    // Guards every field below: the session's lock, shared rather than one more lock object per connection
    // (a monitor on this outbox unless the owner passes another). Held only while copying bytes in or swapping
    // buffers out, never across I/O.
    private readonly object _lock;
    private byte[]? _buffer;
    private int _written;
    private int _frames;
    private int _inFlightBytes;
    private bool _sending;
    private bool _closing;
    private bool _finalWritten;
    private TaskCompletionSource? _sendCompleted;

    public SessionOutbox(IDeviceTransport transport, int maxBytes, int maxFrames, IOutboxOwner owner, object? sessionLock = null)
    {
        _transport = transport;
        _maxBytes = maxBytes;
        _maxFrames = maxFrames;
        _owner = owner;
        _lock = sessionLock ?? this;
    }

    /// <summary>Bytes written but not yet accepted by the transport.</summary>
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
    /// Completes when everything queued was handed to the transport, or the transport failed.
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
    /// Completes with true once the bytes not yet taken by the transport are at most <paramref name="bytes"/>
    /// (or the outbox closes); with false when the transport took nothing for <paramref name="stallTimeout"/>:
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
        // Drop what the transport has not taken: the device re-reads it from its cursor after reconnecting.
        ReturnBuffer();
        _closing = true;
        ThreadPool.UnsafeQueueUserWorkItem(static owner => owner.OnOutboxOverflow(ReasonCode.SlowConsumer), _owner, preferLocal: false);
    }

    // Under the lock. Sent by this thread's read loop when it has handled the frames of one receive (the
    // OutboxFlushScope it has open), else queued to this thread's local queue, which runs it once the current
    // work is done; either way the frames written meanwhile leave in one send.
    private void StartSend()
    {
        _sending = true;
        if (!OutboxFlushScope.TryDefer(this))
        {
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: true);
        }
    }

    void IThreadPoolWorkItem.Execute() => SendNext();

    /// <summary>Called by <see cref="OutboxFlushScope.SendAll"/>, the read loop's, on its thread (never under a lock).</summary>
    internal void SendDeferred() => SendNext();

    // Hands the bytes written so far to the transport, batch after batch, until nothing is left.
    private void SendNext()
    {
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

            if (!_transport.Send(buffer, length, this, out var sent) || !SendCompleted(buffer, sent))
            {
                return; // OnSendCompleted goes on when the transport takes it, or the transport failed
            }
        }
    }

    // A send finished off this thread (the socket's buffer was full for a while).
    void ITransportSendCompletion.OnSendCompleted(byte[] buffer, bool sent)
    {
        if (SendCompleted(buffer, sent))
        {
            SendNext();
        }
    }

    // True when the whole buffer went out and the sender may go on.
    private bool SendCompleted(byte[] buffer, bool sent)
    {
        if (!sent)
        {
            SendFailed(buffer);
            return false;
        }

        ArrayPool<byte>.Shared.Return(buffer);
        lock (_lock)
        {
            // Wake waiters (a resume pump waiting for room, or a close waiting to flush); they re-check.
            _inFlightBytes = 0;
            SignalSendCompleted();
        }

        return true;
    }

    private void SendFailed(byte[] buffer)
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
