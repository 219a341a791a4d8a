using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// A device connection over an accepted TCP socket that waits for data through the broker's own epoll loops
/// (<see cref="ReadinessPoller"/>, setting <c>tcp.readiness_poller</c>) and receives and sends with non-blocking
/// system calls on the socket's descriptor, so an idle connection holds none of .NET's per-socket async state
/// (<c>SocketAsyncContext</c>, the cached awaitable event args, a receive operation and its callback: ≈ 640
/// bytes), nor a <see cref="Socket"/> at all (the listener accepted a bare descriptor: ≈ 190 bytes more). What it
/// holds instead is this object (the wait's completion source, the peer's address, a slot in its loop's table)
/// and a <see cref="DescriptorHandle"/>.
/// <para>
/// A wait is one <c>EPOLLONESHOT</c> arming; the loop's event completes it (on the loop's thread with
/// tcp.inline_completions, else on the pool). A receive is one <c>recv(MSG_DONTWAIT)</c>; should it find nothing
/// (a spurious wake) it waits again. A send is one <c>send(MSG_DONTWAIT)</c>; what the socket buffer does not take
/// at once goes on through <see cref="SocketTransport"/>'s pooled event args (a slow consumer: only then does the
/// connection get a .NET Socket and its async state). The descriptor is used under its handle's reference count, so a
/// <see cref="Close"/> from another thread can never make a call land on a reused descriptor.
/// </para>
/// </summary>
public sealed partial class PolledSocketTransport : IDeviceTransport, INotifyingTransport, IValueTaskSource<int>
{
    private const int MsgDontWait = 0x40;
    private const int MsgNoSignal = 0x4000;
    private const int EAgain = 11;
    private const int EIntr = 4;
    private const int AfInet = 2;
    private const int AfInet6 = 10;

    private const int Idle = 0;
    private const int Waiting = 1;

    private readonly DescriptorHandle _handle;
    // The peer's address, kept small: IPv4 as address << 16 | port with bit 48 set, IPv6 in _peer6 (16 address
    // bytes, port, scope id). An IPEndPoint and its IPAddress would hold 72 bytes for every idle connection.
    private readonly ulong _peer;
    private readonly byte[]? _peer6;
    private readonly ReadinessPoller.Loop _loop;
    private readonly int _slot;
    private readonly int _generation;
    private ManualResetValueTaskSourceCore<int> _wait;
    private CancellationTokenRegistration _cancel;
    private SocketTransport? _slowSends;
    // Set while a session waits through NotifyWhenReadable instead of an awaited wait.
    private IThreadPoolWorkItem? _notify;
    private readonly bool _inline;
    private int _state;
    private short _cancelVersion;
    private bool _armedBefore;
    private volatile bool _closed;

    /// <summary>
    /// Takes over <paramref name="handle"/>, a connected non-blocking TCP descriptor accepted without a .NET
    /// <see cref="Socket"/> (<see cref="DescriptorAcceptor"/>), whose peer is the <c>sockaddr</c> in
    /// <paramref name="peerAddress"/>.
    /// </summary>
    internal PolledSocketTransport(DescriptorHandle handle, ReadOnlySpan<byte> peerAddress, ReadinessPoller poller)
    {
        _handle = handle;
        (_peer, _peer6) = CompactPeer(peerAddress);
        _loop = poller.Pick();
        _inline = poller.InlineCompletions;
        _wait.RunContinuationsAsynchronously = !_inline;
        (_slot, _generation) = _loop.Add(this);
    }

    /// <summary>The peer's address (made on each call: only logs ask for it), also after <see cref="Close"/>.</summary>
    public EndPoint? RemoteEndPoint
    {
        get
        {
            if (_peer6 is { } v6)
            {
                return new IPEndPoint(new IPAddress(v6.AsSpan(0, 16), BinaryPrimitives.ReadUInt32LittleEndian(v6.AsSpan(18))),
                    BinaryPrimitives.ReadUInt16BigEndian(v6.AsSpan(16)));
            }

            if (_peer == 0)
            {
                return null;
            }

            Span<byte> v4 = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(v4, (uint)(_peer >> 16));
            return new IPEndPoint(new IPAddress(v4), (ushort)_peer);
        }
    }

