using System.Net;
using System.Net.Sockets;

namespace ChatBroker.Web.Tests.Infrastructure;

/// <summary>
/// A TCP relay on 127.0.0.1 in front of the broker's WebSocket listener: the browser loads the page and opens its
/// WebSocket through it, and the test cuts the network there. <see cref="Cut"/> resets every relayed connection
/// and refuses new ones (accepted, then reset at once, as a dead network looks to a browser) until
/// <see cref="Restore"/>.
/// </summary>
public sealed class TcpRelay : IAsyncDisposable
{
    private readonly IPEndPoint _target;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _lock = new();
    private readonly List<Socket> _open = [];
    private readonly Task _accepting;
    private bool _cut;
    private volatile bool _dropFromServer;
    private TaskCompletionSource _refused = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TcpRelay(IPEndPoint target)
    {
        _target = target;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(64);
        EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        _accepting = AcceptLoopAsync();
    }

    public IPEndPoint EndPoint { get; }

    /// <summary>Completes when a connection attempt has been refused since the last <see cref="Cut"/>.</summary>
    public Task Refused => _refused.Task;

    /// <summary>Drops the network: resets every open connection and refuses new ones.</summary>
    public void Cut()
    {
        Socket[] open;
        lock (_lock)
        {
            _cut = true;
            _refused = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            open = [.. _open];
            _open.Clear();
        }

        foreach (var socket in open)
        {
            Reset(socket);
        }
    }

    public void Restore()
    {
        lock (_lock)
        {
            _cut = false;
            _dropFromServer = false;
        }
    }

    /// <summary>From now on what the broker sends is lost on the way (the connections stay up): a SENT that never arrives.</summary>
    public void DropFromServer() => _dropFromServer = true;

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            _ = RelayAsync(client);
        }
    }

    private async Task RelayAsync(Socket client)
    {
        lock (_lock)
        {
            if (_cut)
            {
                Reset(client);
                _refused.TrySetResult();
                return;
            }
        }

        var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.NoDelay = true;
        try
        {
            await server.ConnectAsync(_target, _stop.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException)
        {
            Reset(client);
            server.Dispose();
            return;
        }

        lock (_lock)
        {
            if (_cut)
            {
                Reset(client);
                Reset(server);
                _refused.TrySetResult();
                return;
            }

            _open.Add(client);
            _open.Add(server);
        }

        // An end of stream is passed on as one (half close); a cut resets both sockets, which ends both pumps.
        await Task.WhenAll(PumpAsync(client, server, fromServer: false), PumpAsync(server, client, fromServer: true));
        lock (_lock)
        {
            _open.Remove(client);
            _open.Remove(server);
        }

        Reset(client);
        Reset(server);
    }

    private async Task PumpAsync(Socket from, Socket to, bool fromServer)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                if (n == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }

                if (!(fromServer && _dropFromServer))
                {
                    await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0); // close with RST, as a dropped network does
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        socket.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        await _accepting;
        Cut();
        _stop.Dispose();
    }
}
