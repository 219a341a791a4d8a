using System.Net;
using System.Net.Sockets;
using ChatBroker.Broker.Transport;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>
/// What a session relies on from its transport, run against every implementation: the TCP socket the broker
/// serves and the in-memory pipes the session tests use. One behaviour, two implementations, one suite.
/// </summary>
public abstract class DeviceTransportContract : IAsyncLifetime
{
    private IDeviceTransport? _transport;
    private ITransportPeer? _peer;

    /// <summary>A connected transport and the other end of it; the peer buffers at most about <paramref name="peerBufferBytes"/> unread.</summary>
    private protected abstract Task<(IDeviceTransport Transport, ITransportPeer Peer)> ConnectAsync(int peerBufferBytes);

    private protected IDeviceTransport Transport => _transport!;

    private protected ITransportPeer Peer => _peer!;

    public async Task InitializeAsync() => (_transport, _peer) = await ConnectAsync(peerBufferBytes: 16 * 1024);

    public async Task DisposeAsync()
    {
        _transport?.Close();
        if (_peer is not null)
        {
            await _peer.DisposeAsync();
        }
    }

    [Fact]
    public async Task Waiting_for_data_completes_when_bytes_arrive_and_leaves_them_for_the_receive()
    {
        var wait = Transport.WaitReadableAsync(CancellationToken.None).AsTask();
        Assert.False(wait.IsCompleted);

        await Peer.WriteAsync([1, 2, 3]);
        await wait.WaitAsync(TestDevice.Timeout);
        var buffer = new byte[16];
        var received = await Transport.ReceiveAsync(buffer, CancellationToken.None);

        Assert.Equal([1, 2, 3], buffer[..received]);
    }

    [Fact]
    public async Task A_receive_returns_0_once_the_peer_has_closed()
    {
        await Peer.WriteAsync([7]);
        Peer.CloseOutput();

        var buffer = new byte[16];
        Assert.Equal(1, await Transport.ReceiveAsync(buffer, CancellationToken.None).AsTask().WaitAsync(TestDevice.Timeout));
        Assert.Equal(0, await Transport.ReceiveAsync(buffer, CancellationToken.None).AsTask().WaitAsync(TestDevice.Timeout));
    }

    [Fact]
    public async Task A_wait_whose_token_fires_throws_OperationCanceledException()
    {
        using var deadline = new CancellationTokenSource();
        var wait = Transport.WaitReadableAsync(deadline.Token).AsTask();

        await deadline.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait.WaitAsync(TestDevice.Timeout));
    }

    [Fact]
    public async Task Sends_arrive_whole_and_in_order()
    {
        var completion = new SendCompletion();
        var expected = new List<byte>();
        for (var i = 0; i < 10; i++)
        {
            var buffer = Enumerable.Range(0, 1000).Select(b => (byte)(b + i)).ToArray();
            expected.AddRange(buffer.AsSpan(0, 999).ToArray());
            if (!Transport.Send(buffer, 999, completion, out var sent))
            {
                sent = await completion.Next(buffer);
            }

            Assert.True(sent);
        }

        Assert.Equal(expected, await Peer.ReadAsync(expected.Count));
    }

    [Fact]
    public async Task A_send_the_peer_does_not_read_finishes_later_through_its_completion()
    {
        var completion = new SendCompletion();
        var buffer = new byte[64 * 1024];
        long sentBytes = 0;
        bool pending;
        // Fill whatever the transport and the peer buffer until a send cannot finish at once.
        while (!(pending = !Transport.Send(buffer, buffer.Length, completion, out var sent)))
        {
            Assert.True(sent);
            sentBytes += buffer.Length;
            Assert.True(sentBytes < 256L * 1024 * 1024, "every send finished at once: the peer's buffer never filled");
        }

        Assert.True(pending);
        var reading = Peer.ReadAsync((int)(sentBytes + buffer.Length));

        Assert.True(await completion.Next(buffer));
        Assert.Equal(sentBytes + buffer.Length, (await reading).Length);
    }

    [Fact]
    public async Task Close_ends_a_pending_wait_and_the_peer_reads_what_was_sent_then_the_end()
    {
        var wait = Transport.WaitReadableAsync(CancellationToken.None).AsTask();
        Assert.True(Transport.Send([1, 2, 3, 4], 3, new SendCompletion(), out var sent) && sent);

        Transport.Close();

        // A wait the close ended returns, or fails as the session expects of a closed transport.
        var ended = await Record.ExceptionAsync(() => wait.WaitAsync(TestDevice.Timeout));
        Assert.True(ended is null or SocketException or ObjectDisposedException or IOException, ended?.ToString());
        Assert.Equal([1, 2, 3], await Peer.ReadAsync(3));
        Assert.True(await Peer.AtEndAsync());
    }

    [Fact]
    public void A_send_after_close_fails_at_once()
    {
        Transport.Close();

        Assert.True(Transport.Send([1], 1, new SendCompletion(), out var sent));
        Assert.False(sent);
    }

    /// <summary>Records the completions of pending sends.</summary>
    private protected sealed class SendCompletion : ITransportSendCompletion
    {
        private readonly System.Threading.Channels.Channel<(byte[] Buffer, bool Sent)> _completed =
            System.Threading.Channels.Channel.CreateUnbounded<(byte[], bool)>();

        public void OnSendCompleted(byte[] buffer, bool sent) => _completed.Writer.TryWrite((buffer, sent));

        /// <summary>The next completion, which must be of <paramref name="buffer"/>; whether it was sent.</summary>
        public async Task<bool> Next(byte[] buffer)
        {
            var (completed, sent) = await _completed.Reader.ReadAsync().AsTask().WaitAsync(TestDevice.Timeout);
            Assert.Same(buffer, completed);
            return sent;
        }
    }
}