    // sockaddr_in: family (2, host order), port (2, network order), address (4). sockaddr_in6: family, port,
    // flow info (4), address (16), scope id (4, host order).
    private static (ulong Peer, byte[]? Peer6) CompactPeer(ReadOnlySpan<byte> address)
    {
        if (address.Length >= 8 && BinaryPrimitives.ReadUInt16LittleEndian(address) == AfInet)
        {
            return (1UL << 48 | (ulong)BinaryPrimitives.ReadUInt32BigEndian(address[4..]) << 16 | BinaryPrimitives.ReadUInt16BigEndian(address[2..]), null);
        }

        if (address.Length >= 28 && BinaryPrimitives.ReadUInt16LittleEndian(address) == AfInet6)
        {
            var v6 = new byte[22];
            address.Slice(8, 16).CopyTo(v6);
            address.Slice(2, 2).CopyTo(v6.AsSpan(16));
            address.Slice(24, 4).CopyTo(v6.AsSpan(18));
            return (0, v6);
        }

        return (0, null);
    }

    public ValueTask<int> WaitReadableAsync(CancellationToken cancellationToken)
    {
        if (_closed)
        {
            return new ValueTask<int>(0);
        }

        _wait.Reset();
        if (cancellationToken.CanBeCanceled)
        {
            // Only until CONNECT (the handshake deadline) and in tests: a registered session waits without a token.
            // Registered before the wait is open, so whoever ends the wait (Complete) sees the registration to
            // remove; a token that has fired already is looked at once the wait is open.
            _cancelVersion = _wait.Version;
            _cancel = cancellationToken.UnsafeRegister(static (state, token) => ((PolledSocketTransport)state!).OnCanceled(token), this);
        }

        Volatile.Write(ref _state, Waiting);
        if (cancellationToken.IsCancellationRequested)
        {
            OnCanceled(cancellationToken);
        }

        if (!Arm())
        {
            Complete(0); // the descriptor is closed: the receive that follows tells the session
        }

        return new ValueTask<int>(this, _wait.Version);
    }

