using System.Buffers;
using System.Net;
using System.Net.WebSockets;
using System.Text;
using System.Text.RegularExpressions;
using ChatBroker.Client;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>The native protocol in binary WebSocket messages (ws.listen, /chat) against the real broker process.</summary>
public sealed partial class WebSocketTransportTests : IDisposable
{
    private static readonly HttpClient Http = new();
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly TestCertificates _certificates = new();

    public void Dispose() => _certificates.Dispose();

    private async Task<(TestBroker Broker, Uri Chat)> StartAsync(bool tls)
    {
        var args = new List<string> { "--set", "ws.listen=127.0.0.1:0", "--set", "ws.allowed_origins=https://chat.example, http://localhost:8080" };
        if (tls)
        {
            _certificates.Issue("chatbroker-wss-test");
            args.AddRange(["--set", "ws.tls=true", "--set", $"tls.certificate_file={_certificates.CertificateFile}", "--set", $"tls.key_file={_certificates.KeyFile}"]);
        }

        var broker = await TestBroker.StartAsync(null, [.. args]);
        var line = await broker.Process.WaitForLineAsync(WsLine()).WaitAsync(Timeout);
        return (broker, new Uri($"{line.Groups[1].Value}://{line.Groups[2].Value}/chat"));
    }

    private ClientWebSocket NewSocket(string? origin = null)
    {
        var socket = new ClientWebSocket();
        socket.Options.CollectHttpResponseDetails = true;
        // Trust exactly the test's self-signed certificate.
        var trusted = File.Exists(_certificates.CertificateFile) ? File.ReadAllText(_certificates.CertificateFile) : null;
        socket.Options.RemoteCertificateValidationCallback = (_, certificate, _, _) =>
            certificate is not null && trusted is not null && trusted.Contains(Convert.ToBase64String(certificate.GetRawCertData())[..64], StringComparison.Ordinal);
        if (origin is not null)
        {
            socket.Options.SetRequestHeader("Origin", origin);
        }

        return socket;
    }

    private static byte[] Frames(params IMessage[] messages)
    {
        var buffer = new ArrayBufferWriter<byte>();
        foreach (var message in messages)
        {
            FrameWriter.Write(buffer, message);
        }

        return buffer.WrittenSpan.ToArray();
    }

    private static Connect Login(TestBroker broker, string user, string device) => new()
    {
        ProtocolVersion = ProtocolConstants.ProtocolVersion,
        UserId = user,
        DeviceId = device,
        Token = broker.Token(user, device),
        Capabilities = (ulong)Capability.Receipts,
    };

    [Fact]
    public async Task A_websocket_client_over_wss_connects_sends_and_receives_deliver()
    {
        var (broker, chat) = await StartAsync(tls: true);
        await using var _ = broker;
        Assert.Equal("wss", chat.Scheme);
        using var socket = NewSocket(origin: "https://chat.example");
        await socket.ConnectAsync(chat, CancellationToken.None).WaitAsync(Timeout);
        var reader = new MessageReader(socket);

        await socket.SendAsync(Frames(Login(broker, "carol", "browser")), WebSocketMessageType.Binary, true, CancellationToken.None);
        Assert.Equal(ReasonCode.Success, (await reader.NextAsync<Connack>()).Reason);

        await using var bob = new ChatClient(new ChatClientOptions
        {
            EndPoint = broker.Process.TcpEndPoint, UserId = "bob", DeviceId = "phone", TokenProvider = _ => ValueTask.FromResult(broker.Token("bob", "phone")),
        });
        await bob.ConnectAsync();

        await socket.SendAsync(Frames(new Send { ClientMsgId = 1, ToUserId = "bob", Body = ByteString.CopyFromUtf8("from the browser") }),
            WebSocketMessageType.Binary, true, CancellationToken.None);
        var sent = await reader.NextAsync<Sent>();
        var atBob = await bob.Messages.ReadAsync().AsTask().WaitAsync(Timeout);
        Assert.Equal("from the browser", Encoding.UTF8.GetString(atBob.Body.Span));
        Assert.Equal(sent.Seq, atBob.Seq);

        await bob.SendAsync("carol", Encoding.UTF8.GetBytes("to the browser"));
        var deliver = await reader.NextAsync<Deliver>();
        Assert.Equal("to the browser", deliver.Body.ToStringUtf8());
        Assert.Equal("bob", deliver.SenderUserId);
    }

    [Fact]
    public async Task Several_frames_in_one_message_are_each_handled()
    {
        var (broker, chat) = await StartAsync(tls: false);
        await using var _ = broker;
        using var socket = NewSocket();
        await socket.ConnectAsync(chat, CancellationToken.None).WaitAsync(Timeout);
        var reader = new MessageReader(socket);

        // CONNECT and two SENDs in one binary message.
        await socket.SendAsync(
            Frames(Login(broker, "carol", "browser"),
                new Send { ClientMsgId = 1, ToUserId = "dave", Body = ByteString.CopyFromUtf8("one") },
                new Send { ClientMsgId = 2, ToUserId = "dave", Body = ByteString.CopyFromUtf8("two") }),
            WebSocketMessageType.Binary, true, CancellationToken.None);

        Assert.Equal(ReasonCode.Success, (await reader.NextAsync<Connack>()).Reason);
        var first = await reader.NextAsync<Sent>();
        var second = await reader.NextAsync<Sent>();
        Assert.Equal((1UL, 1UL), (first.ClientMsgId, first.Seq));
        Assert.Equal((2UL, 2UL), (second.ClientMsgId, second.Seq));
    }

