using System.Net;
using System.Net.WebSockets;
using System.Runtime.CompilerServices;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// A device connection over a server WebSocket (Kestrel's): the session reads and writes the same byte stream
/// as on TCP, carried in binary messages. Every send is one message holding the outbox's whole frames. Received
/// messages are handed on as they arrive, and checked against the rule that each message carries whole frames
/// (<see cref="FrameBoundary"/>): a message that ends inside a frame ends the stream there, so the session sees a
/// stream ending inside a frame and answers ERROR(TRUNCATED_FRAME); the WebSocket is then closed with 1007
/// (invalid payload) and the reason. A text message is closed with 1003.
/// </summary>
public sealed class WebSocketTransport : IDeviceTransport
{
    private readonly WebSocket _socket;
    private readonly TransportInstruments _instruments;
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private FrameBoundary _boundary;
    private bool _ended;
    private WebSocketCloseStatus _closeStatus = WebSocketCloseStatus.NormalClosure;
    private string? _closeReason;
    private int _closing;
    // Who receives: nobody, the session, or the close (which reads until the peer's close frame). One receive at
    // a time is all a WebSocket allows.
    private int _receiver;
    private const int NoReceiver = 0;
    private const int SessionReceiver = 1;
    private const int CloseReceiver = 2;
    private readonly TaskCompletionSource _peerClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private readonly bool _wholeFrames;

    /// <param name="wholeFrames">Whether each message must carry whole frames (the native protocol's rule); MQTT over
    /// WebSocket lets a packet span messages (MQTT 5.0 §6.0), so its transport does not check.</param>
    public WebSocketTransport(WebSocket socket, EndPoint? remote, TransportInstruments instruments, bool wholeFrames = true)
    {
        _socket = socket;
        RemoteEndPoint = remote;
        _instruments = instruments;
        _wholeFrames = wholeFrames;
    }

    public EndPoint? RemoteEndPoint { get; }

    /// <summary>Completes once <see cref="Close"/> has closed the WebSocket (the HTTP request may end then).</summary>
    public Task Closed => _closed.Task;

    public ValueTask<int> WaitReadableAsync(CancellationToken cancellationToken) =>
        _ended ? ValueTask.FromResult(0) : WaitCoreAsync(cancellationToken);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<int> WaitCoreAsync(CancellationToken cancellationToken)
    {
        // A zero-byte receive waits for the next frame header of the WebSocket and takes no payload.
        var result = await ReceiveOnceAsync(Memory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        if (result.MessageType == WebSocketMessageType.Close)
        {
            _ended = true;
        }

        return 0;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (!_ended)
        {
            var result = await ReceiveOnceAsync(buffer, cancellationToken).ConfigureAwait(false);
            switch (result.MessageType)
            {
                case WebSocketMessageType.Close:
                    _ended = true;
                    return 0;
                case WebSocketMessageType.Text:
                    _instruments.WsRefused.Add(1, new KeyValuePair<string, object?>("reason", "text_message"));
                    Refuse(WebSocketCloseStatus.InvalidMessageType, "text messages are not part of the protocol: send frames in binary messages");
                    return 0;
            }

            if (_wholeFrames)
            {
                _boundary.Advance(buffer.Span[..result.Count]);
            }

            if (_wholeFrames && result.EndOfMessage && _boundary.InFrame)
            {
                // Hand on what arrived, then end the stream: the session finds the frame cut short.
                _instruments.WsRefused.Add(1, new KeyValuePair<string, object?>("reason", "split_frame"));
                Refuse(WebSocketCloseStatus.InvalidPayloadData, "a frame spans two WebSocket messages: each binary message must carry whole frames");
            }

            if (result.Count > 0)
            {
                return result.Count;
            }
        }

        return 0;
    }

    public bool Send(byte[] buffer, int length, ITransportSendCompletion completion, out bool sent) =>
        PendingSend.Run(
            static s => s.Socket.SendAsync(s.Buffer.AsMemory(0, s.Length), WebSocketMessageType.Binary, endOfMessage: true, CancellationToken.None),
            (Socket: _socket, Buffer: buffer, Length: length), buffer, completion, out sent);

    public void Close()
    {
        if (Interlocked.Exchange(ref _closing, 1) == 0)
        {
            _ = CloseCoreAsync();
        }
    }

    private void Refuse(WebSocketCloseStatus status, string reason)
    {
        _ended = true;
        _closeStatus = status;
        _closeReason = reason;
    }

    // The close frame follows whatever was sent, then the peer's close frame is awaited (briefly) before the
    // connection goes: closing with the peer's bytes unread would reset the connection, and a reset makes the
    // peer's system drop what it had received and not yet read (the ERROR that says why, for one).
    private async Task CloseCoreAsync()
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            if (_socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
            {
                await _socket.CloseOutputAsync(_closeStatus, _closeReason, timeout.Token).ConfigureAwait(false);
            }

            if (Interlocked.CompareExchange(ref _receiver, CloseReceiver, NoReceiver) == NoReceiver)
            {
                await DrainUntilCloseAsync(timeout.Token).ConfigureAwait(false);
            }
            else
            {
                // The session's receive is pending: it sees the peer's close frame.
                await _peerClosed.Task.WaitAsync(timeout.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (PendingSend.IsConnectionFailure(e) || e is TimeoutException)
        {
        }
        finally
        {
            _socket.Abort();
            _closed.TrySetResult();
        }
    }

    private async Task DrainUntilCloseAsync(CancellationToken cancellationToken)
    {
        var scratch = System.Buffers.ArrayPool<byte>.Shared.Rent(256);
        try
        {
            while (_socket.State is WebSocketState.Open or WebSocketState.CloseSent)
            {
                var result = await _socket.ReceiveAsync(scratch.AsMemory(), cancellationToken).ConfigureAwait(false);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    break;
                }
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<ValueWebSocketReceiveResult> ReceiveOnceAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (Interlocked.CompareExchange(ref _receiver, SessionReceiver, NoReceiver) != NoReceiver)
        {
            throw new IOException("the WebSocket is closing");
        }

        try
        {
            var result = await Guard(_socket.ReceiveAsync(buffer, cancellationToken), cancellationToken).ConfigureAwait(false);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                _peerClosed.TrySetResult();
            }

            return result;
        }
        catch
        {
            _peerClosed.TrySetResult();
            throw;
        }
        finally
        {
            Volatile.Write(ref _receiver, NoReceiver);
        }
    }

    // The session expects IOException (or ObjectDisposedException) from a transport that failed, and
    // OperationCanceledException only when its own token fired: Kestrel's aborts and WebSocketException become IOException.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<ValueWebSocketReceiveResult> Guard(ValueTask<ValueWebSocketReceiveResult> receive, CancellationToken cancellationToken)
    {
        try
        {
            return await receive.ConfigureAwait(false);
        }
        catch (Exception e) when (e is WebSocketException or InvalidOperationException)
        {
            throw new IOException(e.Message, e);
        }
        catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new IOException("the WebSocket connection was aborted", e);
        }
    }
}
