using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Broker.Transport;
using Microsoft.Extensions.Logging.Abstractions;

namespace ChatBroker.Broker.Tests.Transport;

/// <summary>
/// The plain TCP listener over real loopback sockets, both ways it accepts: descriptors from accept4 handed over as
/// <see cref="PolledSocketTransport"/> (tcp.readiness_poller, Linux x64), and .NET sockets (the TLS listener's way,
/// and every listener's without the poller).
/// </summary>
public sealed class SocketListenerTests
{
    public static TheoryData<bool> Ways => [true, false];

    [Theory]
    [MemberData(nameof(Ways))]
    public async Task Connections_past_max_connections_are_closed_at_once_and_counted(bool descriptors)
    {
        if (descriptors && !DescriptorAcceptor.IsSupported)
        {
            return; // the socket way covers this platform
        }

        var node = $"listener-{Guid.NewGuid():N}";
        using var metrics = new BrokerMetrics(node);
        using var counts = new Counts(node);
        var handler = new RecordingHandler(descriptors);
        var listener = new SocketListener(new IPEndPoint(IPAddress.Loopback, 0), "tcp.listen", 2, handler, metrics, NullLogger.Instance, static (_, _) => { });
        await listener.StartAsync(CancellationToken.None);
        var clients = new List<Socket>();
        try
        {
            // The first two reach the handler, as the transport each way gives; the third is closed by the broker.
            var started = new List<IDeviceTransport>();
            for (var i = 0; i < 3; i++)
            {
                var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                clients.Add(client);
                await client.ConnectAsync(listener.LocalEndPoint!);
                if (i < 2)
                {
                    started.Add(await handler.Started.Reader.ReadAsync().AsTask().WaitAsync(TestDevice.Timeout));
                }
            }

            var (first, second) = (started[0], started[1]);
            Assert.All([first, second], t => Assert.IsType(descriptors ? typeof(PolledSocketTransport) : typeof(SocketTransport), t));
            Assert.Equal((clients[0].LocalEndPoint, clients[1].LocalEndPoint), (first.RemoteEndPoint, second.RemoteEndPoint));
            Assert.Equal(0, await clients[2].ReceiveAsync(new byte[1]).WaitAsync(TestDevice.Timeout)); // the broker's end
            Assert.Equal(2, listener.OpenConnections);
            Assert.Equal((3, 1), (counts.Accepted, counts.Rejected));

            // An admitted connection works both ways, with Nagle off (inherited from the listening socket by accept4).
            await clients[0].SendAsync(new byte[] { 42 });
            var transport = first;
            var buffer = new byte[4];
            Assert.Equal(1, await transport.ReceiveAsync(buffer, CancellationToken.None).AsTask().WaitAsync(TestDevice.Timeout));
            Assert.Equal(42, buffer[0]);
            Assert.True(transport.Send([7, 8], 2, new NoCompletion(), out var sent) && sent);
            Assert.Equal(2, await clients[0].ReceiveAsync(buffer).WaitAsync(TestDevice.Timeout));

            // One closes: the listener takes a new one in its place.
            first.Close();
            ((IConnectionOwner)listener).Release(1, null);
            var fourth = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            clients.Add(fourth);
            await fourth.ConnectAsync(listener.LocalEndPoint!);
            var replacement = await handler.Started.Reader.ReadAsync().AsTask().WaitAsync(TestDevice.Timeout);
            Assert.Equal(fourth.LocalEndPoint, replacement.RemoteEndPoint);
            replacement.Close();
            second.Close();
            ((IConnectionOwner)listener).Release(2, null);
            ((IConnectionOwner)listener).Release(3, null);
        }
        finally
        {
            // Stopping wakes the thread waiting in accept4 (or cancels the async accepts) and returns.
            await listener.StopAsync(CancellationToken.None).WaitAsync(TestDevice.Timeout);
            await listener.DisposeAsync();
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }

        Assert.Equal(0, listener.OpenConnections);
    }

    [Fact]
    public async Task A_stopped_listener_accepts_nothing_more()
    {
        using var metrics = new BrokerMetrics($"listener-{Guid.NewGuid():N}");
        var handler = new RecordingHandler(descriptors: DescriptorAcceptor.IsSupported);
        var listener = new SocketListener(new IPEndPoint(IPAddress.Loopback, 0), "tcp.listen", 10, handler, metrics, NullLogger.Instance, static (_, _) => { });
        await listener.StartAsync(CancellationToken.None);
        var address = listener.LocalEndPoint!;

        await listener.StopAsync(CancellationToken.None).WaitAsync(TestDevice.Timeout);
        await listener.DisposeAsync();

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var refused = await Record.ExceptionAsync(() => client.ConnectAsync(address).WaitAsync(TestDevice.Timeout));
        Assert.Equal(SocketError.ConnectionRefused, Assert.IsType<SocketException>(refused).SocketErrorCode);
        Assert.False(handler.Started.Reader.TryRead(out _));
    }

    /// <summary>Hands each connection to the test instead of a session (either way the listener accepts).</summary>
    private sealed class RecordingHandler(bool descriptors) : IPolledConnectionHandler
    {
        public System.Threading.Channels.Channel<IDeviceTransport> Started { get; } = System.Threading.Channels.Channel.CreateUnbounded<IDeviceTransport>();

        public ReadinessPoller? Poller => descriptors ? ReadinessPoller.Shared(inlineCompletions: false) : null;

        public void Start(Socket socket, long connectionId, IConnectionOwner owner) => Start(new SocketTransport(socket), connectionId, owner);

        public void Start(IDeviceTransport transport, long connectionId, IConnectionOwner owner) => Started.Writer.TryWrite(transport);
    }

    private sealed class NoCompletion : ITransportSendCompletion
    {
        public void OnSendCompleted(byte[] buffer, bool sent)
        {
        }
    }

    /// <summary>chatbroker.connections.accepted and .rejected of one node's meter.</summary>
    private sealed class Counts : IDisposable
    {
        private readonly MeterListener _listener = new();
        private long _accepted;
        private long _rejected;

        public Counts(string node)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Tags?.Any(t => t.Key == "node" && (string?)t.Value == node) == true
                    && instrument.Name is "chatbroker.connections.accepted" or "chatbroker.connections.rejected")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, _, _) =>
            {
                if (instrument.Name == "chatbroker.connections.accepted")
                {
                    Interlocked.Add(ref _accepted, value);
                }
                else
                {
                    Interlocked.Add(ref _rejected, value);
                }
            });
            _listener.Start();
        }

        public long Accepted => Interlocked.Read(ref _accepted);

        public long Rejected => Interlocked.Read(ref _rejected);

        public void Dispose() => _listener.Dispose();
    }
}
