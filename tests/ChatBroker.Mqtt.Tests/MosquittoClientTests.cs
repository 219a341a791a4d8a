using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using ChatBroker.Mqtt.Tests.Infrastructure;

namespace ChatBroker.Mqtt.Tests;

/// <summary>
/// mosquitto_pub and mosquitto_sub (Debian's mosquitto-clients) against the listener. A subscriber is made ready without
/// waiting: a persistent session subscribes and exits once acknowledged (-E), messages are published, and the same
/// session is resumed to collect them.
/// </summary>
public sealed class MosquittoClientTests(MqttBrokerFixture fixture) : IClassFixture<MqttBrokerFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private string[] Common => ["-h", fixture.Broker.Host, "-p", fixture.Broker.Port];

    private async Task RunOkAsync(string tool, params string[] args)
    {
        var (code, stdout, stderr) = await Tools.RunAsync("/usr/bin/" + tool, [.. Common, .. args], Timeout);
        Assert.True(code == 0, $"{tool} {string.Join(' ', args)}: exit {code}\n{stdout}\n{stderr}");
    }

    private async Task<string[]> CollectAsync(int count, params string[] args)
    {
        var (code, stdout, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_sub", [.. Common, "-C", count.ToString(System.Globalization.CultureInfo.InvariantCulture), "-W", "20", .. args], Timeout);
        Assert.True(code == 0, $"mosquitto_sub: exit {code}\n{stdout}\n{stderr}");
        return stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    [Theory]
    [InlineData("mqttv311")]
    [InlineData("mqttv5")]
    public async Task Qos_0_1_2_messages_reach_a_resumed_persistent_subscriber(string version)
    {
        var id = "sub-" + Guid.NewGuid().ToString("N")[..8];
        var topic = "mosq/" + id;
        await RunOkAsync("mosquitto_sub", "-V", version, "-i", id, "-c", "-q", "2", "-t", topic + "/#", "-E", "-x", "60");
        await RunOkAsync("mosquitto_pub", "-V", version, "-q", "1", "-t", topic + "/a", "-m", "one");
        await RunOkAsync("mosquitto_pub", "-V", version, "-q", "2", "-t", topic + "/b", "-m", "two");
        var lines = await CollectAsync(2, "-V", version, "-i", id, "-c", "-q", "2", "-t", topic + "/#", "-v", "-x", "60");
        Assert.Equal([topic + "/a one", topic + "/b two"], lines);
    }

    [Fact]
    public async Task A_retained_message_is_read_by_a_later_subscriber()
    {
        var topic = "mosq-ret/" + Guid.NewGuid().ToString("N");
        await RunOkAsync("mosquitto_pub", "-q", "1", "-r", "-t", topic, "-m", "kept");
        var lines = await CollectAsync(1, "-t", topic, "-v");
        Assert.Equal([topic + " kept"], lines);
    }

    [Fact]
    public async Task Chat_between_two_mosquitto_clients_with_tokens()
    {
        var sender = "mq-" + Guid.NewGuid().ToString("N")[..8];
        var reader = "mq-" + Guid.NewGuid().ToString("N")[..8];
        var senderToken = fixture.Broker.Token(sender);
        var readerToken = fixture.Broker.Token(reader);
        // The reader's device subscribes once (persistent: resumed from its stored cursor later), then goes away.
        await RunOkAsync("mosquitto_sub", "-V", "mqttv5", "-i", "tablet", "-u", reader, "-P", readerToken, "-c", "-x", "300", "-q", "1", "-t", $"inbox/{reader}/#", "-E");
        await RunOkAsync("mosquitto_pub", "-i", "phone", "-u", sender, "-P", senderToken, "-q", "1", "-t", $"chat/u/{reader}", "-m", "hello");
        await RunOkAsync("mosquitto_pub", "-i", "phone", "-u", sender, "-P", senderToken, "-q", "2", "-t", $"chat/u/{reader}", "-m", "again");
        var lines = await CollectAsync(2, "-V", "mqttv5", "-i", "tablet", "-u", reader, "-P", readerToken, "-c", "-x", "300", "-q", "1", "-t", $"inbox/{reader}/#", "-F", "%t %p %P");
        Assert.Equal(2, lines.Length);
        Assert.StartsWith($"inbox/{reader}/u/{sender} hello ", lines[0], StringComparison.Ordinal);
        Assert.Contains("seq:1 ", lines[0], StringComparison.Ordinal);
        Assert.StartsWith($"inbox/{reader}/u/{sender} again ", lines[1], StringComparison.Ordinal);
        Assert.Contains("seq:2 ", lines[1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_client_without_a_token_is_refused_when_anonymous_is_off()
    {
        await using var strict = await MqttTestBroker.StartAsync(null, "--set", "mqtt.allow_anonymous=false");
        var (code, _, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_pub",
            ["-h", strict.Host, "-p", strict.Port, "-t", "a", "-m", "x", "-q", "1"], Timeout);
        Assert.NotEqual(0, code);
        Assert.Contains("not authorised", stderr, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Mqtt_over_TLS_on_mqtt_tls_listen()
    {
        var directory = Path.Combine(Path.GetTempPath(), "chatbroker-mqtt-tls-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        try
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
            using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
            var certificateFile = Path.Combine(directory, "server.crt");
            var keyFile = Path.Combine(directory, "server.key");
            await File.WriteAllTextAsync(keyFile, key.ExportPkcs8PrivateKeyPem());
            await File.WriteAllTextAsync(certificateFile, certificate.ExportCertificatePem());
            await using var broker = await MqttTestBroker.StartAsync(null,
                "--set", "mqtt.tls_listen=127.0.0.1:0", "--set", "tls.certificate_file=" + certificateFile, "--set", "tls.key_file=" + keyFile);
            var line = await broker.Broker.Process.WaitForLineAsync(new Regex(@"MQTT over TLS listening on (\S+)")).WaitAsync(TimeSpan.FromSeconds(30));
            var tls = System.Net.IPEndPoint.Parse(line.Groups[1].Value);
            var id = "tls-" + Guid.NewGuid().ToString("N")[..8];
            string[] common = ["-h", "127.0.0.1", "-p", tls.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--cafile", certificateFile, "--insecure"];
            var (code, stdout, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_sub", [.. common, "-i", id, "-c", "-q", "1", "-t", "tls/t", "-E"], Timeout);
            Assert.True(code == 0, stdout + stderr);
            (code, stdout, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_pub", [.. common, "-q", "1", "-t", "tls/t", "-m", "secret"], Timeout);
            Assert.True(code == 0, stdout + stderr);
            (code, stdout, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_sub", [.. common, "-i", id, "-c", "-q", "1", "-t", "tls/t", "-C", "1", "-W", "20"], Timeout);
            Assert.True(code == 0, stdout + stderr);
            Assert.Equal("secret", stdout.Trim());
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    // Issue 18: the MQTT listener checks tokens as the native CONNECT does: a revoked device's older token is refused.
    [Fact]
    public async Task A_revoked_devices_token_is_refused_by_the_mqtt_listener_too()
    {
        await using var broker = await MqttTestBroker.StartAsync(null, "--set", "mqtt.allow_anonymous=false");
        var token = broker.Token("alice", "phone");
        var (code, _, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_pub",
            ["-h", broker.Host, "-p", broker.Port, "-i", "phone", "-u", "alice", "-P", token, "-t", "chat/u/bob", "-m", "before", "-q", "1"], Timeout);
        Assert.True(code == 0, stderr);

        var (exit, _, cliError) = await ChatBroker.Host.Tests.Infrastructure.BrokerProcess.RunCliAsync(
            ["device", "revoke", "--user", "alice", "--device", "phone", "--admin", broker.Broker.Process.AdminEndPoint.ToString()]);
        Assert.True(exit == 0, cliError);

        (code, _, stderr) = await Tools.RunAsync("/usr/bin/mosquitto_pub",
            ["-h", broker.Host, "-p", broker.Port, "-i", "phone", "-u", "alice", "-P", token, "-t", "chat/u/bob", "-m", "after", "-q", "1"], Timeout);
        Assert.NotEqual(0, code);
        Assert.Contains("not authorised", stderr, StringComparison.OrdinalIgnoreCase);
    }
}
