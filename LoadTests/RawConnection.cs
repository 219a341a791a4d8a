using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
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
/// Over TLS (an <see cref="SslStream"/>) and WebSocket (binary messages of whole frames) only the async paths work
/// (<see cref="ConnectAsync(ClientTransport, IPEndPoint, IPAddress?, int, CancellationToken)"/>, <see cref="LoginAsync"/>,
/// <see cref="SendAsync"/>, <see cref="ReceiveLoopAsync"/>) plus <see cref="Send"/>, which blocks on them.
/// </summary>
public sealed class RawConnection : IDisposable
{
    private const string Alpn = "chatbroker/1";
    private readonly Socket _socket;
    private SslStream? _tls;
    private WebSocket? _ws;
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

    /// <summary>Connects over <paramref name="transport"/>: TLS accepts any certificate (the run's own self-signed one); WebSocket upgrades on /chat.</summary>
    public static async Task<RawConnection> ConnectAsync(ClientTransport transport, IPEndPoint target, IPAddress? source, int bufferSize, CancellationToken cancellationToken)
    {
        var connection = await ConnectAsync(target, source, bufferSize, cancellationToken).ConfigureAwait(false);
        try
        {
            switch (transport)
            {
                case ClientTransport.Tls:
                    var tls = new SslStream(new NetworkStream(connection._socket, ownsSocket: false));
                    connection._tls = tls;
                    await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                    {
                        TargetHost = "localhost",
                        ApplicationProtocols = [new SslApplicationProtocol(Alpn)],
                        RemoteCertificateValidationCallback = static (_, _, _, _) => true,
                    }, cancellationToken).ConfigureAwait(false);
                    break;
                case ClientTransport.Ws:
                    connection._ws = await UpgradeAsync(connection._socket, target, cancellationToken).ConfigureAwait(false);
                    break;
            }

            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The HTTP/1.1 upgrade to a WebSocket on /chat, by hand on the connected socket (so the socket keeps its source
    /// address); the broker answers 101 and sends nothing more until the client does.
    /// </summary>
    private static async Task<WebSocket> UpgradeAsync(Socket socket, IPEndPoint target, CancellationToken cancellationToken)
    {
        var key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(16));
        var request = Encoding.ASCII.GetBytes(
            $"GET /chat HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n");
        await socket.SendAsync(request, SocketFlags.None, cancellationToken).ConfigureAwait(false);
        var response = new byte[4096];
        var length = 0;
        while (length < 4 || !response.AsSpan(0, length).EndsWith("\r\n\r\n"u8))
        {
            // One byte at a time: nothing after the header may be read here, it belongs to the WebSocket.
            var n = await socket.ReceiveAsync(response.AsMemory(length, 1), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (n == 0 || ++length == response.Length)
            {
                throw new IOException("the broker closed the connection during the WebSocket upgrade");
            }
        }

        var status = Encoding.ASCII.GetString(response, 0, length);
        if (!status.StartsWith("HTTP/1.1 101", StringComparison.Ordinal))
        {
            throw new IOException("WebSocket upgrade refused: " + status[..status.IndexOf('\r', StringComparison.Ordinal)]);
        }

        return WebSocket.CreateFromStream(new NetworkStream(socket, ownsSocket: false), new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
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
        if (_ws is not null)
        {
            await _ws.SendAsync(bytes, WebSocketMessageType.Binary, endOfMessage: true, cancellationToken).ConfigureAwait(false); // whole frames per message
            return;
        }

        if (_tls is not null)
        {
            await _tls.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
            return;
        }

        while (bytes.Length > 0)
        {
            var n = await _socket.SendAsync(bytes, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            bytes = bytes[n..];
        }
    }

    /// <summary>Blocking send, for the fixed-rate pacer thread (waits for room on a non-blocking socket too).</summary>
    public void Send(ReadOnlySpan<byte> bytes)
    {
        if (_ws is not null)
        {
            _ws.SendAsync(new ArraySegment<byte>(bytes.ToArray()), WebSocketMessageType.Binary, endOfMessage: true, CancellationToken.None).GetAwaiter().GetResult();
            return;
        }

        if (_tls is not null)
        {
            _tls.Write(bytes);
            return;
        }

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
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException or IOException or WebSocketException)
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
        if (_tls is not null || _ws is not null)
        {
            throw new NotSupportedException("reading without waiting is for TCP connections only (pairs --rate runs over tcp)");
        }

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
        int n;
        if (_ws is not null)
        {
            // Messages hold whole frames, but the buffer is a byte stream to the frame reader: a message cut by the
            // buffer's end continues in the next read.
            var received = await _ws.ReceiveAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            n = received.MessageType == WebSocketMessageType.Close ? 0 : received.Count;
        }
        else if (_tls is not null)
        {
            n = await _tls.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
        }
        else
        {
            n = await _socket.ReceiveAsync(_buffer.AsMemory(_end), SocketFlags.None, cancellationToken).ConfigureAwait(false);
        }

        _end += n;
        return n;
    }

    /// <summary>Sends DISCONNECT(NORMAL) best effort and closes.</summary>
    public void Close()
    {
        try
        {
            Send(DisconnectFrame);
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or WebSocketException or InvalidOperationException)
        {
        }

        Dispose();
    }

    public void Dispose()
    {
        _ws?.Abort();
        _ws?.Dispose();
        _tls?.Dispose();
        _socket.Dispose();
    }

    private static readonly byte[] DisconnectFrame = Wire.Frame(new Disconnect { Reason = ReasonCode.NormalDisconnect });
}
