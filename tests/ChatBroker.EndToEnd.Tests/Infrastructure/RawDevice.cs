using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests.Infrastructure;

/// <summary>
/// A device speaking the wire protocol by hand (Protocol's codec, no SDK): for tests that need exact control
/// of the bytes — malformed input, frames out of order, a reader that stops reading.
/// </summary>
public sealed class RawDevice : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly PipeReader _reader;
    private readonly Queue<IMessage> _returned = new();

    private RawDevice(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: 65536));
    }

    public static async Task<RawDevice> ConnectAsync(IPEndPoint endPoint, int receiveBuffer = 0)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (receiveBuffer > 0)
        {
            socket.ReceiveBufferSize = receiveBuffer;
        }

        await socket.ConnectAsync(endPoint);
        return new RawDevice(socket);
    }

    public async Task<Connack> LoginAsync(string user, string device, string token, ulong resumeInboxSeq = 0, uint keepaliveS = 0, ulong capabilities = (ulong)Capability.Receipts)
    {
        await SendAsync(new Connect
        {
            ProtocolVersion = ProtocolConstants.ProtocolVersion,
            UserId = user,
            DeviceId = device,
            Token = token,
            ResumeInboxSeq = resumeInboxSeq,
            KeepaliveS = keepaliveS,
            Capabilities = capabilities,
        });
        return await ReceiveAsync<Connack>();
    }

    public Task SendAsync(IMessage message, FrameFlags flags = FrameFlags.None)
    {
        var buffer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(buffer, message, flags);
        return SendRawAsync(buffer.WrittenMemory);
    }

    public async Task SendRawAsync(ReadOnlyMemory<byte> bytes)
    {
        await _stream.WriteAsync(bytes);
        await _stream.FlushAsync();
    }

    /// <summary>The next packet, whatever it is; null when the broker closed the connection.</summary>
    public async Task<IMessage?> ReceiveAnyAsync(TimeSpan? timeout = null)
    {
        if (_returned.TryDequeue(out var returned))
        {
            return returned;
        }

        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(20));
        while (true)
        {
            ReadResult result;
            try
            {
                result = await _reader.ReadAsync(cts.Token);
            }
            catch (IOException)
            {
                return null;
            }

            var buffer = result.Buffer;
            if (FrameReader.TryRead(buffer, 16 * 1024 * 1024, out var frame, out var consumed, out var error))
            {
                if (!PacketDecoder.TryDecode(frame, out var message, out error))
                {
                    throw new InvalidDataException($"broker sent a bad {frame.Type}: {error}");
                }

                _reader.AdvanceTo(consumed);
                return message;
            }

            if (error != ReasonCode.Success)
            {
                throw new InvalidDataException($"broker sent a malformed frame: {error}");
            }

            if (result.IsCompleted)
            {
                _reader.AdvanceTo(buffer.End);
                return null;
            }

            _reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>The next packet of type <typeparamref name="T"/>, skipping others (receipts, sync markers) unless they are T.</summary>
    public async Task<T> ReceiveAsync<T>(TimeSpan? timeout = null)
        where T : class, IMessage
    {
        while (true)
        {
            var message = await ReceiveAnyAsync(timeout) ?? throw new IOException($"connection closed while waiting for {typeof(T).Name}");
            if (message is T t)
            {
                return t;
            }
        }
    }

    /// <summary>Puts packets read past back in front of what is still unread, in the order given: the next receives
    /// return them first.</summary>
    public void Return(IEnumerable<IMessage> messages)
    {
        foreach (var message in messages)
        {
            _returned.Enqueue(message);
        }
    }

    /// <summary>Reads until the broker closes; returns the packets it sent last (e.g. the DISCONNECT).</summary>
    public async Task<List<IMessage>> ReceiveUntilClosedAsync(TimeSpan? timeout = null)
    {
        var all = new List<IMessage>();
        while (await ReceiveAnyAsync(timeout) is { } message)
        {
            all.Add(message);
        }

        return all;
    }

    /// <summary>Half-closes: the broker sees the end of the stream, and can still answer.</summary>
    public void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    public async ValueTask DisposeAsync()
    {
        await _reader.CompleteAsync();
        await _stream.DisposeAsync();
        _socket.Dispose();
    }
}
