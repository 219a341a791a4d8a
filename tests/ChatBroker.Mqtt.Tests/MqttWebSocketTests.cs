using System.Text.RegularExpressions;
using ChatBroker.Mqtt.Tests.Infrastructure;

namespace ChatBroker.Mqtt.Tests;

/// <summary>MQTT over WebSocket on ws.listen's /mqtt (subprotocol "mqtt"), with paho's WebSocket transport.</summary>
public sealed partial class MqttWebSocketTests
{
    [GeneratedRegex(@"WebSocket listening on ws://(\S+)/chat")]
    private static partial Regex WsLine();

    [Fact]
    public async Task Paho_clients_over_WebSocket_exchange_messages_of_every_QoS_and_a_retained_one()
    {
        Tools.RequireMqttClients();
        await using var broker = await MqttTestBroker.StartAsync(null, "--set", "ws.listen=127.0.0.1:0");
        var ws = System.Net.IPEndPoint.Parse((await broker.Broker.Process.WaitForLineAsync(WsLine()).WaitAsync(TimeSpan.FromSeconds(30))).Groups[1].Value);
        var (code, stdout, stderr) = await Tools.RunAsync(Tools.Python,
            [Tools.Script("ws_peer.py"), ws.Address.ToString(), ws.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)], TimeSpan.FromSeconds(60));
        Assert.True(code == 0 && stdout.Trim() == "ok", stdout + stderr);
    }

    [Fact]
    public async Task A_WebSocket_without_the_mqtt_subprotocol_is_refused_with_a_reason()
    {
        await using var broker = await MqttTestBroker.StartAsync(null, "--set", "ws.listen=127.0.0.1:0");
        var ws = (await broker.Broker.Process.WaitForLineAsync(WsLine()).WaitAsync(TimeSpan.FromSeconds(30))).Groups[1].Value;
        using var socket = new System.Net.WebSockets.ClientWebSocket();
        var refused = await Assert.ThrowsAsync<System.Net.WebSockets.WebSocketException>(() => socket.ConnectAsync(new Uri($"ws://{ws}/mqtt"), CancellationToken.None));
        Assert.Contains("400", refused.Message, StringComparison.Ordinal);
    }
}
