using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// A device connection over an accepted TCP socket. One reference field: the object costs an idle connection
/// 24 bytes, and holds nothing else. Receives use the socket's own cached awaitable (which every connection
/// has anyway); sends go through <see cref="SendArgs"/> rented from a process-wide pool for the duration of
/// one send, not the socket's own cached send state, which would stay with every connection that ever sent
/// a CONNACK (~360 bytes each).
/// </summary>
public sealed class SocketTransport(Socket socket) : IDeviceTransport
{
    private readonly Socket _socket = socket;

    // Read on demand, not cached: an accepted socket keeps its peer's address anyway.
    public EndPoint? RemoteEndPoint => RemoteEndPointOf(_socket);

    /// <summary>The peer's address of <paramref name="socket"/>, or null once it is closed.</summary>
    internal static EndPoint? RemoteEndPointOf(Socket socket)
    {
        try
        {
            return socket.RemoteEndPoint;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return null;
        }
    }

    // A zero-byte receive completes when data arrives (or the peer closes) and pins no buffer.
    public ValueTask<int> WaitReadableAsync(CancellationToken cancellationToken) =>
        _socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, cancellationToken);

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken) =>
        _socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);

    public bool Send(byte[] buffer, int length, ITransportSendCompletion completion, out bool sent) =>
        Send(buffer, 0, length, completion, out sent);

    /// <summary>As <see cref="Send(byte[], int, ITransportSendCompletion, out bool)"/>, of <paramref name="buffer"/>[offset..offset+length)
    /// (the rest of a send <see cref="PolledSocketTransport"/> began); the completion still gets the whole buffer.</summary>
    internal bool Send(byte[] buffer, int offset, int length, ITransportSendCompletion completion, out bool sent)
    {
        var args = SendArgs.Rent(this, completion, buffer, offset, length);
        try
        {
            if (_socket.SendAsync(args))
            {
                sent = false;
                return false; // SendArgs.OnCompleted goes on when the socket takes it
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            args.Release();
            sent = false;
            return true;
        }

        return Finished(args, out sent);
    }

    public void Close()
    {
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

    // A send completed (inline or not). True when it is over (the args are released, `sent` set); false when
    // the rest is pending again.
    private bool Finished(SendArgs args, out bool sent)
    {
        while (true)
        {
            var error = args.SocketError;
            var next = args.Offset + args.BytesTransferred;
            var end = args.Offset + args.Count;
            if (error == SocketError.Success && next < end)
            {
                // A stream socket's send completes whole; should one ever not, send the rest with the same args.
                args.SetBuffer(next, end - next);
                try
                {
                    if (_socket.SendAsync(args))
                    {
                        sent = false;
                        return false;
                    }

                    continue;
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    args.Release();
                    sent = false;
                    return true;
                }
            }

            sent = error == SocketError.Success;
            args.Release();
            return true;
        }
    }

    // A pooled send finished off the calling thread (the socket's buffer was full for a while).
    private void OnSendCompleted(SendArgs args)
    {
        var buffer = args.Buffer!;
        var completion = args.Completion!;
        if (Finished(args, out var sent))
        {
            completion.OnSendCompleted(buffer, sent);
        }
    }

    /// <summary>
    /// Event args for one send, shared by all connections through a small pool: a connection holds one only
    /// while a send is in flight. Completions off the calling thread arrive in <see cref="OnCompleted"/>.
    /// </summary>
    private sealed class SendArgs() : SocketAsyncEventArgs(unsafeSuppressExecutionContextFlow: true)
    {
        // Enough for the sends in flight at once on a busy node; beyond it args are left to the GC.
        private const int PoolLimit = 1024;
        private static readonly ConcurrentQueue<SendArgs> Pool = new();
        private static int _pooled;
        private SocketTransport? _transport;

        public ITransportSendCompletion? Completion { get; private set; }

        public static SendArgs Rent(SocketTransport transport, ITransportSendCompletion completion, byte[] buffer, int offset, int length)
        {
            if (Pool.TryDequeue(out var args))
            {
                Interlocked.Decrement(ref _pooled);
            }
            else
            {
                args = new SendArgs();
            }

            args._transport = transport;
            args.Completion = completion;
            args.SetBuffer(buffer, offset, length);
            return args;
        }

        public void Release()
        {
            _transport = null;
            Completion = null;
            SetBuffer(null, 0, 0);
            if (Interlocked.Increment(ref _pooled) <= PoolLimit)
            {
                Pool.Enqueue(this);
            }
            else
            {
                Interlocked.Decrement(ref _pooled);
                Dispose();
            }
        }

        protected override void OnCompleted(SocketAsyncEventArgs e) => _transport!.OnSendCompleted(this);
    }
}