/// <summary>The other end of a transport under test.</summary>
internal interface ITransportPeer : IAsyncDisposable
{
    Task WriteAsync(byte[] bytes);

    /// <summary>Exactly <paramref name="count"/> bytes.</summary>
    Task<byte[]> ReadAsync(int count);

    /// <summary>True when the stream has ended (nothing more to read).</summary>
    Task<bool> AtEndAsync();

    /// <summary>Ends what the peer sends (a half-close).</summary>
    void CloseOutput();
}

/// <summary>The same contract over the broker's own epoll loops (tcp.readiness_poller), where the platform has them.</summary>
public sealed class PolledSocketTransportTests : DeviceTransportContract
{
    private IPEndPoint? _client;

    private protected override async Task<(IDeviceTransport Transport, ITransportPeer Peer)> ConnectAsync(int peerBufferBytes)
    {
        // Accepted as the listener accepts: a descriptor from accept4, no .NET Socket on the broker's side.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.SendBufferSize = peerBufferBytes; // the accepted connection inherits it
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = peerBufferBytes };
        await client.ConnectAsync(listener.LocalEndPoint!);
        _client = (IPEndPoint)client.LocalEndPoint!;
        var address = new byte[DescriptorAcceptor.AddressBytes];
        var handle = DescriptorAcceptor.Accept(listener.SafeHandle, address, out var length, out var errno);
        Assert.True(handle is not null, $"accept4 failed: errno {errno}");
        return (new PolledSocketTransport(handle, address.AsSpan(0, length), ReadinessPoller.Shared(inlineCompletions: false)), SocketTransportTests.PeerOf(client));
    }

    [Fact]
    public async Task An_idle_wait_leaves_the_socket_without_dotnet_receive_state()
    {
        // What tcp.readiness_poller is for: waiting costs a one-shot epoll registration, no Socket, no SocketAsyncContext.
        var wait = Transport.WaitReadableAsync(CancellationToken.None).AsTask();
        const System.Reflection.BindingFlags Private = System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance;
        Assert.Null(typeof(PolledSocketTransport).GetField("_slowSends", Private)!.GetValue(Transport));
        Assert.DoesNotContain(typeof(PolledSocketTransport).GetFields(Private), f => f.FieldType == typeof(Socket) || f.FieldType == typeof(SafeSocketHandle) || f.FieldType == typeof(EndPoint) || f.FieldType == typeof(IPEndPoint));

        await Peer.WriteAsync([9]);
        await wait.WaitAsync(TestDevice.Timeout);
        Assert.Equal(1, await Transport.ReceiveAsync(new byte[4], CancellationToken.None));
    }

    [Fact]
    public async Task A_slow_send_goes_on_over_a_descriptor_of_its_own_that_close_also_closes()
    {
        var completion = new SendCompletion();
        var buffer = new byte[64 * 1024];
        while (Transport.Send(buffer, buffer.Length, completion, out var sent))
        {
            Assert.True(sent);
        }

        // The rest waits in .NET's asynchronous send, on a duplicate of the descriptor owned by its Socket.
        const System.Reflection.BindingFlags Private = System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance;
        var slow = (SocketTransport)typeof(PolledSocketTransport).GetField("_slowSends", Private)!.GetValue(Transport)!;
        var socket = (Socket)typeof(SocketTransport).GetField("_socket", Private)!.GetValue(slow)!;
        var handle = (DescriptorHandle)typeof(PolledSocketTransport).GetField("_handle", Private)!.GetValue(Transport)!;
        Assert.NotEqual(handle.DangerousGetHandle(), socket.SafeHandle.DangerousGetHandle());

        Transport.Close();

        Assert.False(await completion.Next(buffer)); // the pending send ends, unsent
        Assert.True(socket.SafeHandle.IsClosed);
        Assert.True(handle.IsClosed);
    }

    [Fact]
    public void The_peer_address_is_the_clients_and_still_known_after_close()
    {
        Assert.Equal(_client, Transport.RemoteEndPoint);
        Transport.Close();
        Assert.Equal(_client, Transport.RemoteEndPoint); // the closed-connection log asks for it
    }

    [Fact]
    public void An_IPv6_peer_address_comes_back_whole()
    {
        // sockaddr_in6 as Linux writes it: family 10 (host order), port 0x1F90 (network order), flow info, address, scope id 3.
        var address = new byte[28];
        address[0] = 10;
        address[2] = 0x1F;
        address[3] = 0x90;
        var ip = IPAddress.Parse("fe80::1:2:3:4");
        ip.GetAddressBytes().CopyTo(address, 8);
        address[24] = 3;
        using var handle = new DescriptorHandle(-1);

        var transport = new PolledSocketTransport(handle, address, ReadinessPoller.Shared(inlineCompletions: false));

        Assert.Equal(new IPEndPoint(new IPAddress(ip.GetAddressBytes(), 3), 0x1F90), transport.RemoteEndPoint);
        transport.Close();
    }
}

