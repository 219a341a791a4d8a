using System.Net.Sockets;
using ChatBroker.Broker.Configuration;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// Placeholder connection handler until the protocol session lands: holds the connection without a receive
/// buffer (zero-byte receives) and closes it when the peer closes or tcp.connect_timeout passes.
/// </summary>
internal sealed class HandshakeTimeoutHandler(BrokerOptions options) : ISocketConnectionHandler
{
    public async Task RunAsync(Socket socket, long connectionId, CancellationToken stopping)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        timeout.CancelAfter(options.Tcp.ConnectTimeout);
        try
        {
            while (await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, timeout.Token).ConfigureAwait(false) >= 0)
            {
                if (socket.Available == 0)
                {
                    return;
                }

                var drain = new byte[Math.Min(socket.Available, 4096)];
                await socket.ReceiveAsync(drain, SocketFlags.None, timeout.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (SocketException)
        {
        }
    }
}
