using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// Connect/login/disconnect cycles before a measurement, so the broker's connect path is compiled by the tiered
/// JIT (a fresh broker spends a good part of its first thousands of connections in libclrjit, see
/// docs/performance.md) and pools are warm: the figures are the broker's steady state, not its first second.
/// </summary>
public static class Warmup
{
    public static async Task ConnectCyclesAsync(BrokerLauncher broker, RunOptions options, int count, int parallel)
    {
        var runId = Guid.NewGuid().ToString("N")[..8];
        var next = -1;
        var workers = new Task[parallel];
        for (var w = 0; w < parallel; w++)
        {
            workers[w] = Task.Run(async () =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < count)
                {
                    var user = $"warm-{runId}-{i % 500}";
                    try
                    {
                        using var c = await RawConnection.ConnectAsync(broker.TcpEndPoint, options.SourceAddress(broker.TcpEndPoint, i), 256, CancellationToken.None).ConfigureAwait(false);
                        var connack = await c.LoginAsync(Wire.Connect(user, "d1", broker.Token(user, "d1"), 0, 1800), CancellationToken.None).ConfigureAwait(false);
                        if (connack.Reason == ReasonCode.Success)
                        {
                            c.Close();
                        }
                    }
                    catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException)
                    {
                    }
                }
            });
        }

        await Task.WhenAll(workers).ConfigureAwait(false);
    }
}
