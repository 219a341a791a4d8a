using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Client;

/// <summary>Opening connections, the CONNECT/CONNACK handshake, and the reconnect supervisor.</summary>
public sealed partial class ChatClient
{
    /// <summary>
    /// Connects and completes the CONNECT/CONNACK handshake, then keeps the device connected in the background.
    /// Transient failures (refused, timeouts, SERVER_BUSY, TOO_MANY_DEVICES, TOKEN_EXPIRED ...) are retried
    /// with the reconnect policy until <paramref name="cancellationToken"/> fires.
    /// </summary>
    /// <exception cref="ChatClientException">The broker refused the device for good (BAD_TOKEN, IDENTITY_MISMATCH, UNSUPPORTED_VERSION, DEVICE_REVOKED, a protocol error).</exception>
    public async Task ConnectAsync(CancellationToken cancellationToken = default)
    {
        CancellationTokenSource run;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_state is not ChatConnectionState.Disconnected)
            {
                throw new InvalidOperationException($"The client is {_state}; ConnectAsync is for a disconnected client.");
            }

            _state = ChatConnectionState.Connecting;
            _stopRequested = false;
            _runCts?.Dispose();
            _runCts = run = new CancellationTokenSource();
        }

        Connection connection;
        try
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, run.Token);
            connection = await EstablishAsync(immediate: true, 0, TimeSpan.Zero, linked.Token).ConfigureAwait(false);
        }
        catch (ChatClientException e) when (IsTerminal(e.Reason, connack: true))
        {
            Publish(ChatConnectionState.Disconnected, e.Reason, e.ServerMessage);
            throw;
        }
        catch
        {
            Publish(ChatConnectionState.Disconnected);
            throw;
        }

        lock (_lock)
        {
            _supervisor = SuperviseAsync(connection, run.Token);
        }
    }

    /// <summary>Sends DISCONNECT(NORMAL_DISCONNECT) after what is queued, closes, and stops reconnecting. Pending sends stay queued for the next <see cref="ConnectAsync"/>.</summary>
    public async Task DisconnectAsync(CancellationToken cancellationToken = default)
    {
        Task? supervisor;
        CancellationTokenSource? run;
        lock (_lock)
        {
            _stopRequested = true;
            supervisor = _supervisor;
            run = _runCts;
            if (_connection is { } connection)
            {
                _outbound.Writer.TryWrite(new Outbound(OutboundKind.Disconnect, null, null, false, connection.Generation));
            }
            else
            {
                run?.Cancel();
            }
        }

        if (supervisor is null)
        {
            return;
        }

        try
        {
            // A broker that does not close after our DISCONNECT, or a stuck write: cut it after a while.
            await supervisor.WaitAsync(TimeSpan.FromSeconds(5), _time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            await run!.CancelAsync().ConfigureAwait(false);
            await supervisor.ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
        }

        await DisconnectAsync().ConfigureAwait(false);
        lock (_lock)
        {
            _disposed = true;
            _state = ChatConnectionState.Closed;
            _closedReason = ReasonCode.NormalDisconnect;
        }

        FailPending(new ObjectDisposedException(nameof(ChatClient)));
        _outbound.Writer.TryComplete();
        _messages.Writer.TryComplete();
        _receipts.Writer.TryComplete();
        _events.Writer.TryWrite(new ConnectionEvent(ChatConnectionState.Closed, ReasonCode.NormalDisconnect, "disposed", 0, TimeSpan.Zero));
        _events.Writer.TryComplete();
        _runCts?.Dispose();
    }

    /// <summary>Codes after which reconnecting with the same identity cannot help (docs/protocol.md §8).</summary>
    private static bool IsTerminal(ReasonCode reason, bool connack) => reason switch
    {
        ReasonCode.SessionTakenOver or ReasonCode.BadToken or ReasonCode.IdentityMismatch
            or ReasonCode.DeviceRevoked or ReasonCode.UnsupportedVersion => true,
        ReasonCode.TokenExpired => false,
        // A refused CONNECT for a protocol error would be refused again; mid-session ones get a long backoff.
        _ => connack && ReasonCodes.RecommendedAction(reason) == ClientAction.FixClient,
    };

    private async Task SuperviseAsync(Connection connection, CancellationToken stopping)
    {
        while (true)
        {
            var end = await RunConnectionAsync(connection, stopping).ConfigureAwait(false);
            bool stop;
            lock (_lock)
            {
                stop = _stopRequested || stopping.IsCancellationRequested;
            }

            if (stop)
            {
                Publish(ChatConnectionState.Disconnected, ReasonCode.NormalDisconnect, "disconnected by the app");
                return;
            }

            if (IsTerminal(end.Reason, connack: false))
            {
                Close(end.Reason, end.Message);
                return;
            }

            Publish(ChatConnectionState.Disconnected, end.Reason, end.Message);
            if (end.Reason is ReasonCode.Success or ReasonCode.ServerUnavailable)
            {
                NextEndPoint(); // the node dropped us or is going away: another node of the cluster serves the device too
            }

            if (!_options.AutoReconnect)
            {
                Publish(ChatConnectionState.Disconnected, end.Reason, "not reconnecting (AutoReconnect is off)");
                return;
            }

            var firstAttempt = ReasonCodes.RecommendedAction(end.Reason) == ClientAction.FixClient ? 30 : 0;
            try
            {
                connection = await EstablishAsync(immediate: false, firstAttempt, end.RetryAfter, stopping).ConfigureAwait(false);
            }
            catch (ChatClientException e)
            {
                Close(e.Reason, e.ServerMessage);
                return;
            }
            catch (OperationCanceledException)
            {
                Publish(ChatConnectionState.Disconnected, ReasonCode.NormalDisconnect, "disconnected by the app");
                return;
            }
            catch (Exception e)
            {
                // Not expected (EstablishAsync retries transport failures), but a background task must not die silently.
                Close(ReasonCode.ServerUnavailable, $"reconnect failed: {e.Message}");
                return;
            }
        }
    }

    private void Close(ReasonCode reason, string? message)
    {
        lock (_lock)
        {
            _closedReason = reason;
        }

        Publish(ChatConnectionState.Closed, reason, message);
        FailPending(new ChatClientException(reason, message));
        // Closed is final: let readers of the streams finish.
        _messages.Writer.TryComplete();
        _receipts.Writer.TryComplete();
    }

    /// <summary>Connection attempts with backoff until one succeeds; throws on a terminal refusal or cancellation.</summary>
    private async Task<Connection> EstablishAsync(bool immediate, int firstAttempt, TimeSpan retryAfter, CancellationToken cancellationToken)
    {
        var failures = immediate ? -1 : 0;
        while (true)
        {
            if (failures >= 0)
            {
                var delay = _options.Reconnect.NextDelay(firstAttempt + failures, retryAfter);
                Publish(ChatConnectionState.Reconnecting, attempt: failures + 1, delay: delay);
                await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
            }

            try
            {
                return await OpenAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (ChatClientException e) when (!IsTerminal(e.Reason, connack: true))
            {
                retryAfter = e.RetryAfter;
                if (!_options.AutoReconnect)
                {
                    throw;
                }
            }
            catch (Exception e) when (e is SocketException or IOException || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
            {
                retryAfter = TimeSpan.Zero;
                if (!_options.AutoReconnect)
                {
                    throw;
                }
            }

            failures++;
            NextEndPoint();
        }
    }

    /// <summary>TCP connect, CONNECT, CONNACK. Returns an open session or throws.</summary>
    private async Task<Connection> OpenAsync(CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_options.ConnectTimeout);
        var token = timeout.Token;
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            var target = CurrentEndPoint;
            await socket.ConnectAsync(target, token).ConfigureAwait(false);

            Stream stream = new NetworkStream(socket, ownsSocket: true);
            if (_options.Tls is { } tls)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = ssl;
                try
                {
                    var serverName = target switch
                    {
                        DnsEndPoint dns => dns.Host,
                        IPEndPoint ip => ip.Address.ToString(),
                        _ => _options.Host,
                    };
                    await ssl.AuthenticateAsClientAsync(tls.ToAuthenticationOptions(serverName), token).ConfigureAwait(false);
                }
                catch (AuthenticationException e)
                {
                    // A certificate the client does not trust is not transient: retrying cannot fix it.
                    await ssl.DisposeAsync().ConfigureAwait(false);
                    throw new ChatClientException(ReasonCode.BadRequest, $"TLS handshake failed: {e.Message}", TimeSpan.Zero);
                }
            }

            var reader = PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 16 * 1024, minimumReadSize: 4096, leaveOpen: true));
            var writer = PipeWriter.Create(stream, new StreamPipeWriterOptions(minimumBufferSize: 16 * 1024, leaveOpen: true));
            string accessToken;
            try
            {
                accessToken = await _options.TokenProvider!(token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // The app's token backend is unreachable: as transient as the broker being unreachable.
                throw new IOException($"The token provider failed: {e.Message}", e);
            }

            FrameWriter.Write(writer, new Connect
            {
                ProtocolVersion = ProtocolConstants.ProtocolVersion,
                UserId = _options.UserId,
                DeviceId = _options.DeviceId,
                Token = accessToken,
                KeepaliveS = (uint)Math.Ceiling(_options.Keepalive.TotalSeconds),
                ResumeInboxSeq = Cursor,
                Capabilities = (ulong)_options.Capabilities,
                MaxFrameSize = (uint)_options.MaxFrameSize,
                ClientInfo = _options.ClientInfo,
            });
            await writer.FlushAsync(token).ConfigureAwait(false);

            var state = new ProtocolStateMachine(ProtocolRole.Client);
            var connack = await ReadConnackAsync(reader, state, token).ConfigureAwait(false);
            if (connack.Reason != ReasonCode.Success)
            {
                throw new ChatClientException(connack.Reason, connack.Message, TimeSpan.FromMilliseconds(connack.RetryAfterMs));
            }

            LearnClusterNodes(connack.ClusterNodes);
            Volatile.Write(ref _serverMaxFrameSize, connack.MaxFrameSize == 0 ? ProtocolConstants.DefaultMaxFrameSize : (int)Math.Min(connack.MaxFrameSize, ProtocolConstants.MaxRemainingLength));
            var keepalive = connack.KeepaliveS != 0 ? TimeSpan.FromSeconds(connack.KeepaliveS) : _options.Keepalive;
            return new Connection(socket, stream, reader, writer, state, keepalive, _time.GetTimestamp());
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private async Task<Connack> ReadConnackAsync(PipeReader reader, ProtocolStateMachine state, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = result.Buffer;
            if (FrameReader.TryRead(buffer, _options.MaxFrameSize, out var frame, out var consumed, out var error))
            {
                error = state.OnReceived(frame.Type);
                if (error == ReasonCode.Success && PacketDecoder.TryDecode(frame, Connack.Parser, out var connack, out error))
                {
                    // Leave what follows (the backlog may already be here) for the read loop.
                    reader.AdvanceTo(consumed);
                    return connack;
                }
            }

            if (error != ReasonCode.Success)
            {
                throw new ChatClientException(error, "the server's first frame is not a valid CONNACK");
            }

            reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                throw new IOException("The server closed the connection before CONNACK.");
            }
        }
    }

    /// <summary>Runs one connected session until it ends; returns why it ended.</summary>
    private async Task<SessionEnd> RunConnectionAsync(Connection connection, CancellationToken stopping)
    {
        lock (_lock)
        {
            connection.Generation = ++_generation;
            _connection = connection;
            if (_sync.Task.IsCompleted)
            {
                _sync = NewSignal();
            }
        }

        Volatile.Write(ref _ackQueued, 0);
        Publish(ChatConnectionState.Connected);
        using (stopping.Register(static c => ((Connection)c!).Fail(new SessionEnd(ReasonCode.NormalDisconnect, "stopped", TimeSpan.Zero)), connection))
        {
            var reading = ReadLoopAsync(connection);
            var writing = WriteLoopAsync(connection);
            var keepalive = KeepaliveLoopAsync(connection);
            await Task.WhenAll(reading, writing, keepalive).ConfigureAwait(false);
        }

        lock (_lock)
        {
            _connection = null;
            // Waiters from now on wait for the next connection's SYNC_DONE.
            if (_sync.Task.IsCompleted)
            {
                _sync = NewSignal();
            }
        }

        await connection.DisposeAsync().ConfigureAwait(false);
        return connection.End;
    }

    /// <summary>Why a connection ended. Reason Success with no message from the server: the transport dropped.</summary>
    private readonly record struct SessionEnd(ReasonCode Reason, string? Message, TimeSpan RetryAfter);

    /// <summary>One TCP connection and its per-connection state. Its loops end when <see cref="Token"/> fires.</summary>
    private sealed class Connection(
        Socket socket, Stream stream, PipeReader reader, PipeWriter writer, ProtocolStateMachine state, TimeSpan keepalive, long now)
        : IAsyncDisposable
    {
        private readonly CancellationTokenSource _cts = new();
        private readonly Lock _endLock = new();
        private SessionEnd? _end;

        public PipeReader Reader { get; } = reader;

        public PipeWriter Writer { get; } = writer;

        public ProtocolStateMachine State { get; } = state;

        public TimeSpan Keepalive { get; } = keepalive;

        public CancellationToken Token => _cts.Token;

        public int Generation { get; set; }

        /// <summary>Timestamps (TimeProvider) of the last flush and the last bytes received.</summary>
        public long LastWrite = now;
        public long LastReceive = now;

        /// <summary>The read loop waits for the app to take messages: silence from the server is our doing.</summary>
        public volatile bool ReadPaused;

        /// <summary>Between CONNACK and SYNC_DONE.</summary>
        public bool InBacklog = true;

        /// <summary>The inbox_seq of the last ACK written on this connection (writer loop only).</summary>
        public ulong LastAckWritten;

        public SessionEnd End
        {
            get
            {
                lock (_endLock)
                {
                    return _end ?? new SessionEnd(ReasonCode.Success, "connection lost", TimeSpan.Zero);
                }
            }
        }

        /// <summary>Ends the connection; the first reason given wins.</summary>
        public void Fail(SessionEnd end)
        {
            lock (_endLock)
            {
                _end ??= end;
            }

            try
            {
                _cts.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        public async ValueTask DisposeAsync()
        {
            // Completing a StreamPipeWriter without an exception flushes what is buffered, which throws (or
            // waits) on a dead socket; everything worth sending was flushed by the writer loop already.
            await Writer.CompleteAsync(new OperationCanceledException("connection closed")).ConfigureAwait(false);
            await Reader.CompleteAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
            socket.Dispose();
            _cts.Dispose();
        }
    }
}
