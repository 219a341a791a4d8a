using System.Buffers;
using System.Collections.Concurrent;
using System.Security.Cryptography;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Broker.Sessions;
using ChatBroker.Broker.Transport;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using ChatBroker.Tokens;
using Google.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>
/// The whole broker behind its sessions — settings, store, messaging core, registry — with devices connected
/// over <see cref="InMemoryTransport"/>: every byte a session reads or writes goes through the real read
/// loop, frame codec and outbox, and no socket is opened.
/// </summary>
internal sealed class SessionHarness : IConnectionOwner, IAsyncDisposable
{
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<long, TaskCompletionSource<Exception?>> _released = new();
    private readonly BrokerMetrics _metrics = new("test");
    private readonly PresenceService _presence;
    private readonly DeviceConnectionHandler _handler;
    private long _nextConnectionId;

    private readonly bool _ownsStore;

    /// <param name="store">A store to use instead of a new one (a restarted node keeps its data); not disposed.</param>
    public SessionHarness(Action<BrokerOptions>? configure = null, StorageOptions? storage = null, InMemoryChatStore? store = null)
    {
        configure?.Invoke(Options);
        _ownsStore = store is null;
        Store = store ?? new InMemoryChatStore(storage);
        var registry = new SessionRegistry();
        var directory = new ConversationDirectory(Store);
        var chat = new ChatService(Store, registry, directory, _metrics, TimeProvider.System, Options.Fanout, Options.Retention);
        _presence = new PresenceService(Store, directory, _metrics, TimeProvider.System, Options.Presence);
        Context = new BrokerContext(
            Options, chat, new GroupService(Store, directory, chat, Options.Groups), directory, registry, Secret, _metrics,
            TimeProvider.System, NullLoggerFactory.Instance, _presence, new TypingRelay(directory, registry, _metrics),
            new KeyDirectory(Store, registry, _metrics, Options.Keys));
        Revocations = new DeviceRevocations(Store, registry, _metrics, TimeProvider.System);
        _handler = new DeviceConnectionHandler(Context);
        Keepalive = new KeepaliveMonitor(registry, NullLogger<KeepaliveMonitor>.Instance, TimeProvider.System);
    }

    public BrokerOptions Options { get; } = new();

    public TokenSecret Secret { get; } = new(RandomNumberGenerator.GetBytes(32));

    public InMemoryChatStore Store { get; }

    public BrokerContext Context { get; }

    public KeepaliveMonitor Keepalive { get; }

    public DeviceRevocations Revocations { get; }

    CancellationToken IConnectionOwner.Stopping => _stopping.Token;

    /// <summary>Opens a connection and starts its session; nothing is sent yet.</summary>
    public TestDevice Open(long clientBufferBytes = 64 * 1024)
    {
        var id = Interlocked.Increment(ref _nextConnectionId);
        var transport = new InMemoryTransport(clientBufferBytes);
        var released = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        _released[id] = released;
        _handler.Start(transport, id, this);
        return new TestDevice(transport, released.Task);
    }

    /// <summary>Opens a connection and completes CONNECT with a valid token; returns after a successful CONNACK.</summary>
    public async Task<TestDevice> ConnectAsync(string user, string device, ulong resumeInboxSeq = 0, uint keepaliveS = 0, long clientBufferBytes = 64 * 1024)
    {
        var connection = Open(clientBufferBytes);
        await connection.SendAsync(ConnectPacket(user, device, resumeInboxSeq, keepaliveS));
        var connack = await connection.ExpectAsync<Connack>();
        Assert.Equal(ReasonCode.Success, connack.Reason);
        return connection;
    }

    public Connect ConnectPacket(string user, string device, ulong resumeInboxSeq = 0, uint keepaliveS = 0) => new()
    {
        ProtocolVersion = ProtocolConstants.ProtocolVersion,
        UserId = user,
        DeviceId = device,
        Token = AccessToken.Issue(Secret, user, device, TimeSpan.FromHours(1), DateTimeOffset.UtcNow),
        KeepaliveS = keepaliveS,
        ResumeInboxSeq = resumeInboxSeq,
        Capabilities = (ulong)Capability.Receipts,
    };

