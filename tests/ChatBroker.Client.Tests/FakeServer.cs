using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Client.Tests;

/// <summary>
/// A scripted broker: a TcpListener on 127.0.0.1 port 0 whose connections a test drives frame by frame with
/// the Protocol library's FrameReader and FrameWriter. Every wait has a timeout, so a broken client fails a
/// test instead of hanging it.
/// </summary>
internal sealed class FakeServer : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);

    public FakeServer() => _listener.Start();

    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    public async Task<FakeConnection> AcceptAsync()
    {
        using var cts = new CancellationTokenSource(Timeout);
        var socket = await _listener.AcceptSocketAsync(cts.Token);
        return new FakeConnection(socket);
    }

    /// <summary>Accepts a connection, reads its CONNECT and answers CONNACK(SUCCESS).</summary>
    public async Task<(FakeConnection Connection, Connect Connect)> AcceptSessionAsync(uint keepaliveS = 0)
    {
        var connection = await AcceptAsync();
        var connect = await connection.AcceptConnectAsync(keepaliveS);
        return (connection, connect);
    }

    public void Dispose() => _listener.Stop();
}

internal sealed class FakeConnection : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly PipeReader _reader;
    private readonly PipeWriter _writer;

    public FakeConnection(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = PipeReader.Create(_stream);
        _writer = PipeWriter.Create(_stream);
    }

    /// <summary>The next frame from the client.</summary>
    public async Task<(IMessage Message, FrameFlags Flags)> ReadAsync()
    {
        using var cts = new CancellationTokenSource(FakeServer.Timeout);
        while (true)
        {
            var result = await _reader.ReadAsync(cts.Token);
            var buffer = result.Buffer;
            if (FrameReader.TryRead(buffer, ProtocolConstants.DefaultMaxFrameSize, out var frame, out var consumed, out var error))
            {
                Assert.True(PacketDecoder.TryDecode(frame, out var message, out error), $"client sent a bad {frame.Type}: {error}");
                var flags = frame.Flags;
                _reader.AdvanceTo(consumed);
                return (message, flags);
            }

            Assert.Equal(ReasonCode.Success, error);
            _reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                throw new EndOfStreamException("the client closed the connection");
            }
        }
    }

    /// <summary>The next frame of type <typeparamref name="T"/>, skipping keepalive and ACK noise (unless that is what is asked for).</summary>
    public async Task<(T Message, FrameFlags Flags)> ExpectAsync<T>()
        where T : IMessage
    {
        while (true)
        {
            var (message, flags) = await ReadAsync();
            if (message is T typed)
            {
                return (typed, flags);
            }

            Assert.True(message is Ping or Ack, $"expected {typeof(T).Name}, got {message.GetType().Name} {message}");
        }
    }

    public async Task<Connect> AcceptConnectAsync(uint keepaliveS = 0)
    {
        var (connect, _) = await ReadAsync();
        var typed = Assert.IsType<Connect>(connect);
        await WriteAsync(new Connack
        {
            Reason = ReasonCode.Success,
            SessionId = "s1",
            ServerTimeMs = 1_764_096_000_000,
            KeepaliveS = keepaliveS == 0 ? typed.KeepaliveS : keepaliveS,
            MaxFrameSize = ProtocolConstants.DefaultMaxFrameSize,
            Capabilities = typed.Capabilities,
        });
        return typed;
    }

    public async Task WriteAsync(params IMessage[] messages)
    {
        foreach (var message in messages)
        {
            FrameWriter.Write(_writer, message);
        }

        await _writer.FlushAsync();
    }

    public async Task WriteAsync(IMessage message, FrameFlags flags)
    {
        FrameWriter.Write(_writer, message, flags);
        await _writer.FlushAsync();
    }

    /// <summary>Waits until the client closes its side (reads and discards what it still sends).</summary>
    public async Task WaitForCloseAsync()
    {
        while (true)
        {
            try
            {
                await ReadAsync();
            }
            catch (Exception e) when (e is EndOfStreamException or IOException)
            {
                return;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _reader.CompleteAsync();
        await _writer.CompleteAsync();
        await _stream.DisposeAsync();
        _socket.Dispose();
    }

    public static Deliver Deliver(ulong conversationId, ulong seq, ulong inboxSeq, string body = "hi") => new()
    {
        ConversationId = conversationId,
        Seq = seq,
        InboxSeq = inboxSeq,
        SenderUserId = "bob",
        SenderDeviceId = "bob-phone",
        TimestampMs = 1_764_096_000_000 + seq,
        Body = ByteString.CopyFromUtf8(body),
    };
}
