using ChatBroker.Mqtt.Tests.Infrastructure;

namespace ChatBroker.Mqtt.Tests;

/// <summary>What PUBACK promises on a chat topic: the message is durable (storage.durability = "sync").</summary>
public sealed class MqttDurabilityTests
{
    [Fact]
    public async Task A_SIGKILL_during_QoS1_load_loses_no_PUBACKed_message()
    {
        Tools.RequireMqttClients();
        const int count = 20_000; // far more than are acked before the kill, even on a quiet machine (below paho's 65,535 mids)
        const int killAfter = 400;
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-mqtt-crash-" + Guid.NewGuid().ToString("N"));
        var acked = new HashSet<int>();
        try
        {
            await using (var broker = await MqttTestBroker.StartAsync(dataDir))
            {
                using var publisher = Tools.Start(Tools.Python,
                    [Tools.Script("chat_peer.py"), "publisher", broker.Host, broker.Port, "writer", "loadphone", broker.Token("writer"), "reader",
                     count.ToString(System.Globalization.CultureInfo.InvariantCulture), "32"]);
                var stderr = publisher.StandardError.ReadToEndAsync();
                var killed = false;
                while (await publisher.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)) is { } line)
                {
                    if (line.StartsWith("acked ", StringComparison.Ordinal))
                    {
                        acked.Add(int.Parse(line.AsSpan(6), System.Globalization.CultureInfo.InvariantCulture));
                    }

                    if (!killed && acked.Count >= killAfter)
                    {
                        // Messages are in flight now: kill -9 with no chance to flush anything.
                        await broker.Broker.Process.KillAsync();
                        killed = true;
                    }

                    if (line == "done")
                    {
                        break;
                    }
                }

                Assert.True(killed, "the broker was not killed: " + await stderr);
                publisher.Kill(entireProcessTree: true);
                await publisher.WaitForExitAsync();
            }

            Assert.True(acked.Count < count, "every message was acknowledged before the kill: the test proved nothing");
            await using var restarted = await MqttTestBroker.StartAsync(dataDir);
            var expected = Path.Combine(dataDir, "expected.txt");
            await File.WriteAllTextAsync(expected, Tools.Lines(acked.Select(i => $"m-{i}")));
            var (code, stdout, err) = await Tools.RunAsync(Tools.Python,
                [Tools.Script("chat_peer.py"), "observer", restarted.Host, restarted.Port, "reader", "readerphone", restarted.Token("reader"), expected],
                TimeSpan.FromSeconds(90));
            Assert.True(code == 0, err);
            var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(lines[^1] == "all", $"{lines[^1]} of {acked.Count} acknowledged messages");
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
