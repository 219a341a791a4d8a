using System.Net.Sockets;
using System.Text;
using ChatBroker.Mqtt.Tests.Infrastructure;

namespace ChatBroker.Mqtt.Tests;

/// <summary>
/// mqtt.max_sessions: every client id is a session kept up to its expiry, so a client cycling client ids (an
/// anonymous one above all) must not grow the broker's session table without end. Raw MQTT 3.1.1 CONNECTs with
/// clean session 0 over real sockets.
/// </summary>
public sealed class SessionBoundTests
{
    [Fact]
    public async Task A_connect_that_would_create_a_session_past_the_bound_is_refused_and_an_existing_one_is_resumed()
    {
        await using var broker = await MqttTestBroker.StartAsync(null, "--set", "mqtt.max_sessions=2");

        Assert.Equal(0, await ConnectAsync(broker, "kept-a"));
        Assert.Equal(0, await ConnectAsync(broker, "kept-b"));
        Assert.Equal(3, await ConnectAsync(broker, "one-too-many")); // 3.1.1: server unavailable
        Assert.Equal(0, await ConnectAsync(broker, "kept-a"));       // its session exists: resumed, not counted again
    }

    /// <summary>CONNECT (3.1.1, clean session 0, anonymous) and the CONNACK return code; the socket is closed after.</summary>
    private static async Task<int> ConnectAsync(MqttTestBroker broker, string clientId)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(broker.Mqtt);
        var id = Encoding.UTF8.GetBytes(clientId);
        byte[] variable = [0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 4, 0x00, 0, 60, 0, (byte)id.Length, .. id];
        await socket.SendAsync((byte[])[0x10, (byte)variable.Length, .. variable]);
        var connack = new byte[4];
        var read = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (read < 4)
        {
            var n = await socket.ReceiveAsync(connack.AsMemory(read), timeout.Token);
            Assert.True(n > 0, $"the broker closed the connection after {read} bytes of CONNACK");
            read += n;
        }

        Assert.Equal(0x20, connack[0]);
        return connack[3];
    }
}
