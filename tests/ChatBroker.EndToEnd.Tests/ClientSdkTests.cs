using System.Diagnostics;
using System.Net;
using System.Text;
using ChatBroker.Client;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>The .NET client SDK and the CLI against the real broker process.</summary>
public sealed class ClientSdkTests
{
    private static ChatClient Client(TestBroker broker, string user, string device, EndPoint? endPoint = null) => new(new ChatClientOptions
    {
        EndPoint = endPoint ?? broker.Process.TcpEndPoint,
        UserId = user,
        DeviceId = device,
        TokenProvider = _ => ValueTask.FromResult(broker.Token(user, device)),
        Reconnect = new ReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(500) },
    });

    private static async Task<ReceivedMessage> NextAsync(ChatClient client) =>
        await client.Messages.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));

    [Fact]
    public async Task Sdk_clients_exchange_messages_and_receipts()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var alice = Client(broker, "alice", "phone");
        await using var bob = Client(broker, "bob", "phone");
        await alice.ConnectAsync();
        await bob.ConnectAsync();

        var sends = Enumerable.Range(1, 200).Select(i => alice.SendAsync("bob", Encoding.UTF8.GetBytes("m" + i))).ToList();
        var sent = await Task.WhenAll(sends);

        Assert.Equal(Enumerable.Range(1, 200).Select(i => (ulong)i), sent.Select(s => s.Seq));
        for (var i = 1; i <= 200; i++)
        {
            var m = await NextAsync(bob);
            Assert.Equal((ulong)i, m.Seq);
            Assert.Equal("m" + i, Encoding.UTF8.GetString(m.Body.Span));
        }

        await bob.ReadAsync(sent[0].ConversationId, 200);
        var deadline = Stopwatch.StartNew();
        var sawRead = false;
        while (!sawRead && deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            var r = await alice.Receipts.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));
            sawRead = r.Kind == ReceiptKind.Read && r.UpToSeq == 200 && r.ReaderUserId == "bob";
        }

        Assert.True(sawRead);
    }

    [Fact]
    public async Task Sdk_client_reconnects_and_resumes_across_a_broker_crash_without_loss_or_duplicates()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-sdk-" + Guid.NewGuid().ToString("N"));
        int port;
        using (var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        var fixedPort = new[] { "--set", $"tcp.listen=127.0.0.1:{port}" };
        var endPoint = new IPEndPoint(IPAddress.Loopback, port);
        try
        {
            var first = await TestBroker.StartAsync(dataDir, fixedPort);
            await using var alice = Client(first, "alice", "phone", endPoint);
            await using var bob = Client(first, "bob", "phone", endPoint);
            await alice.ConnectAsync();
            await bob.ConnectAsync();
            for (var i = 1; i <= 50; i++)
            {
                await alice.SendAsync("bob", Encoding.UTF8.GetBytes("before " + i));
            }

            for (var i = 1; i <= 50; i++)
            {
                Assert.Equal((ulong)i, (await NextAsync(bob)).Seq);
            }

            await first.Process.KillAsync();
            await first.DisposeAsync();

            // Sends made while the broker is down wait in the SDK and go out after it reconnects.
            var pending = Enumerable.Range(51, 50).Select(i => alice.SendAsync("bob", Encoding.UTF8.GetBytes("after " + i))).ToList();
            await using var second = await TestBroker.StartAsync(dataDir, fixedPort);
            var sent = await Task.WhenAll(pending).WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal(Enumerable.Range(51, 50).Select(i => (ulong)i), sent.Select(s => s.Seq));

            for (var i = 51; i <= 100; i++)
            {
                var m = await NextAsync(bob);
                Assert.Equal((ulong)i, m.Seq); // nothing repeated from before the crash, nothing missing
                Assert.Equal("after " + i, Encoding.UTF8.GetString(m.Body.Span));
            }
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }

    [Fact]
    public async Task Cli_send_and_listen_talk_through_the_broker()
    {
        await using var broker = await TestBroker.StartAsync();
        var common = new[] { "--set", "node.data_dir=" + broker.Process.DataDir, "--set", $"tcp.listen={broker.Process.TcpEndPoint}", "--set", "admin.listen=127.0.0.1:0" };

        var (exit, stdout, stderr) = await BrokerProcess.RunCliAsync(["send", "--user", "alice", "--to", "bob", "hello from the cli", .. common]);
        Assert.True(exit == 0, stderr);
        Assert.Contains("seq=1", stdout, StringComparison.Ordinal);

        using var listen = BrokerProcess.StartDotnet(BrokerProcess.BrokerDll, ["listen", "--user", "bob", .. common], out var cwd);
        var line = await listen.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Contains("from=alice/cli: hello from the cli", line, StringComparison.Ordinal);
        listen.Kill(entireProcessTree: true);
        await listen.WaitForExitAsync();
        Directory.Delete(cwd, recursive: true);
    }

    // Issue 18: the SDK's settings API, read state across devices, and DEVICE_REVOKED as the end of the client.
    [Fact]
    public async Task Sdk_settings_read_sync_and_a_revocation_that_ends_the_client_for_good()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var phone = Client(broker, "alice", "phone");
        await using var laptop = Client(broker, "alice", "laptop");
        await using var bob = Client(broker, "bob", "phone");
        await phone.ConnectAsync();
        await laptop.ConnectAsync();
        await bob.ConnectAsync();

        var settings = await phone.SettingsAsync(PresenceVisibility.Contacts, addContacts: ["bob", "carol"]);
        Assert.Equal((PresenceVisibility.Contacts, 2U), (settings.PresenceVisibility, settings.ContactCount));
        settings = await laptop.SettingsAsync(removeContacts: ["carol"]);
        Assert.Equal((PresenceVisibility.Contacts, 1U), (settings.PresenceVisibility, settings.ContactCount));
        var refused = await Assert.ThrowsAsync<ChatClientException>(() => laptop.SettingsAsync(addContacts: Enumerable.Range(0, 5001).Select(i => "u" + i)));
        Assert.Equal(ReasonCode.BadRequest, refused.Reason);

        var sent = await bob.SendAsync("alice", Encoding.UTF8.GetBytes("hi"));
        await NextAsync(phone);
        await phone.ReadAsync(sent.ConversationId, sent.Seq);
        ReceivedReceipt synced;
        do
        {
            synced = await laptop.Receipts.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        }
        while (synced.ReaderDeviceId is null);
        Assert.Equal(("alice", "phone", sent.Seq), (synced.ReaderUserId, synced.ReaderDeviceId, synced.UpToSeq));

        var (exit, _, stderr) = await BrokerProcess.RunCliAsync(["device", "revoke", "--user", "alice", "--device", "phone", "--admin", broker.Process.AdminEndPoint.ToString()]);
        Assert.True(exit == 0, stderr);
        ConnectionEvent end;
        do
        {
            end = await phone.ConnectionEvents.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        }
        while (end.State != ChatConnectionState.Closed);
        Assert.Equal(ReasonCode.DeviceRevoked, end.Reason);
        Assert.Equal(ChatConnectionState.Closed, phone.State); // no reconnect: the device is logged out
        Assert.Equal(ChatBroker.Protocol.ClientAction.GiveUp, ChatBroker.Protocol.ReasonCodes.RecommendedAction(ReasonCode.DeviceRevoked));
    }
}
