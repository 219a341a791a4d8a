using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// `idle-transports`: what one idle authenticated connection costs the broker on each transport, in one run (the
/// last step: MQTT devices on mqtt.listen, each subscribed to its inbox):
/// --connections logged-in connections over cleartext TCP, then as many more over TLS (tls.listen, a self-signed
/// certificate made for the run), then over WebSocket (ws.listen), all held open; the broker's resident memory
/// and managed heap are read (settled, twice 1 s apart) before and after each step. The three figures come from
/// one broker process, so they compare (the later steps find a heap grown by the earlier ones: they are, if
/// anything, cheaper than they would be alone).
/// </summary>
public sealed class IdleTransportsScenario(RunOptions options)
{
    private string? DumpPath(string name) =>
        options.GcDumpDirectory is null ? null : Path.Combine(options.GcDumpDirectory, $"broker-idle-{name}.gcdump");

    private const string Alpn = "chatbroker/1";

    public async Task<RunResult> RunAsync()
    {
        var count = options.Connections;
        var directory = Path.Combine(Path.GetTempPath(), "chatbroker-idle-tls-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        var (certificateFile, keyFile) = WriteCertificate(directory);
        var tlsPort = FreePort();
        var wsPort = FreePort();
        var mqttPort = FreePort();
        await using var broker = await BrokerLauncher.StartAsync("async",
        [
            $"tls.listen=127.0.0.1:{tlsPort}", $"tls.certificate_file={certificateFile}", $"tls.key_file={keyFile}", $"ws.listen=127.0.0.1:{wsPort}",
            $"mqtt.listen=127.0.0.1:{mqttPort}",
        ]).ConfigureAwait(false);
        var result = new RunResult
        {
            Scenario = "idle-transports",
            Parameters = new Dictionary<string, string> { ["connections per transport"] = count.ToString(CultureInfo.InvariantCulture) },
            ThroughputUnit = "connections",
        };
        var held = new List<IAsyncDisposable>();
        try
        {
            var before = await Metrics.SettledAsync(broker, gcDumpPath: DumpPath("before")).ConfigureAwait(false);
            var steps = new (string Name, Func<int, Task<IAsyncDisposable>> Open)[]
            {
                ("tcp", i => OpenTcpAsync(broker, i)),
                ("tls", i => OpenTlsAsync(broker, tlsPort, i)),
                ("ws", i => OpenWebSocketAsync(broker, wsPort, i)),
                ("mqtt", i => OpenMqttAsync(broker, mqttPort, i)),
            };
            var sessions = 0;
            foreach (var (name, open) in steps)
            {
                Console.WriteLine($"{name}: opening {count:N0} idle connections ...");
                using var gate = new SemaphoreSlim(64);
                var opening = new Task<IAsyncDisposable>[count];
                for (var i = 0; i < count; i++)
                {
                    await gate.WaitAsync().ConfigureAwait(false);
                    var index = sessions + i;
                    opening[i] = Task.Run(async () =>
                    {
                        try
                        {
                            return await open(index).ConfigureAwait(false);
                        }
                        finally
                        {
                            gate.Release();
                        }
                    });
                }

                held.AddRange(await Task.WhenAll(opening).ConfigureAwait(false));
                sessions += count;
                var after = await Metrics.SettledAsync(broker, waitForSessions: sessions, gcDumpPath: DumpPath(name)).ConfigureAwait(false);
                if (before is not null && after is not null)
                {
                    result.Figures[$"{name}_rss_bytes_per_connection"] = Math.Round((after.ResidentBytes - before.ResidentBytes) / count);
                    result.Figures[$"{name}_heap_bytes_per_connection"] = Math.Round((after.GcHeapBytes - before.GcHeapBytes) / count);
                    Console.WriteLine($"{name}: {result.Figures[$"{name}_rss_bytes_per_connection"]:N0} B RSS, {result.Figures[$"{name}_heap_bytes_per_connection"]:N0} B managed heap per idle connection");
                }

                before = after;
            }

            result.Notes.Add("RSS and managed heap from /metrics after 3 s quiet; steps in one broker: tcp, then tls, then ws, then mqtt (an MQTT 3.1.1 device subscribed to its inbox; all held)");
            result.Notes.Add(options.GcDumpDirectory is null
                ? "without --gcdump the readings include garbage not yet collected (up to the broker's 16 MB gen0 budget: up to 4 KB per connection at 4,000)"
                : $"each reading right after dotnet-gcdump (a full GC) of the broker; dumps in {options.GcDumpDirectory}");
        }
        finally
        {
            foreach (var connection in held)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }

            Directory.Delete(directory, recursive: true);
        }

        return result;
    }