    [Fact]
    public async Task A_frame_split_across_two_messages_is_refused_with_a_reason()
    {
        var (broker, chat) = await StartAsync(tls: false);
        await using var _ = broker;
        using var socket = NewSocket();
        await socket.ConnectAsync(chat, CancellationToken.None).WaitAsync(Timeout);
        var reader = new MessageReader(socket);
        await socket.SendAsync(Frames(Login(broker, "carol", "browser")), WebSocketMessageType.Binary, true, CancellationToken.None);
        Assert.Equal(ReasonCode.Success, (await reader.NextAsync<Connack>()).Reason);

        var frame = Frames(new Send { ClientMsgId = 1, ToUserId = "dave", Body = ByteString.CopyFromUtf8("split in two") });
        // The first message ends inside the frame: refused there, whatever follows.
        await socket.SendAsync(frame.AsMemory(0, 5), WebSocketMessageType.Binary, true, CancellationToken.None);

        var error = await reader.NextAsync<Error>();
        Assert.Equal(ReasonCode.TruncatedFrame, error.Reason);
        Assert.Null(await reader.NextOrCloseAsync()); // then the close
        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
        Assert.Equal(WebSocketCloseStatus.InvalidPayloadData, socket.CloseStatus);
        Assert.Contains("whole frames", socket.CloseStatusDescription, StringComparison.Ordinal);

        var metrics = await Http.GetStringAsync($"http://{broker.Process.AdminEndPoint}/metrics");
        Assert.Contains("chatbroker_ws_refused_total{node=\"node1\",reason=\"split_frame\"} 1", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_browser_from_an_origin_not_allowed_gets_403_and_is_counted()
    {
        var (broker, chat) = await StartAsync(tls: false);
        await using var _ = broker;

        using var refused = NewSocket(origin: "https://evil.example");
        await Assert.ThrowsAsync<WebSocketException>(() => refused.ConnectAsync(chat, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(HttpStatusCode.Forbidden, refused.HttpStatusCode);

        using var allowed = NewSocket(origin: "http://localhost:8080");
        await allowed.ConnectAsync(chat, CancellationToken.None).WaitAsync(Timeout);
        Assert.Equal(WebSocketState.Open, allowed.State);

        var metrics = await Http.GetStringAsync($"http://{broker.Process.AdminEndPoint}/metrics");
        Assert.Contains("chatbroker_ws_upgrades_total{node=\"node1\",result=\"bad_origin\"} 1", metrics, StringComparison.Ordinal);
        Assert.Contains("chatbroker_ws_upgrades_total{node=\"node1\",result=\"ok\"} 1", metrics, StringComparison.Ordinal);
    }

    /// <summary>Reads frames out of binary messages (a message may hold several).</summary>
    private sealed class MessageReader(ClientWebSocket socket)
    {
        private readonly Queue<IMessage> _frames = new();

        public async Task<T> NextAsync<T>()
            where T : class, IMessage
        {
            while (true)
            {
                var message = await NextOrCloseAsync() ?? throw new IOException($"closed ({socket.CloseStatus} {socket.CloseStatusDescription}) while waiting for {typeof(T).Name}");
                if (message is T t)
                {
                    return t;
                }
            }
        }

        /// <summary>The next frame; null once the server closed the WebSocket.</summary>
        public async Task<IMessage?> NextOrCloseAsync()
        {
            if (_frames.Count > 0)
            {
                return _frames.Dequeue();
            }

            using var timeout = new CancellationTokenSource(Timeout);
            var message = new ArrayBufferWriter<byte>();
            while (true)
            {
                var result = await socket.ReceiveAsync(message.GetMemory(4096), timeout.Token);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    return null;
                }

                Assert.Equal(WebSocketMessageType.Binary, result.MessageType);
                message.Advance(result.Count);
                if (result.EndOfMessage)
                {
                    break;
                }
            }

            // The broker's side of the rule: every message holds whole frames.
            var bytes = new ReadOnlySequence<byte>(message.WrittenMemory);
            while (!bytes.IsEmpty)
            {
                Assert.True(FrameReader.TryRead(bytes, 16 * 1024 * 1024, out var frame, out var consumed, out var error), $"a message ended inside a frame ({error})");
                Assert.True(PacketDecoder.TryDecode(frame, out var decoded, out _));
                _frames.Enqueue(decoded!);
                bytes = bytes.Slice(consumed);
            }

            return _frames.Dequeue();
        }
    }

    [GeneratedRegex(@"WebSocket listening on (wss?)://(\S+)/chat")]
    private static partial Regex WsLine();
}
