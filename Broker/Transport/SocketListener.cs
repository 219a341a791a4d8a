using System.Net;
using System.Net.Sockets;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Hosting;
using ChatBroker.Broker.Observability;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Transport;

/// <summary>What the listener hands each accepted socket to. The broker's protocol session implements it.</summary>
public interface ISocketConnectionHandler
{
    /// <summary>
    /// Takes over <paramref name="socket"/> and returns at once, without waiting for the connection: the listener
    /// keeps no task or continuation per connection. When the connection has ended the handler closes the
    /// socket and calls <see cref="IConnectionOwner.Release"/> exactly once.
    /// </summary>
    void Start(Socket socket, long connectionId, IConnectionOwner owner);
}

/// <summary>The listener as a running connection sees it.</summary>
public interface IConnectionOwner
{
    /// <summary>Fires when the broker shuts down: connections say so and end.</summary>
    CancellationToken Stopping { get; }

    /// <summary>The connection has ended and its transport is closed: the owner counts it closed.</summary>
    void Release(long connectionId, Exception? failure);
}

/// <summary>
/// The native protocol's TCP listener: a plain socket accept loop rather than Kestrel, because an idle
/// connection here costs ~0.8–0.9 KB (RSS and live heap at 15k connections, 2026-12-07; ~2.0 KB when Kestrel was
/// measured against it at ~5.2 KB), and a million idle phones is the goal. Accepting is bounded by tcp.max_connections; the excess is closed at once and counted.
/// A handler that takes bare descriptors (<see cref="IPolledConnectionHandler"/>: native and MQTT plain TCP with
/// tcp.readiness_poller) gets them from one thread per listener waiting in accept4 (<see cref="DescriptorAcceptor"/>);
/// others get .NET sockets from a few concurrent AcceptAsync loops.
/// The TLS listener is the same loop on tls.listen with a <see cref="TlsConnectionHandler"/>, which runs the
/// handshake before the session starts (tcp.max_connections bounds each listener).
/// </summary>
public sealed class SocketListener : IHostedService, IConnectionOwner, IAsyncDisposable
{
    private readonly IPEndPoint _listen;
    private readonly string _listenSetting;
    private readonly int _maxConnections;
    private readonly Action<ILogger, IPEndPoint> _logListening;
    private readonly ISocketConnectionHandler _handler;
    private readonly BrokerMetrics _metrics;
    private readonly ILogger _logger;
    // Accepts waiting at once: while one loop sets up the socket it just took, another is already in accept().
    private static readonly int AcceptLoops = Math.Clamp(Environment.ProcessorCount, 1, 4);
    private readonly CancellationTokenSource _stopping = new();
    // Completed when the last connection ends after shutdown began; no per-connection bookkeeping beyond _open
    // (a task map plus a continuation per connection cost ~300 bytes of every idle phone).
    private readonly TaskCompletionSource _allClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Socket? _socket;
    private Task? _acceptLoop;
    private long _nextConnectionId;
    private int _open;
    private int _disposed;

    public SocketListener(BrokerOptions options, ISocketConnectionHandler handler, BrokerMetrics metrics, ILogger<SocketListener> logger)
        : this(options.Tcp.Listen, "tcp.listen", options.Tcp.MaxConnections, handler, metrics, logger, Log.TcpListening)
    {
    }

    /// <summary>A listener on another setting's address (tls.listen), logging its own start line.</summary>
    internal SocketListener(
        IPEndPoint listen, string listenSetting, int maxConnections, ISocketConnectionHandler handler, BrokerMetrics metrics, ILogger logger,
        Action<ILogger, IPEndPoint> logListening)
    {
        _listen = listen;
        _listenSetting = listenSetting;
        _maxConnections = maxConnections;
        _handler = handler;
        _metrics = metrics;
        _logger = logger;
        _logListening = logListening;
    }

    /// <summary>The bound address (useful when the configured port is 0).</summary>
    public IPEndPoint? LocalEndPoint => _socket?.LocalEndPoint as IPEndPoint;

    public int OpenConnections => Volatile.Read(ref _open);

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var socket = new Socket(_listen.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(_listen);
            socket.Listen(4096);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new InvalidOperationException($"Cannot listen on {_listen} ({_listenSetting}): {e.Message}", e);
        }

        _socket = socket;
        _logListening(_logger, (IPEndPoint)socket.LocalEndPoint!);
        if (_handler is IPolledConnectionHandler { Poller: { } poller } polled && DescriptorAcceptor.IsSupported)
        {
            // Accepted connections inherit TCP_NODELAY from the listening socket (Linux): no setsockopt per connect.
            socket.NoDelay = true;
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            new Thread(() => AcceptDescriptors(socket, polled, poller, done))
            {
                IsBackground = true,
                Name = $"ChatBroker accept {_listenSetting}",
            }.Start();
            _acceptLoop = done.Task;
            return Task.CompletedTask;
        }

