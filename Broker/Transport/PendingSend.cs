using System.Net.Sockets;
using System.Net.WebSockets;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// <see cref="IDeviceTransport.Send"/> for transports whose write is a <see cref="ValueTask"/> (TLS, WebSocket):
/// a write that completed inline is observed at once, one still running reports to the completion later.
/// </summary>
internal static class PendingSend
{
    /// <summary>Starts <paramref name="write"/>; returns and sets <paramref name="sent"/> as <see cref="IDeviceTransport.Send"/> does.</summary>
    public static bool Run<TState>(Func<TState, ValueTask> write, TState state, byte[] buffer, ITransportSendCompletion completion, out bool sent)
    {
        ValueTask writing;
        try
        {
            writing = write(state);
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            sent = false;
            return true;
        }

        if (writing.IsCompleted)
        {
            try
            {
                writing.GetAwaiter().GetResult();
                sent = true;
            }
            catch (Exception e) when (IsConnectionFailure(e))
            {
                sent = false;
            }

            return true;
        }

        // The socket's buffer is full (rare): the rest finishes on another thread.
        _ = CompleteLaterAsync(writing, buffer, completion);
        sent = false;
        return false;
    }

    private static async Task CompleteLaterAsync(ValueTask writing, byte[] buffer, ITransportSendCompletion completion)
    {
        bool sent;
        try
        {
            await writing.ConfigureAwait(false);
            sent = true;
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            sent = false;
        }

        completion.OnSendCompleted(buffer, sent);
    }

    // A closed or failed stream: IOException (socket errors wrapped), ObjectDisposedException, WebSocketException,
    // NotSupportedException/InvalidOperationException once a failure left the stream unusable, or a cancellation
    // by the server's abort.
    public static bool IsConnectionFailure(Exception e) =>
        e is IOException or ObjectDisposedException or SocketException or WebSocketException or NotSupportedException
            or InvalidOperationException or OperationCanceledException;
}