    private static async Task<IAsyncDisposable> OpenTcpAsync(BrokerLauncher broker, int index)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(broker.TcpEndPoint).ConfigureAwait(false);
        var stream = new NetworkStream(socket, ownsSocket: true);
        await LoginAsync(broker, stream, index).ConfigureAwait(false);
        return stream;
    }

    private static async Task<IAsyncDisposable> OpenTlsAsync(BrokerLauncher broker, int port, int index)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).ConfigureAwait(false);
        var stream = new SslStream(new NetworkStream(socket, ownsSocket: true));
        await stream.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            ApplicationProtocols = [new SslApplicationProtocol(Alpn)],
            RemoteCertificateValidationCallback = static (_, _, _, _) => true, // the run's own self-signed certificate
        }).ConfigureAwait(false);
        await LoginAsync(broker, stream, index).ConfigureAwait(false);
        return stream;
    }

    private static async Task<IAsyncDisposable> OpenWebSocketAsync(BrokerLauncher broker, int port, int index)
    {
        var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{port}/chat"), CancellationToken.None).ConfigureAwait(false);
        await socket.SendAsync(ConnectFrame(broker, index), WebSocketMessageType.Binary, true, CancellationToken.None).ConfigureAwait(false);
        var buffer = new byte[1024];
        var received = await socket.ReceiveAsync(buffer, CancellationToken.None).ConfigureAwait(false);
        CheckConnack(buffer.AsMemory(0, received.Count));
        return new WebSocketHolder(socket);
    }

    // An idle MQTT chat device: CONNECT with a token, subscribed to its inbox at QoS 1 (Broker/Mqtt).
    private static async Task<IAsyncDisposable> OpenMqttAsync(BrokerLauncher broker, int port, int index)
    {
        var user = "idle" + index.ToString(CultureInfo.InvariantCulture);
        var client = await Mqtt.MqttLoadClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), null, "d", user, broker.Token(user, "d"), CancellationToken.None).ConfigureAwait(false);
        await client.SubscribeAsync($"inbox/{user}/#", 1, CancellationToken.None).ConfigureAwait(false);
        return client;
    }

    private static async Task LoginAsync(BrokerLauncher broker, Stream stream, int index)
    {
        await stream.WriteAsync(ConnectFrame(broker, index)).ConfigureAwait(false);
        var buffer = new byte[1024];
        var n = await stream.ReadAtLeastAsync(buffer, 2).ConfigureAwait(false);
        CheckConnack(buffer.AsMemory(0, n));
    }

    private static byte[] ConnectFrame(BrokerLauncher broker, int index)
    {
        var user = "idle" + index.ToString(CultureInfo.InvariantCulture);
        var writer = new ArrayBufferWriter<byte>();
        FrameWriter.Write(writer, new Connect
        {
            ProtocolVersion = ProtocolConstants.ProtocolVersion, UserId = user, DeviceId = "d", Token = broker.Token(user, "d"), KeepaliveS = 3600,
        });
        return writer.WrittenSpan.ToArray();
    }

    private static void CheckConnack(ReadOnlyMemory<byte> bytes)
    {
        if (!FrameReader.TryRead(new ReadOnlySequence<byte>(bytes), 1 << 20, out var frame, out _, out _)
            || !PacketDecoder.TryDecode(frame, out var message, out _) || message is not Connack { Reason: ReasonCode.Success })
        {
            throw new InvalidOperationException("login failed");
        }
    }

    internal static (string Certificate, string Key) WriteCertificate(string directory)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        var certificateFile = Path.Combine(directory, "server.crt");
        var keyFile = Path.Combine(directory, "server.key");
        File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem());
        File.WriteAllText(certificateFile, certificate.ExportCertificatePem());
        return (certificateFile, keyFile);
    }

    internal static int FreePort()
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    private sealed class WebSocketHolder(ClientWebSocket socket) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            socket.Abort();
            socket.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
