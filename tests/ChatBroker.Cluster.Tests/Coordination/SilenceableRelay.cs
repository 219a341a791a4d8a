using System.Net;
using System.Net.Sockets;

namespace ChatBroker.Cluster.Tests.Coordination;

/// <summary>
/// A TCP relay to a real etcd on a loopback port of its own that can go silent: after <see cref="Silence"/> it keeps
/// every connection open and reads what comes, but passes nothing on in either direction, as a member behind a
/// partition looks to a client (no reset, no answer).
/// </summary>
internal sealed class SilenceableRelay : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _sockets = [];
    private volatile bool _silent;
    private int _connections;
    private Task _accepting = Task.CompletedTask;

    private SilenceableRelay(IPEndPoint target) => _target = target;

    public string Endpoint => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    /// <summary>Connections accepted so far.</summary>
    public int Connections => Volatile.Read(ref _connections);

    public static SilenceableRelay Start(string etcdEndpoint)
    {
        var uri = new Uri(etcdEndpoint);
        var relay = new SilenceableRelay(new IPEndPoint(IPAddress.Parse(uri.Host), uri.Port));
        relay._listener.Start();
        relay._accepting = relay.AcceptLoopAsync();
        return relay;
    }

    public void Silence() => _silent = true;

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptSocketAsync(_stop.Token);
                Interlocked.Increment(ref _connections);
                var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await upstream.ConnectAsync(_target, _stop.Token);
                lock (_sockets)
                {
                    _sockets.Add(client);
                    _sockets.Add(upstream);
                }

                _ = PumpAsync(client, upstream);
                _ = PumpAsync(upstream, client);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task PumpAsync(Socket from, Socket to)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                if (n == 0)
                {
                    return;
                }

                if (!_silent)
                {
                    await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accepting;
        lock (_sockets)
        {
            foreach (var s in _sockets)
            {
                s.Dispose();
            }
        }

        _stop.Dispose();
    }
}