    public void NotifyWhenReadable(IThreadPoolWorkItem target)
    {
        if (_closed)
        {
            ThreadPool.UnsafeQueueUserWorkItem(target, preferLocal: false); // never inline: the caller is returning
            return;
        }

        _notify = target;
        Volatile.Write(ref _state, Waiting);
        if (!Arm())
        {
            Complete(0);
        }
    }

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var received = TryReceive(buffer.Span);
        return received >= 0 ? new ValueTask<int>(received) : ReceiveAfterWaitAsync(buffer, cancellationToken);
    }

    private async ValueTask<int> ReceiveAfterWaitAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (true)
        {
            await WaitReadableAsync(cancellationToken).ConfigureAwait(false);
            ObjectDisposedException.ThrowIf(_closed, this);
            var received = TryReceive(buffer.Span);
            if (received >= 0)
            {
                return received;
            }
        }
    }

    public bool Send(byte[] buffer, int length, ITransportSendCompletion completion, out bool sent)
    {
        var offset = 0;
        var handle = _handle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var fd = (int)handle.DangerousGetHandle();
            while (offset < length)
            {
                nint n;
                unsafe
                {
                    fixed (byte* p = &buffer[offset])
                    {
                        n = send(fd, p, length - offset, MsgDontWait | MsgNoSignal);
                    }
                }

                if (n > 0)
                {
                    offset += (int)n;
                    continue;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (n < 0 && errno == EIntr)
                {
                    continue;
                }

                if (n < 0 && errno == EAgain)
                {
                    break; // the socket's buffer is full: the rest goes on asynchronously
                }

                sent = false; // reset, broken pipe, closed
                return true;
            }
        }
        catch (ObjectDisposedException)
        {
            sent = false;
            return true;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }

        if (offset == length)
        {
            sent = true;
            return true;
        }

        var slow = Volatile.Read(ref _slowSends) ?? SlowSends();
        if (slow is null)
        {
            sent = false; // closed meanwhile
            return true;
        }

        return slow.Send(buffer, offset, length - offset, completion, out sent);
    }

    // A slow consumer: only now does the connection get a .NET Socket and its async state, over a second descriptor
    // of its own (dup) that the Socket owns and closes gracefully. Null when the transport closed meanwhile.
    private SocketTransport? SlowSends()
    {
        var fd = _closed ? -1 : _handle.Duplicate();
        if (fd < 0)
        {
            return null;
        }

        SocketTransport created;
        try
        {
            created = new SocketTransport(new Socket(new SafeSocketHandle(fd, ownsHandle: true)));
        }
        catch (SocketException)
        {
            new DescriptorHandle(fd).Dispose();
            return null;
        }

        if (Interlocked.CompareExchange(ref _slowSends, created, null) is { } existing)
        {
            created.Close(); // another send made one first
            return existing;
        }

        if (_closed)
        {
            created.Close(); // Close ran between the check above and the exchange, and may not have seen it
        }

        return created;
    }

    public void Close()
    {
        if (_closed)
        {
            return;
        }

        _closed = true;
        DescriptorAcceptor.Shutdown(_handle);

        // Closed before the pending wait ends, so whatever that wakes (a session notified inline, on this very
        // stack) finds the socket closed rather than empty. A slow send's Socket (its own descriptor) ends its
        // pending send; ours is closed once no call holds the handle any more.
        Interlocked.MemoryBarrier(); // _closed is seen by a SlowSends that exchanges after the read below
        Volatile.Read(ref _slowSends)?.Close();
        _handle.Dispose();
        _loop.Remove(_slot, _generation);
        Complete(0);
    }

    /// <summary>The loop saw the descriptor readable (or closed by the peer).</summary>
    internal void OnReadable() => Complete(0);

    private void OnCanceled(CancellationToken token)
    {
        // Only the wait it was registered for (a callback already running when that wait ended must not end the next).
        if (_wait.Version == Volatile.Read(ref _cancelVersion) && Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting)
        {
            _wait.SetException(new OperationCanceledException(token));
        }
    }

    // Ends the pending wait, once: the loop's event, a cancellation and Close race for it.
    private void Complete(int result)
    {
        if (Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting)
        {
            if (_notify is { } target)
            {
                _notify = null;
                if (_inline)
                {
                    target.Execute();
                }
                else
                {
                    ThreadPool.UnsafeQueueUserWorkItem(target, preferLocal: false);
                }

                return;
            }

            _cancel.Unregister(); // never waits for a callback that is running: it finds the wait ended
            _cancel = default;
            _wait.SetResult(result);
        }
    }

    private bool Arm()
    {
        var handle = _handle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var ok = _loop.Arm((int)handle.DangerousGetHandle(), _slot, _generation, _armedBefore);
            _armedBefore |= ok;
            return ok;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    // Bytes received (0: the peer closed), or -1 when nothing is there yet.
    private int TryReceive(Span<byte> buffer)
    {
        var handle = _handle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added); // throws ObjectDisposedException once closed, as a socket does
            var fd = (int)handle.DangerousGetHandle();
            while (true)
            {
                nint n;
                unsafe
                {
                    fixed (byte* p = buffer)
                    {
                        n = recv(fd, p, buffer.Length, MsgDontWait);
                    }
                }

                if (n >= 0)
                {
                    return (int)n;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno == EIntr)
                {
                    continue;
                }

                if (errno == EAgain)
                {
                    return -1;
                }

                throw new SocketException(errno == 104 ? (int)SocketError.ConnectionReset : (int)SocketError.SocketError);
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    int IValueTaskSource<int>.GetResult(short token)
    {
        try
        {
            return _wait.GetResult(token);
        }
        finally
        {
            // Drop the continuation the completed wait still references (its awaiter's state machine): a session
            // that then waits through NotifyWhenReadable would otherwise keep the box of its handshake activation.
            _wait.Reset();
        }
    }

    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _wait.GetStatus(token);

    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _wait.OnCompleted(continuation, state, token, flags);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint send(int fd, byte* buffer, nint length, int flags);
}