        var loops = new Task[AcceptLoops];
        for (var i = 0; i < loops.Length; i++)
        {
            loops[i] = Task.Run(AcceptLoopAsync, CancellationToken.None);
        }

        _acceptLoop = Task.WhenAll(loops);
        return Task.CompletedTask;
    }

    private async Task AcceptLoopAsync()
    {
        var listener = _socket!;
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            catch (ObjectDisposedException)
            {
                break;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionAborted or SocketError.ConnectionReset)
            {
                continue;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable)
            {
                // Out of file descriptors: back off briefly instead of spinning on accept.
                Log.AcceptFailed(_logger, e);
                await Task.Delay(50, _stopping.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                continue;
            }

            if (!Admit())
            {
                client.Dispose();
                continue;
            }

            client.NoDelay = true;
            var id = Interlocked.Increment(ref _nextConnectionId);
            try
            {
                _handler.Start(client, id, this);
            }
            catch (Exception e)
            {
                client.Dispose();
                ((IConnectionOwner)this).Release(id, e);
            }
        }
    }

    // The native protocol's and MQTT's plain TCP with tcp.readiness_poller: one thread waits in accept4 and hands
    // each descriptor to the handler as a PolledSocketTransport (DescriptorAcceptor says why). Nothing in the loop
    // waits on a connection: a transport and a queued session start are all it makes per accept.
    private void AcceptDescriptors(Socket listener, IPolledConnectionHandler handler, ReadinessPoller poller, TaskCompletionSource done)
    {
        Span<byte> address = stackalloc byte[DescriptorAcceptor.AddressBytes];
        try
        {
            while (!_stopping.IsCancellationRequested)
            {
                try
                {
                    var client = DescriptorAcceptor.Accept(listener.SafeHandle, address, out var addressLength, out var errno);
                    if (client is null)
                    {
                        if (_stopping.IsCancellationRequested)
                        {
                            break; // Stop woke the call
                        }

                        if (DescriptorAcceptor.IsTransient(errno))
                        {
                            continue;
                        }

                        // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or anything unforeseen: say so
                        // and back off briefly instead of spinning on accept; the loop never gives up while running.
                        Log.AcceptFailed(_logger, new System.ComponentModel.Win32Exception(errno));
                        _stopping.Token.WaitHandle.WaitOne(50);
                        continue;
                    }

                    if (!Admit())
                    {
                        client.Dispose();
                        continue;
                    }

                    var id = Interlocked.Increment(ref _nextConnectionId);
                    PolledSocketTransport? transport = null;
                    try
                    {
                        transport = new PolledSocketTransport(client, address[..addressLength], poller);
                        handler.Start(transport, id, this);
                    }
                    catch (Exception e)
                    {
                        if (transport is null)
                        {
                            client.Dispose();
                        }
                        else
                        {
                            transport.Close();
                        }

                        ((IConnectionOwner)this).Release(id, e);
                    }
                }
                catch (Exception e)
                {
                    // Nothing above should throw; should anything, this thread must not die with it (an exception
                    // escaping it would end the process): say so, back off, go on.
                    Log.AcceptFailed(_logger, e);
                    _stopping.Token.WaitHandle.WaitOne(50);
                }
            }
        }
        finally
        {
            done.TrySetResult();
        }
    }

    // Counts an accepted connection against tcp.max_connections: false (counted as rejected) when over.
    private bool Admit()
    {
        _metrics.ConnectionsAccepted.Add(1);
        if (Interlocked.Increment(ref _open) > _maxConnections)
        {
            Interlocked.Decrement(ref _open);
            _metrics.ConnectionsRejected.Add(1);
            Log.ConnectionLimitReached(_logger, _maxConnections);
            return false;
        }

        _metrics.ConnectionsOpen.Add(1);
        return true;
    }

    CancellationToken IConnectionOwner.Stopping => _stopping.Token;

    void IConnectionOwner.Release(long connectionId, Exception? failure)
    {
        if (failure is not null)
        {
            Log.ConnectionFailed(_logger, connectionId, failure);
        }

        _metrics.ConnectionsOpen.Add(-1);
        if (Interlocked.Decrement(ref _open) == 0 && _stopping.IsCancellationRequested)
        {
            _allClosed.TrySetResult();
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_socket is not null)
        {
            DescriptorAcceptor.Shutdown(_socket.SafeHandle); // a thread waiting in accept4 returns
            _socket.Dispose();
        }

        if (_acceptLoop is not null)
        {
            await _acceptLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        if (Volatile.Read(ref _open) == 0)
        {
            _allClosed.TrySetResult();
        }

        await _allClosed.Task.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _stopping.Dispose();
        }
    }
}
