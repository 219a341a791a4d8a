using System.Net;
using System.Net.Sockets;

namespace ChatBroker.LoadTests.Mqtt;

/// <summary>The broker an MQTT scenario runs against: --target host:port, or else ChatBroker with its MQTT listener
/// (anonymous clients allowed) started by the harness on a free loopback port and stopped after the run.</summary>
internal static class MqttTarget
{
    public static async Task<RunResult> RunAsync(RunOptions options, Func<IPEndPoint, BrokerLauncher?, Task<RunResult>> run)
    {
        BrokerLauncher? started = null;
        IPEndPoint target;
        if (options.Target is null)
        {
            using var probe = new Socket(SocketType.Stream, ProtocolType.Tcp);
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            var port = ((IPEndPoint)probe.LocalEndPoint!).Port;
            probe.Dispose();
            Console.WriteLine($"starting broker with mqtt.listen=127.0.0.1:{port}, anonymous MQTT clients allowed ...");
            started = await BrokerLauncher.StartAsync(options.Durability, [.. options.BrokerSettings, $"mqtt.listen=127.0.0.1:{port}", "mqtt.allow_anonymous=true"]).ConfigureAwait(false);
            target = new IPEndPoint(IPAddress.Loopback, port);
        }
        else
        {
            target = BrokerLauncher.ResolveEndPoint(options.Target);
        }

        try
        {
            return await run(target, started).ConfigureAwait(false);
        }
        finally
        {
            if (started is not null)
            {
                await started.DisposeAsync().ConfigureAwait(false);
            }
        }
    }
}
