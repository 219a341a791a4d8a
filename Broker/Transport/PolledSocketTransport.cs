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
/// bytes). What it holds instead is this object (the wait's completion source and a slot in its loop's table).
/// <para>
/// A wait is one <c>EPOLLONESHOT</c> arming; the loop's event completes it (on the loop's thread with
/// tcp.inline_completions, else on the pool). A receive is one <c>recv(MSG_DONTWAIT)</c>; should it find nothing
/// (a spurious wake) it waits again. A send is one <c>send(MSG_DONTWAIT)</c>; what the socket buffer does not take
/// at once goes on through <see cref="SocketTransport"/>'s pooled event args (a slow consumer: only then does the
/// socket get .NET's async state). The descriptor is used under the socket's handle reference count, so a
/// <see cref="Close"/> from another thread can never make a call land on a reused descriptor.
/// </para>
/// </summary>
public sealed partial class PolledSocketTransport : IDeviceTransport, INotifyingTransport, IValueTaskSource<int>
{
    private const int MsgDontWait = 0x40;
    private const int MsgNoSignal = 0x4000;
    private const int EAgain = 11;
    private const int EIntr = 4;

    private const int Idle = 0;
    private const int Waiting = 1;

    private readonly Socket _socket;
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

    internal PolledSocketTransport(Socket socket, ReadinessPoller poller)
    {
        _socket = socket;
        _loop = poller.Pick();
        _inline = poller.InlineCompletions;
        _wait.RunContinuationsAsynchronously = !_inline;
        (_slot, _generation) = _loop.Add(this);
    }

    public EndPoint? RemoteEndPoint => SocketTransport.RemoteEndPointOf(_socket);

    /// <summary>
    /// The transport for a socket accepted by a plain TCP listener (native or MQTT): this one where the settings
    /// (<c>tcp.readiness_poller</c>) and the platform allow, else <see cref="SocketTransport"/>.
    /// </summary>
    internal static IDeviceTransport ForAccepted(Socket socket, Configuration.TcpOptions tcp) =>
        tcp.ReadinessPoller && ReadinessPoller.IsSupported
            ? new PolledSocketTransport(socket, ReadinessPoller.Shared(tcp.InlineCompletions))
            : new SocketTransport(socket);

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
        var handle = _socket.SafeHandle;
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

        return (_slowSends ??= new SocketTransport(_socket)).Send(buffer, offset, length - offset, completion, out sent);
    }

    public void Close()
    {
        if (_closed)
        {
            return;
        }

        _closed = true;
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        // Closed before the pending wait ends, so whatever that wakes (a session notified inline, on this very
        // stack) finds the socket closed rather than empty.
        _socket.Close();
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
        var handle = _socket.SafeHandle;
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
        var handle = _socket.SafeHandle;
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
