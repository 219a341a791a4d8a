using System.Text.Json;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Mqtt.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Mqtt.Tests;

/// <summary>A native device and MQTT devices (paho, conformance/chat_peer.py) in the same conversation.</summary>
public sealed class ChatInteropTests(MqttBrokerFixture fixture) : IClassFixture<MqttBrokerFixture>
{
    private sealed record Received(ulong Seq, string Sender, string Body);

    private static Received Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        return new((ulong)r.GetProperty("seq").GetInt64(), r.GetProperty("sender").GetString()!, r.GetProperty("body").GetString()!);
    }

    [Fact]
    public async Task A_native_and_an_MQTT_device_see_the_same_messages_in_the_same_order_with_receipts()
    {
        const int count = 20;
        var broker = fixture.Broker;
        var (native, mqtt) = ("nat-" + Guid.NewGuid().ToString("N")[..6], "mq-" + Guid.NewGuid().ToString("N")[..6]);
        await using var alice = await broker.Broker.LoginAsync(native, "phone");

        using var phone = Tools.Start(Tools.Python,
            [Tools.Script("chat_peer.py"), "phone", broker.Host, broker.Port, mqtt, "mqttphone", broker.Token(mqtt), native, count.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        var stderr = phone.StandardError.ReadToEndAsync();
        Assert.Equal("ready", await phone.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)));

        // Both send at once: the conversation's order is the broker's.
        for (var i = 0; i < count; i++)
        {
            await alice.SendAsync(new Send { ClientMsgId = (ulong)i + 1, ToUserId = mqtt, Body = ByteString.CopyFromUtf8($"{native}-{i}") });
        }

        var nativeView = new SortedDictionary<ulong, Received>();
        var sentSeqs = new List<ulong>();
        ulong deliveredUpTo = 0;
        while (sentSeqs.Count < count || nativeView.Count < 2 * count || deliveredUpTo < sentSeqs.Max())
        {
            switch (await alice.ReceiveAnyAsync(TimeSpan.FromSeconds(20)))
            {
                case Sent s:
                    sentSeqs.Add(s.Seq);
                    nativeView[s.Seq] = new(s.Seq, native, $"{native}-{s.ClientMsgId - 1}");
                    break;
                case Deliver d:
                    nativeView[d.Seq] = new(d.Seq, d.SenderUserId, d.Body.ToStringUtf8());
                    break;
                case Receipt r when r.Kind == ReceiptKind.Delivered && r.ReaderUserId == mqtt:
                    deliveredUpTo = Math.Max(deliveredUpTo, r.UpToSeq); // the MQTT device's PUBACKs, as ACK
                    break;
                case null:
                    Assert.Fail("the native device's connection closed");
                    break;
            }
        }

        var phoneLines = new List<Received>();
        while (await phone.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)) is { } line)
        {
            phoneLines.Add(Parse(line));
        }

        await phone.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(phone.ExitCode == 0, await stderr);

        // Gapless, one order: seqs 1..2N, each side's messages in the order sent.
        Assert.Equal(Enumerable.Range(1, 2 * count).Select(i => (ulong)i), nativeView.Keys);
        Assert.Equal(sentSeqs.Order(), sentSeqs);
        // The MQTT phone got exactly the native device's messages, in seq order, with the same seqs.
        Assert.Equal(nativeView.Values.Where(r => r.Sender == native).ToList(), phoneLines);

        // A second MQTT device of the same user resumes its persistent session from its stored cursor (nothing yet):
        // it sees the whole conversation, both sides, in the native device's order.
        var expected = Path.GetTempFileName();
        await File.WriteAllTextAsync(expected, Tools.Lines(nativeView.Values.Select(r => r.Body)));
        var (code, stdout, err) = await Tools.RunAsync(Tools.Python,
            [Tools.Script("chat_peer.py"), "observer", broker.Host, broker.Port, mqtt, "mqtttablet", broker.Token(mqtt), expected], TimeSpan.FromSeconds(60));
        File.Delete(expected);
        Assert.True(code == 0, err);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("all", lines[^1]);
        Assert.Equal(nativeView.Values.ToList(), lines[..^1].Select(Parse).ToList());
    }
}
