using System.ComponentModel;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using ChatBroker.Broker.Configuration;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Transport;

/// <summary>What a transport hands a connection ready for the protocol to. The broker's session handler implements it.</summary>
public interface IDeviceConnectionHandler
{
    /// <summary>
    /// Starts a session over <paramref name="transport"/> and returns at once; when the connection has ended the
    /// session closes the transport and calls <see cref="IConnectionOwner.Release"/> exactly once.
    /// </summary>
    void Start(IDeviceTransport transport, long connectionId, IConnectionOwner owner);
}

/// <summary>The MQTT listener's connection handler, which the WebSocket listener serves on ws.listen's /mqtt when the
/// MQTT listener is on (the transport layer knows no MQTT: this marker is all it sees).</summary>
public interface IMqttWebSocketHandler : IDeviceConnectionHandler
{
}

/// <summary>
/// The TLS listener's half between accept and session: runs the server handshake (TLS 1.2/1.3, ALPN
/// <see cref="TlsCertificateSource.Alpn"/>, the certificate of the moment) within tls.handshake_timeout, then
/// starts a session over a <see cref="TlsTransport"/>. A handshake that fails (a cleartext client, no common
/// version, a reset) or times out closes the socket, is counted, and never reaches the session.
/// </summary>
public sealed class TlsConnectionHandler(
    TlsCertificateSource certificates, TlsOptions options, IDeviceConnectionHandler sessions, TransportInstruments instruments, ILogger<TlsConnectionHandler> logger)
    : ISocketConnectionHandler
{
    public void Start(Socket socket, long connectionId, IConnectionOwner owner) => _ = HandshakeAsync(socket, connectionId, owner);

    private async Task HandshakeAsync(Socket socket, long connectionId, IConnectionOwner owner)
    {
        // Off the accept loop before any work: the handshake's first read may complete inline.
        await Task.Yield();
        var stream = new SslStream(new NetworkStream(socket, ownsSocket: true), leaveInnerStreamOpen: false);
        string result;
        string reason;
        using (var deadline = CancellationTokenSource.CreateLinkedTokenSource(owner.Stopping))
        {
            deadline.CancelAfter(options.HandshakeTimeout);
            try
            {
                await stream.AuthenticateAsServerAsync(certificates.NativeOptions, deadline.Token).ConfigureAwait(false);
                instruments.TlsHandshakes.Add(1, TransportInstruments.Result("ok"));
                sessions.Start(new TlsTransport(stream, socket), connectionId, owner);
                return;
            }
            catch (OperationCanceledException) when (!owner.Stopping.IsCancellationRequested)
            {
                (result, reason) = ("timeout", $"no handshake within {options.HandshakeTimeout.TotalSeconds:0.#}s");
            }
            catch (OperationCanceledException)
            {
                (result, reason) = ("failed", "the broker is shutting down");
            }
            catch (Exception e) when (e is AuthenticationException or IOException or SocketException or ObjectDisposedException or Win32Exception)
            {
                (result, reason) = ("failed", e.Message);
            }
            catch (Exception e)
            {
                // Never lets a handshake take the process down; the listener logs it as unexpected.
                instruments.TlsHandshakes.Add(1, TransportInstruments.Result("failed"));
                await stream.DisposeAsync().ConfigureAwait(false);
                owner.Release(connectionId, e);
                return;
            }
        }

        instruments.TlsHandshakes.Add(1, TransportInstruments.Result(result));
        TransportLog.HandshakeFailed(logger, connectionId, SocketTransport.RemoteEndPointOf(socket), result, reason);
        await stream.DisposeAsync().ConfigureAwait(false);
        owner.Release(connectionId, null);
    }
}
