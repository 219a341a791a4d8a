using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using ChatBroker.Broker.Transport;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>
/// A device connection as two in-memory pipes, after Kestrel's <c>InMemoryTransportFactory</c>: the session
/// reads what the test writes to <see cref="ClientOutput"/> and sends into <see cref="ClientInput"/>, which
/// the test reads. The server-to-client pipe pauses at <paramref name="clientBufferBytes"/>, as a socket's
/// buffers fill when a peer stops reading: a send that finds it full stays pending until the test reads.
/// </summary>
internal sealed class InMemoryTransport(long clientBufferBytes = 64 * 1024) : IDeviceTransport
{
    private readonly Pipe _toServer = new(new PipeOptions(useSynchronizationContext: false));
    private readonly Pipe _toClient = new(new PipeOptions(
        pauseWriterThreshold: clientBufferBytes,
        resumeWriterThreshold: clientBufferBytes / 2,
        useSynchronizationContext: false));
    private readonly Lock _writeLock = new();
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _isClosed;
    // Released once per WaitReadableAsync that found no data and waits for some.
    private readonly SemaphoreSlim _waiting = new(0);
    private volatile bool _idle;
    // When the read loop last waited, last received bytes and last sent, on one clock shared by all transports.
    private static long s_clock;
    private long _lastWait;
    private long _lastReceive;
    private long _lastSend;
    private int _waits;
    private int _receives;

    /// <summary>Where the test writes the client's frames.</summary>
    public PipeWriter ClientOutput => _toServer.Writer;

    /// <summary>Where the test reads the server's frames.</summary>
    public PipeReader ClientInput => _toClient.Reader;

    /// <summary>Completes when the session closed the connection.</summary>
    public Task Closed => _closed.Task;

    /// <summary>How often the read loop waited for data without a buffer, and received into one.</summary>
    public (int Waits, int Receives) ReadCalls => (Volatile.Read(ref _waits), Volatile.Read(ref _receives));

    /// <summary>
    /// Completes when the read loop has made <paramref name="receives"/> receives and waits for data that is not
    /// there (the test must not write meanwhile); returns the read calls made so far.
    /// </summary>
    public async Task<(int Waits, int Receives)> WhenWaitingAsync(int receives)
    {
        while (!(_idle && Volatile.Read(ref _receives) >= receives))
        {
            Assert.True(await _waiting.WaitAsync(TestDevice.Timeout), "the read loop never went idle");
        }

        return ReadCalls;
    }

    /// <summary>The order of the last wait for data, receive of bytes and send (larger is later, across transports).</summary>
    public (long Wait, long Receive, long Send) LastCalls =>
        (Interlocked.Read(ref _lastWait), Interlocked.Read(ref _lastReceive), Interlocked.Read(ref _lastSend));

    public EndPoint? RemoteEndPoint { get; } = new IPEndPoint(IPAddress.Loopback, 0);

    public async ValueTask<int> WaitReadableAsync(CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _waits);
        Interlocked.Exchange(ref _lastWait, Interlocked.Increment(ref s_clock));
        if (_isClosed)
        {
            return 0;
        }

        var read = _toServer.Reader.ReadAsync(cancellationToken);
        if (!read.IsCompleted)
        {
            _idle = true;
            _waiting.Release();
        }

        var result = await read.ConfigureAwait(false);
        _idle = false;
        // Consume and examine nothing: the bytes stay for the receive that follows.
        _toServer.Reader.AdvanceTo(result.Buffer.Start);
        return 0;
    }

    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _receives);
        if (_isClosed)
        {
            return 0;
        }

        var result = await _toServer.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        var data = result.Buffer;
        if (result.IsCanceled || _isClosed || (data.IsEmpty && result.IsCompleted))
        {
            _toServer.Reader.AdvanceTo(data.Start);
            return 0; // closed by the session, or the client completed its side
        }

        Interlocked.Exchange(ref _lastReceive, Interlocked.Increment(ref s_clock));
        var count = (int)Math.Min(data.Length, buffer.Length);
        data.Slice(0, count).CopyTo(buffer.Span);
        _toServer.Reader.AdvanceTo(data.GetPosition(count));
        return count;
    }

    public bool Send(byte[] buffer, int length, ITransportSendCompletion completion, out bool sent)
    {
        ValueTask<FlushResult> flush;
        lock (_writeLock)
        {
            if (_isClosed)
            {
                sent = false;
                return true;
            }

            Interlocked.Exchange(ref _lastSend, Interlocked.Increment(ref s_clock));
            _toClient.Writer.Write(buffer.AsSpan(0, length));
            flush = _toClient.Writer.FlushAsync();
        }

        if (flush.IsCompleted)
        {
            sent = Succeeded(flush.Result);
            return true;
        }

        sent = false;
        _ = CompleteWhenTaken(flush, buffer, completion);
        return false;
    }

    public void Close()
    {
        lock (_writeLock)
        {
            if (_isClosed)
            {
                return;
            }

            _isClosed = true;
            // The client still reads what was written before the close, then the end of the stream.
            _toClient.Writer.CancelPendingFlush();
            _toClient.Writer.Complete();
        }

        _toServer.Reader.CancelPendingRead();
        _closed.TrySetResult();
    }

    private static bool Succeeded(FlushResult result) => !result.IsCanceled && !result.IsCompleted;

    private static async Task CompleteWhenTaken(ValueTask<FlushResult> flush, byte[] buffer, ITransportSendCompletion completion)
    {
        bool sent;
        try
        {
            sent = Succeeded(await flush.ConfigureAwait(false));
        }
        catch (InvalidOperationException)
        {
            sent = false;
        }

        completion.OnSendCompleted(buffer, sent);
    }
}
