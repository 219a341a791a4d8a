using System.Net;
using System.Net.Security;
using System.Net.Sockets;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// A device connection over TLS (an <see cref="SslStream"/> on the accepted socket), once the handshake is done.
/// <para>
/// Idle cost: <see cref="WaitReadableAsync"/> is a zero-byte read on the SslStream, which waits with a zero-byte
/// receive on the socket and holds no buffer; SslStream rents its record buffers from the shared pool and gives
/// them back once everything received was decrypted and read, and once a write is encrypted and sent. What an
/// idle TLS connection keeps is the SslStream, its native TLS session (OpenSSL's SSL object) and their keys:
/// measured in docs/performance.md ("TLS and WebSocket").
/// </para>
/// </summary>
public sealed class TlsTransport(SslStream stream, Socket socket) : IDeviceTransport
{
    private readonly SslStream _stream = stream;
    private readonly Socket _socket = socket;
    private int _closed;

    public EndPoint? RemoteEndPoint => SocketTransport.RemoteEndPointOf(_socket);

    /// <summary>The negotiated protocol (for tests and logs).</summary>
    public System.Security.Authentication.SslProtocols Protocol => _stream.SslProtocol;

    // SslStream answers a zero-byte read at once when decrypted bytes are buffered, else waits with a zero-byte
    // read on the socket: no buffer while waiting.
    public ValueTask<int> WaitReadableAsync(CancellationToken cancellationToken) =>
        _stream.ReadAsync(Memory<byte>.Empty, cancellationToken);

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken) =>
        _stream.ReadAsync(buffer, cancellationToken);

    // The state is the transport itself: a static lambda, so a send allocates no closure.
    public bool Send(byte[] buffer, int length, ITransportSendCompletion completion, out bool sent) =>
        PendingSend.Run(static s => s.Stream.WriteAsync(s.Buffer.AsMemory(0, s.Length)), (Stream: _stream, Buffer: buffer, Length: length), buffer, completion, out sent);

    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        // A pending read ends with 0 or an error once the socket is closed; disposing the SslStream frees the
        // native TLS session and any buffer it still holds.
        _socket.Close();
        _stream.Dispose();
    }
}
