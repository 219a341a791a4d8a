using System.Buffers;
using ChatBroker.Broker.Transport;

namespace ChatBroker.Broker.Mqtt;

/// <summary>
/// The bytes queued for one MQTT connection: packets are encoded straight into a pooled buffer, which is handed to
/// the transport whole when nothing is being sent (so the packets written while one send is in flight go out in the
/// next one, a batch). Bounded by session.max_outbound_bytes: past it the connection is a slow consumer. An idle
/// connection holds no buffer: both are returned to the pool once sent.
/// <para>Thread safety: every member is called under the connection's lock, except <see cref="Flush"/> (no lock held)
/// and the transport's completion.</para>
/// </summary>
internal sealed class MqttOutbox(IDeviceTransport transport, int maxBytes, Lock sync) : IBufferWriter<byte>, ITransportSendCompletion, IThreadPoolWorkItem
{
    private bool _flushQueued;
    private const int InitialBytes = 4096;
    private byte[]? _pending;
    private int _pendingLength;
    private bool _sending;
    private bool _closed;
    private TaskCompletionSource? _drained;

    /// <summary>Bytes waiting to be sent (not counting the send in flight).</summary>
    public int PendingBytes => _pendingLength;

    /// <summary>True when the queue passed its bound (the caller closes the connection).</summary>
    public bool Overflowed => _pendingLength > maxBytes;

    public void Advance(int count) => _pendingLength += count;

    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _pending.AsMemory(_pendingLength);
    }

    public Span<byte> GetSpan(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _pending.AsSpan(_pendingLength);
    }

    private void Ensure(int sizeHint)
    {
        var need = _pendingLength + Math.Max(sizeHint, 256);
        if (_pending is null)
        {
            _pending = ArrayPool<byte>.Shared.Rent(Math.Max(need, InitialBytes));
        }
        else if (_pending.Length < need)
        {
            var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(need, _pending.Length * 2));
            _pending.AsSpan(0, _pendingLength).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_pending);
            _pending = bigger;
        }
    }

    /// <summary>Sends what is queued unless a send is already in flight (whose completion sends the rest). Call without the lock.</summary>
    public void Flush()
    {
        while (true)
        {
            byte[] buffer;
            int length;
            lock (sync)
            {
                if (_sending || _pendingLength == 0)
                {
                    return;
                }

                buffer = _pending!;
                length = _pendingLength;
                _pending = null;
                _pendingLength = 0;
                _sending = true;
            }

            if (!transport.Send(buffer, length, this, out var sent))
            {
                return; // OnSendCompleted goes on
            }

            if (!Sent(buffer, sent))
            {
                return;
            }
        }
    }

    public void OnSendCompleted(byte[] buffer, bool sent)
    {
        if (Sent(buffer, sent))
        {
            Flush();
        }
    }

    // A send finished: true when more may be sent.
    private bool Sent(byte[] buffer, bool sent)
    {
        ArrayPool<byte>.Shared.Return(buffer);
        TaskCompletionSource? drained = null;
        lock (sync)
        {
            _sending = false;
            if (!sent)
            {
                _closed = true;
            }

            if (_closed || _pendingLength == 0)
            {
                drained = _drained;
                _drained = null;
            }

            if (!sent || _closed)
            {
                DropPending();
                sent = false;
            }
        }

        drained?.TrySetResult();
        return sent;
    }

    /// <summary>
    /// Sends soon, from this thread's local work queue, not now: deliveries that the chat core fans out from one group
    /// commit (or the replies its continuations write) then leave in one send per connection, not one per message.
    /// </summary>
    public void ScheduleFlush()
    {
        lock (sync)
        {
            if (_flushQueued || _sending || _pendingLength == 0 || _closed)
            {
                return;
            }

            _flushQueued = true;
        }

        ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: true);
    }

    void IThreadPoolWorkItem.Execute()
    {
        lock (sync)
        {
            _flushQueued = false;
        }

        Flush();
    }

    /// <summary>Completes once everything queued so far was sent (or the connection failed). Call without the lock.</summary>
    public Task DrainAsync()
    {
        lock (sync)
        {
            if (_closed || (!_sending && _pendingLength == 0))
            {
                return Task.CompletedTask;
            }

            _drained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _drained.Task;
        }
    }

    /// <summary>The connection is gone: queued bytes are dropped and the buffer returned.</summary>
    public void Close()
    {
        TaskCompletionSource? drained;
        lock (sync)
        {
            _closed = true;
            if (!_sending)
            {
                DropPending();
            }

            drained = _drained;
            _drained = null;
        }

        drained?.TrySetResult();
    }

    private void DropPending()
    {
        if (_pending is not null)
        {
            ArrayPool<byte>.Shared.Return(_pending);
            _pending = null;
        }

        _pendingLength = 0;
    }
}
