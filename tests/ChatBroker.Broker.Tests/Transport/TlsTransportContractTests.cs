using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Broker.Transport;

namespace ChatBroker.Broker.Tests.Transport;

/// <summary>The transport contract over TLS: a <see cref="TlsTransport"/> on the server side of a loopback SslStream pair.</summary>
public sealed class TlsTransportContractTests : DeviceTransportContract
{
    private static readonly X509Certificate2 Certificate = CreateCertificate();

    private static X509Certificate2 CreateCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));
    }

    private protected override async Task<(IDeviceTransport Transport, ITransportPeer Peer)> ConnectAsync(int peerBufferBytes)
    {
        var (server, client) = await SocketTransportTests.LoopbackPairAsync(peerBufferBytes);
        var serverStream = new SslStream(new NetworkStream(server, ownsSocket: true));
        var clientStream = new SslStream(new NetworkStream(client, ownsSocket: true));
        var serverOptions = new SslServerAuthenticationOptions
        {
            ServerCertificateContext = SslStreamCertificateContext.Create(Certificate, null, offline: true),
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ApplicationProtocols = [new SslApplicationProtocol(TlsCertificateSource.Alpn)],
        };
        var clientOptions = new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            ApplicationProtocols = [new SslApplicationProtocol(TlsCertificateSource.Alpn)],
            RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is not null && certificate.GetCertHashString() == Certificate.GetCertHashString(),
        };
        await Task.WhenAll(serverStream.AuthenticateAsServerAsync(serverOptions), clientStream.AuthenticateAsClientAsync(clientOptions)).WaitAsync(TestDevice.Timeout);
        Assert.Equal(TlsCertificateSource.Alpn, clientStream.NegotiatedApplicationProtocol.ToString());
        return (new TlsTransport(serverStream, server), new SslPeer(clientStream, client));
    }

    private sealed class SslPeer(SslStream stream, Socket socket) : ITransportPeer
    {
        public async Task WriteAsync(byte[] bytes) => await stream.WriteAsync(bytes);

        public async Task<byte[]> ReadAsync(int count)
        {
            using var timeout = new CancellationTokenSource(TestDevice.Timeout);
            var bytes = new byte[count];
            await stream.ReadExactlyAsync(bytes, timeout.Token);
            return bytes;
        }

        public async Task<bool> AtEndAsync()
        {
            using var timeout = new CancellationTokenSource(TestDevice.Timeout);
            try
            {
                return await stream.ReadAsync(new byte[1], timeout.Token) == 0;
            }
            catch (IOException)
            {
                return true; // the end without close_notify: the TCP stream ended
            }
        }

        // A half-close under TLS: the transport must see the end of the stream.
        public void CloseOutput() => socket.Shutdown(SocketShutdown.Send);

        public async ValueTask DisposeAsync()
        {
            await stream.DisposeAsync();
            socket.Dispose();
        }
    }
}
