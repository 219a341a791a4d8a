using System.Net;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// The byte stream under one device session: exactly what the session's read loop and outbox use of a
/// connection, so a session runs the same over a TCP socket (<see cref="SocketTransport"/>) or, in unit
/// tests, over an in-memory pipe pair.
/// <para>
/// Shaped for an idle phone, the common case: <see cref="WaitReadableAsync"/> lets the read loop wait with
/// no receive buffer (a zero-byte receive on a socket), and a registered session waits with no cancellation
/// token (<see cref="CancellationToken.None"/>): a registration per waiting receive would cost every idle
/// phone ~80 bytes. <see cref="Send"/> takes the outbox's own buffer and reports its completion to an object
/// the caller already has, so a send allocates nothing.
/// </para>
/// <para>
/// Errors: once <see cref="Close"/> was called, or the peer vanished, receives end with 0 or throw
/// <see cref="ObjectDisposedException"/> or <see cref="IOException"/> (a socket's
/// <see cref="System.Net.Sockets.SocketException"/> derives from neither: the session catches it too).
/// A receive whose token fires throws <see cref="OperationCanceledException"/>.
/// </para>
/// </summary>
public interface IDeviceTransport
{
    /// <summary>The peer's address, for logs (null when the transport has none).</summary>
    EndPoint? RemoteEndPoint { get; }

    /// <summary>
    /// Completes when bytes can be received or the peer has closed, holding no buffer meanwhile (a socket's
    /// zero-byte receive). The result carries nothing: it is a <see cref="ValueTask{TResult}"/> so that the
    /// socket's own awaitable is returned as is, with no wrapper object per wait. Only the session's read loop
    /// calls it, never while a receive is pending.
    /// </summary>
    ValueTask<int> WaitReadableAsync(CancellationToken cancellationToken);

    /// <summary>Receives at least one byte into <paramref name="buffer"/>; 0 when the peer closed its side.</summary>
    ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>
    /// Sends <paramref name="buffer"/>[0..<paramref name="length"/>) whole. Returns true when the send finished
    /// on this thread (<paramref name="sent"/> says whether every byte was taken; <paramref name="completion"/>
    /// is not called); false when it finishes later: then <see cref="ITransportSendCompletion.OnSendCompleted"/>
    /// is called once, on another thread. The caller keeps the buffer until the send has finished, and makes
    /// one send at a time. Never throws.
    /// </summary>
    bool Send(byte[] buffer, int length, ITransportSendCompletion completion, out bool sent);

    /// <summary>
    /// Ends the connection in both directions and releases it (idempotent, from any thread): a receive still
    /// pending ends, and the peer reads the end of the stream after whatever was sent.
    /// </summary>
    void Close();
}

/// <summary>
/// A transport that can call its session back when data arrives, so that an idle session's read loop returns
/// instead of staying suspended in <see cref="IDeviceTransport.WaitReadableAsync"/> (an async state machine per
/// idle connection). <see cref="PolledSocketTransport"/> implements it.
/// </summary>
public interface INotifyingTransport
{
    /// <summary>
    /// Calls <paramref name="target"/>.Execute once bytes can be received, the peer has closed, or the transport was
    /// closed: on the transport's event thread (tcp.inline_completions) or on the thread pool, possibly before this
    /// returns. Only the session's read loop calls it, never while a wait or receive is pending; no cancellation.
    /// </summary>
    void NotifyWhenReadable(IThreadPoolWorkItem target);
}

/// <summary>Told when a <see cref="IDeviceTransport.Send"/> that did not finish inline has finished.</summary>
public interface ITransportSendCompletion
{
    /// <param name="buffer">The buffer given to <see cref="IDeviceTransport.Send"/>, the caller's again.</param>
    /// <param name="sent">Whether every byte was taken; false when the connection failed or was closed.</param>
    void OnSendCompleted(byte[] buffer, bool sent);
}
