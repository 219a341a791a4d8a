using System.Net;
using System.Net.Sockets;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>What a receive loop hands each frame to. Runs on the loop's thread; the body is valid only during the call.</summary>
public interface IFrameHandler
{
    void OnFrame(PacketType type, ReadOnlySpan<byte> body);

    /// <summary>Called after the frames of one socket read are handled: the place to batch ACKs.</summary>
    void OnReadDrained();
}

/// <summary>
/// A lean device connection on a raw socket: CONNECT/CONNACK, then a receive loop that cuts frames with
/// Protocol's <see cref="FrameReader"/> straight out of one reused buffer, and writes of ready-made frame
/// bytes. No pipes, no per-frame objects: the load generator shares two cores with the broker, so it must
/// cost much less than the broker per message (the Client SDK adds queues and tasks the harness does not need).
/// One writer at a time per connection is the caller's rule.
/// </summary>
public sealed class RawConnection : IDisposable
{
    private readonly Socket _socket;
    private byte[] _buffer;
    private int _start;
    private int _end;

    private RawConnection(Socket socket, int bufferSize)
    {
        _socket = socket;
        _buffer = new byte[bufferSize];
    }

    public Socket Socket => _socket;

    /// <summary>Connects, binding the client end to <paramref name="source"/> (e.g. 127.0.0.5) when given, so many connections do not run out of ephemeral ports.</summary>
    public static async Task<RawConnection> ConnectAsync(IPEndPoint target, IPAddress? source, int bufferSize, CancellationToken cancellationToken)
    {
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            if (source is not null)
            {
                socket.Bind(new IPEndPoint(source, 0));
            }

            await socket.ConnectAsync(target, cancellationToken).ConfigureAwait(false);
            return new RawConnection(socket, bufferSize);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Blocking connect, for the connection-heavy scenarios: a socket used only synchronously is never registered
    /// with .NET's epoll engine, which roughly halves the client's CPU per connection (the harness's client
    /// processes share the two cores with the broker).
    /// </summary>
    public static RawConnection Connect(IPEndPoint target, IPAddress? source, int bufferSize)
    {
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            if (source is not null)
            {
                socket.Bind(new IPEndPoint(source, 0));
            }

            socket.Connect(target);
            return new RawConnection(socket, bufferSize);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Blocking <see cref="LoginAsync"/>: sends CONNECT and reads up to CONNACK.</summary>
    public Connack Login(byte[] connectFrame)
    {
        Send(connectFrame);
        while (true)
        {
            if (TryNextFrame(out var frame, out _))
            {
                _start += (int)frame.Length;
                if (frame.Type == PacketType.Connack)
                {
                    return Connack.Parser.ParseFrom(frame.Body);
                }

                continue;
            }

            if (_start == _end)
            {
                _start = _end = 0;
            }

            if (_end == _buffer.Length)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
                if (_end == _buffer.Length)
                {
                    Array.Resize(ref _buffer, _buffer.Length * 2);
                }
            }

            var n = _socket.Receive(_buffer, _end, _buffer.Length - _end, SocketFlags.None);
            if (n == 0)
            {
                throw new IOException("the broker closed the connection before CONNACK");
            }

            _end += n;
        }
    }

    /// <summary>Sends CONNECT and reads up to CONNACK; frames after it stay buffered for the receive loop.</summary>
    public async Task<Connack> LoginAsync(byte[] connectFrame, CancellationToken cancellationToken)
    {
        await SendAsync(connectFrame, cancellationToken).ConfigureAwait(false);
        while (true)
        {
            if (TryNextFrame(out var frame, out var error))
            {
                var body = frame.Body;
                _start += (int)frame.Length;
                if (frame.Type == PacketType.Connack)
                {
                    return Connack.Parser.ParseFrom(body);
                }

                continue;
            }

            if (error != ReasonCode.Success)
            {
                throw new InvalidDataException("broker sent a malformed frame: " + error);
            }

            if (await ReadMoreAsync(cancellationToken).ConfigureAwait(false) == 0)
            {
                throw new IOException("the broker closed the connection before CONNACK");
            }
        }
    }

    public async ValueTask SendAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
    {
        while (bytes.Length > 0)
        {
            var n = await _socket.SendAsync(bytes, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            bytes = bytes[n..];
        }
    }

    /// <summary>Blocking send, for the fixed-rate pacer thread (waits for room on a non-blocking socket too).</summary>
    public void Send(ReadOnlySpan<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            var n = _socket.Send(bytes, SocketFlags.None, out var error);
            if (error == SocketError.WouldBlock)
            {
                _socket.Poll(-1, SelectMode.SelectWrite);
                continue;
            }

            if (error != SocketError.Success)
            {
                throw new SocketException((int)error);
            }

            bytes = bytes[n..];
        }
    }

    /// <summary>Reads and dispatches frames until the broker closes, the token fires, or the socket fails.</summary>
    public async Task ReceiveLoopAsync(IFrameHandler handler, CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                Dispatch(handler);
                if (await ReadMoreAsync(cancellationToken).ConfigureAwait(false) == 0)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private void Dispatch(IFrameHandler handler)
    {
        var any = false;
        while (TryNextFrame(out var frame, out var error))
        {
            _start += (int)frame.Length;
            handler.OnFrame(frame.Type, frame.Body.FirstSpan);
            any = true;
        }

        if (any)
        {
            handler.OnReadDrained();
        }
    }

    private bool TryNextFrame(out Frame frame, out ReasonCode error)
    {
        if (_end == _start)
        {
            frame = default;
            error = ReasonCode.Success;
            return false;
        }

        var sequence = new System.Buffers.ReadOnlySequence<byte>(_buffer, _start, _end - _start);
        if (FrameReader.TryRead(sequence, 16 * 1024 * 1024, out frame, out _, out error))
        {
            return true;
        }

        if (error != ReasonCode.Success)
        {
            throw new InvalidDataException("broker sent a malformed frame: " + error);
        }

        return false;
    }

    /// <summary>
    /// Reads whatever has arrived, without waiting, and dispatches its frames; false when the broker closed
    /// (or reset) the connection. For a thread that owns this connection's reads while no <see cref="ReceiveLoopAsync"/>
    /// runs (the fixed-rate pacer reads its SENTs this way). The socket is non-blocking from here on:
    /// <see cref="Send"/> waits for room itself.
    /// </summary>
    public bool ReceiveAvailable(IFrameHandler handler)
    {
        _socket.Blocking = false;
        while (true)
        {
            MakeRoom();
            var n = _socket.Receive(_buffer.AsSpan(_end), SocketFlags.None, out var error);
            if (error == SocketError.WouldBlock)
            {
                return true;
            }

            if (error != SocketError.Success || n == 0)
            {
                return false; // closed or reset: as the receive loop, stop reading (the run counts what is missing)
            }

            _end += n;
            Dispatch(handler);
            if (_end < _buffer.Length)
            {
                return true; // the read did not fill the buffer: nothing more is waiting
            }
        }
    }

    private void MakeRoom()
    {
        if (_start == _end)
        {
            _start = _end = 0;
        }
        else if (_start > 0 && _buffer.Length - _end < 4096)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }

        if (_end == _buffer.Length)
        {
            // One frame larger than the buffer: grow (rare; the broker's frames are at most 64 KiB by default).
            Array.Resize(ref _buffer, _buffer.Length * 2);
        }
    }

    private async ValueTask<int> ReadMoreAsync(CancellationToken cancellationToken)
    {
        MakeRoom();
        var n = await _socket.ReceiveAsync(_buffer.AsMemory(_end), SocketFlags.None, cancellationToken).ConfigureAwait(false);
        _end += n;
        return n;
    }

    /// <summary>Sends DISCONNECT(NORMAL) best effort and closes.</summary>
    public void Close()
    {
        try
        {
            _socket.Send(DisconnectFrame, SocketFlags.None);
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        _socket.Dispose();
    }

    public void Dispose() => _socket.Dispose();

    private static readonly byte[] DisconnectFrame = Wire.Frame(new Disconnect { Reason = ReasonCode.NormalDisconnect });
}