    void IConnectionOwner.Release(long connectionId, Exception? failure) => _released[connectionId].TrySetResult(failure);

    public async ValueTask DisposeAsync()
    {
        // Shutdown as the listener does it: every session says so and ends.
        await _stopping.CancelAsync();
        foreach (var released in _released.Values)
        {
            await released.Task.WaitAsync(TestDevice.Timeout);
        }

        _presence.Dispose();
        if (_ownsStore)
        {
            await Store.DisposeAsync();
        }
        _metrics.Dispose();
        _stopping.Dispose();
    }
}

/// <summary>The client end of one in-memory connection: writes frames, reads frames, waits with a timeout.</summary>
internal sealed class TestDevice(InMemoryTransport transport, Task<Exception?> released)
{
    /// <summary>How long any single wait may take before the test fails (never reached when the broker works).</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private const int MaxFrame = 1 << 20;

    public InMemoryTransport Transport { get; } = transport;

    /// <summary>Completes when the broker has ended the connection (with the read loop's failure, if any).</summary>
    public Task<Exception?> Released { get; } = released;

    /// <summary>Bytes of frames read so far.</summary>
    public long BytesRead { get; private set; }

    public async Task SendAsync(IMessage message)
    {
        FrameWriter.Write(Transport.ClientOutput, message);
        await Transport.ClientOutput.FlushAsync();
    }

    /// <summary>The next frame from the broker; null at the end of the stream.</summary>
    public async Task<IMessage?> ReceiveAsync()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        var input = Transport.ClientInput;
        while (true)
        {
            var result = await input.ReadAsync(timeout.Token);
            var buffer = result.Buffer;
            if (FrameReader.TryRead(buffer, MaxFrame, out var frame, out var consumed, out var error))
            {
                Assert.True(PacketDecoder.TryDecode(frame, out var message, out error), $"bad {frame.Type} from the broker: {error}");
                BytesRead += frame.Length;
                input.AdvanceTo(consumed);
                return message;
            }

            Assert.Equal(ReasonCode.Success, error);
            if (result.IsCompleted)
            {
                Assert.True(buffer.IsEmpty, "the broker's stream ended inside a frame");
                input.AdvanceTo(buffer.End);
                return null;
            }

            input.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>The next frame, which must be a <typeparamref name="T"/>.</summary>
    public async Task<T> ExpectAsync<T>()
        where T : class, IMessage
    {
        var message = await ReceiveAsync();
        return Assert.IsType<T>(message);
    }

    /// <summary>Reads to the end of the stream, which must come.</summary>
    public async Task<List<IMessage>> ReadToEndAsync()
    {
        var all = new List<IMessage>();
        while (await ReceiveAsync() is { } message)
        {
            all.Add(message);
        }

        return all;
    }

    /// <summary>The broker ended the connection without a failure in its read loop.</summary>
    public async Task EndedAsync()
    {
        var failure = await Released.WaitAsync(Timeout);
        Assert.Null(failure);
        Assert.True(Transport.Closed.IsCompleted);
    }

    public static Send Text(ulong clientMsgId, string to, string text) =>
        new() { ClientMsgId = clientMsgId, ToUserId = to, Body = ByteString.CopyFromUtf8(text) };

    public static Send Bytes(ulong clientMsgId, string to, int length) =>
        new() { ClientMsgId = clientMsgId, ToUserId = to, Body = ByteString.CopyFrom(new byte[length]) };
}

/// <summary>Frames the tests write by hand.</summary>
internal static class RawFrames
{
    public static byte[] Of(IMessage message)
    {
        var writer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, message);
        return writer.WrittenSpan.ToArray();
    }
}
