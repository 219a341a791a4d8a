using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.RegularExpressions;
using ChatBroker.Client;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using ChatBroker.Web.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace ChatBroker.Web.Tests;

/// <summary>
/// The web chat over https/wss (ws.tls) with a .NET SDK device over TLS (tls.listen), both on the tls.* certificate,
/// and that certificate replaced while they are connected.
/// </summary>
[Collection(BrowserCollection.Name)]
public sealed partial class WssTests(BrowserFixture browser) : IDisposable
{
    private static readonly TimeSpan Timeout = WebChatBroker.Timeout;
    private readonly TestCertificates _certificates = new();

    public void Dispose() => _certificates.Dispose();

    [Fact]
    public async Task A_browser_over_wss_and_the_sdk_over_tls_chat_both_ways_with_receipts_and_a_certificate_reload_keeps_both_connected()
    {
        var old = _certificates.Issue("chatbroker-web-old");
        var (broker, web) = await WebChatBroker.StartAsync(
            "--set", "tls.listen=127.0.0.1:0",
            "--set", "ws.tls=true",
            "--set", $"tls.certificate_file={_certificates.CertificateFile}",
            "--set", $"tls.key_file={_certificates.KeyFile}");
        await using var _ = broker;
        Assert.Equal("https", web.Scheme);
        var tls = IPEndPoint.Parse((await broker.Process.WaitForLineAsync(TlsLine()).WaitAsync(Timeout)).Groups[1].Value);

        // The certificate is self-signed for the test: the browser is told to accept it, and the page's response says which one it got.
        await using var alice = await ChatPage.OpenAsync(browser.Browser, web, ignoreHttpsErrors: true);
        Assert.Equal("chatbroker-web-old", (await alice.FirstResponse!.SecurityDetailsAsync())?.SubjectName);
        await using var bob = new ChatClient(new ChatClientOptions
        {
            EndPoint = tls,
            UserId = "bob",
            DeviceId = "phone",
            TokenProvider = _ => ValueTask.FromResult(broker.Token("bob", "phone")),
            Tls = new ChatClientTlsOptions { CaFile = _certificates.CaFile, ServerName = "localhost" },
            Reconnect = new ReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(500) },
        });
        await bob.ConnectAsync();
        await alice.SignInAsync(broker.Token("alice", "web"));

        // Browser (wss) -> SDK (tls): delivered, then read.
        await alice.OpenDirectChatAsync("bob");
        await alice.SendAsync("hello over wss");
        var received = await bob.Messages.ReadAsync().AsTask().WaitAsync(Timeout);
        Assert.Equal("hello over wss", Encoding.UTF8.GetString(received.Body.Span));
        Assert.Equal("alice", received.SenderUserId);
        await alice.ExpectTicksAsync("hello over wss", "delivered");
        await bob.ReadAsync(received.ConversationId, received.Seq);
        await alice.ExpectTicksAsync("hello over wss", "read");

        // SDK (tls) -> browser (wss): alice has the chat open, so the page reads it and bob gets the READ receipt.
        var sent = await bob.SendAsync("alice", Encoding.UTF8.GetBytes("hello over tls"));
        Assert.Equal(received.ConversationId, sent.ConversationId);
        await alice.ExpectMessageAsync("hello over tls");
        await ReceiptsAsync(bob, sent.ConversationId, sent.Seq, ReceiptKind.Delivered, ReceiptKind.Read);

        // Replace the certificate (the files change; the broker reloads them by itself).
        var mark = broker.Process.LineCount;
        var renewed = _certificates.Issue("chatbroker-web-new");
        await broker.Process.WaitForLineAsync(new Regex("TLS certificate loaded: .*thumbprint " + renewed.Thumbprint), mark).WaitAsync(Timeout);
        Assert.NotEqual(old.Thumbprint, renewed.Thumbprint);

        // New connections get the new certificate, on both listeners and in a new browser.
        Assert.Equal(renewed.Thumbprint, await ServerThumbprintAsync(new IPEndPoint(IPAddress.Loopback, web.Port)));
        Assert.Equal(renewed.Thumbprint, await ServerThumbprintAsync(tls));
        await using (var carol = await ChatPage.OpenAsync(browser.Browser, web, ignoreHttpsErrors: true))
        {
            Assert.Equal("chatbroker-web-new", (await carol.FirstResponse!.SecurityDetailsAsync())?.SubjectName);
            await carol.SignInAsync(broker.Token("carol", "web"));
            await carol.OpenDirectChatAsync("alice");
            await carol.SendAsync("hi alice, on the new certificate");
            await Expect(alice.Conversation("carol")).ToHaveCountAsync(1);
        }

        // The open connections were kept: the same WebSocket (one connection in the page's life) and the same TLS session.
        await alice.SendAsync("after the reload, from the browser");
        var after = await bob.Messages.ReadAsync().AsTask().WaitAsync(Timeout);
        Assert.Equal("after the reload, from the browser", Encoding.UTF8.GetString(after.Body.Span));
        var reply = await bob.SendAsync("alice", Encoding.UTF8.GetBytes("after the reload, from the phone"));
        await alice.ExpectMessageAsync("after the reload, from the phone");
        await ReceiptsAsync(bob, reply.ConversationId, reply.Seq, ReceiptKind.Read);
        await alice.ExpectTicksAsync("after the reload, from the browser", "delivered");
        await Expect(alice.Page.Locator("body")).ToHaveAttributeAsync("data-connections", "1");
        Assert.Equal(ChatConnectionState.Connected, bob.State);
        while (bob.ConnectionEvents.TryRead(out var change))
        {
            Assert.True(change.State is ChatConnectionState.Connecting or ChatConnectionState.Connected, $"bob's connection changed: {change}");
        }
        await alice.ScreenshotAsync("wss-alice.png");
    }

    /// <summary>Waits for alice's receipts of these kinds covering <paramref name="seq"/>, in any order (the page sends READ before its ACK).</summary>
    private static async Task ReceiptsAsync(ChatClient client, ulong conversationId, ulong seq, params ReceiptKind[] kinds)
    {
        var missing = new HashSet<ReceiptKind>(kinds);
        while (missing.Count > 0)
        {
            var receipt = await client.Receipts.ReadAsync().AsTask().WaitAsync(Timeout);
            if (receipt.ConversationId == conversationId && receipt.UpToSeq >= seq && missing.Remove(receipt.Kind))
            {
                Assert.Equal("alice", receipt.ReaderUserId);
            }
        }
    }

    private static async Task<string> ServerThumbprintAsync(IPEndPoint endPoint)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(endPoint);
        await using var ssl = new SslStream(new NetworkStream(socket, ownsSocket: false));
        string? thumbprint = null;
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            RemoteCertificateValidationCallback = (_, certificate, _, _) =>
            {
                thumbprint = certificate is null ? null : new X509Certificate2(certificate).Thumbprint;
                return true;
            },
        }).WaitAsync(Timeout);
        return thumbprint!;
    }

    [GeneratedRegex(@"Native protocol over TLS listening on (\S+)")]
    private static partial Regex TlsLine();
}