public sealed class SocketTransportTests : DeviceTransportContract
{
    internal static ITransportPeer PeerOf(Socket client) => new SocketPeer(client);

    private protected override async Task<(IDeviceTransport Transport, ITransportPeer Peer)> ConnectAsync(int peerBufferBytes)
    {
        var (server, client) = await LoopbackPairAsync(peerBufferBytes);
        return (new SocketTransport(server), new SocketPeer(client));
    }

    /// <summary>A connected loopback pair whose buffers toward the client hold about <paramref name="peerBufferBytes"/>.</summary>
    internal static async Task<(Socket Server, Socket Client)> LoopbackPairAsync(int peerBufferBytes)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = peerBufferBytes };
        await client.ConnectAsync(listener.LocalEndPoint!);
        var server = await listener.AcceptAsync();
        server.SendBufferSize = peerBufferBytes;
        return (server, client);
    }

    [Fact]
    public async Task Sends_that_finish_at_once_allocate_nothing()
    {
        // 100 sends of 100 bytes fit the socket's buffers: each finishes inline, as an idle phone's replies do.
        var completion = new SendCompletion();
        var buffer = new byte[100];
        for (var i = 0; i < 100; i++)
        {
            Assert.True(Transport.Send(buffer, buffer.Length, completion, out _)); // warms the pool of send args
        }

        await Peer.ReadAsync(100 * buffer.Length);

        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 100; i++)
        {
            if (!Transport.Send(buffer, buffer.Length, completion, out var sent) || !sent)
            {
                Assert.Fail($"send {i} did not finish at once");
            }
        }

        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        await Peer.ReadAsync(100 * buffer.Length);
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void A_socket_transport_adds_24_bytes_to_a_connection()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _ = new SocketTransport(socket); // JIT and type loading outside the measurement

        var before = GC.GetAllocatedBytesForCurrentThread();
        var transport = new SocketTransport(socket);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        // An object header and the socket reference: what an idle connection pays for the abstraction.
        Assert.Equal(24, allocated);
        GC.KeepAlive(transport);
    }

    private sealed class SocketPeer(Socket socket) : ITransportPeer
    {
        public async Task WriteAsync(byte[] bytes) => await socket.SendAsync(bytes);

        public async Task<byte[]> ReadAsync(int count)
        {
            using var timeout = new CancellationTokenSource(TestDevice.Timeout);
            var bytes = new byte[count];
            var read = 0;
            while (read < count)
            {
                var n = await socket.ReceiveAsync(bytes.AsMemory(read), timeout.Token);
                Assert.True(n > 0, $"the stream ended after {read} of {count} bytes");
                read += n;
            }

            return bytes;
        }

        public async Task<bool> AtEndAsync()
        {
            using var timeout = new CancellationTokenSource(TestDevice.Timeout);
            return await socket.ReceiveAsync(new byte[1], timeout.Token) == 0;
        }

        public void CloseOutput() => socket.Shutdown(SocketShutdown.Send);

        public ValueTask DisposeAsync()
        {
            socket.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}

public sealed class InMemoryTransportTests : DeviceTransportContract
{
    private protected override Task<(IDeviceTransport Transport, ITransportPeer Peer)> ConnectAsync(int peerBufferBytes)
    {
        var transport = new InMemoryTransport(peerBufferBytes);
        return Task.FromResult<(IDeviceTransport, ITransportPeer)>((transport, new PipePeer(transport)));
    }

    private sealed class PipePeer(InMemoryTransport transport) : ITransportPeer
    {
        public async Task WriteAsync(byte[] bytes) => await transport.ClientOutput.WriteAsync(bytes);

        public async Task<byte[]> ReadAsync(int count)
        {
            using var timeout = new CancellationTokenSource(TestDevice.Timeout);
            var input = transport.ClientInput;
            var result = await input.ReadAtLeastAsync(count, timeout.Token);
            Assert.True(result.Buffer.Length >= count, $"the stream ended after {result.Buffer.Length} of {count} bytes");
            var bytes = System.Buffers.BuffersExtensions.ToArray(result.Buffer.Slice(0, count));
            input.AdvanceTo(result.Buffer.GetPosition(count));
            return bytes;
        }

        public async Task<bool> AtEndAsync()
        {
            using var timeout = new CancellationTokenSource(TestDevice.Timeout);
            var result = await transport.ClientInput.ReadAsync(timeout.Token);
            transport.ClientInput.AdvanceTo(result.Buffer.Start);
            return result.IsCompleted && result.Buffer.IsEmpty;
        }

        public void CloseOutput() => transport.ClientOutput.Complete();

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
