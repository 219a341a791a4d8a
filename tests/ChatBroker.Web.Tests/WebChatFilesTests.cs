using System.Net;
using System.Net.WebSockets;
using System.Text.RegularExpressions;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Web.Tests.Infrastructure;

namespace ChatBroker.Web.Tests;

/// <summary>What the broker serves for the web chat, over plain HTTP (no browser).</summary>
public sealed partial class WebChatFilesTests
{
    private static readonly HttpClient Http = new();

    [Fact]
    public async Task The_page_its_modules_and_the_vendored_protobufjs_are_served_with_their_types_and_etags()
    {
        var (broker, web) = await WebChatBroker.StartAsync();
        await using var _ = broker;

        using var page = await Http.GetAsync(web);
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        Assert.Equal("nosniff", page.Headers.GetValues("X-Content-Type-Options").Single());
        var html = await page.Content.ReadAsStringAsync();
        Assert.Contains("<title>ChatBroker web chat</title>", html, StringComparison.Ordinal);

        foreach (var path in new[] { "app.js", "style.css", "js/index.js", "js/chat-client.js", "js/ws-transport.js", "js/chat-schema.js", "js/browser/protobufjs-light.js", "vendor/protobuf.light.min.js", "vendor/long.js" })
        {
            using var file = await Http.GetAsync(new Uri(web, path));
            Assert.True(file.StatusCode == HttpStatusCode.OK, $"{path}: {file.StatusCode}");
            Assert.Equal(path.EndsWith(".css", StringComparison.Ordinal) ? "text/css" : "text/javascript", file.Content.Headers.ContentType?.MediaType);
        }

        // Revalidation by ETag: an unchanged file is not sent again.
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(web, "app.js"));
        request.Headers.IfNoneMatch.Add(page.Headers.ETag is null ? throw new InvalidOperationException("no ETag") : (await Http.GetAsync(new Uri(web, "app.js"))).Headers.ETag!);
        using var notModified = await Http.SendAsync(request);
        Assert.Equal(HttpStatusCode.NotModified, notModified.StatusCode);

        // The Node-only transport is not served; unknown paths are 404, other methods 405; /chat is still the WebSocket.
        Assert.Equal(HttpStatusCode.NotFound, (await Http.GetAsync(new Uri(web, "js/tcp-transport.js"))).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await Http.GetAsync(new Uri(web, "nope.html"))).StatusCode);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, (await Http.PostAsync(web, new StringContent("x"))).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await Http.GetAsync(new Uri(web, "chat"))).StatusCode);
    }

    [Fact]
    public async Task The_page_s_own_origin_may_open_the_websocket_whatever_ws_allowed_origins_lists()
    {
        var (broker, web) = await WebChatBroker.StartAsync("--set", "ws.allowed_origins=https://chat.example");
        await using var _ = broker;
        var chat = new Uri($"ws://{web.Authority}/chat");

        using (var sameOrigin = new ClientWebSocket())
        {
            sameOrigin.Options.SetRequestHeader("Origin", $"http://{web.Authority}");
            await sameOrigin.ConnectAsync(chat, CancellationToken.None).WaitAsync(WebChatBroker.Timeout);
            Assert.Equal(WebSocketState.Open, sameOrigin.State);
        }

        using var otherSite = new ClientWebSocket();
        otherSite.Options.SetRequestHeader("Origin", "https://evil.example");
        otherSite.Options.CollectHttpResponseDetails = true;
        await Assert.ThrowsAsync<WebSocketException>(() => otherSite.ConnectAsync(chat, CancellationToken.None).WaitAsync(WebChatBroker.Timeout));
        Assert.Equal(HttpStatusCode.Forbidden, otherSite.HttpStatusCode);
    }

    [Fact]
    public async Task Without_web_enabled_the_websocket_listener_serves_no_page()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "ws.listen=127.0.0.1:0");
        var line = await broker.Process.WaitForLineAsync(WsLine()).WaitAsync(WebChatBroker.Timeout);
        using var response = await Http.GetAsync(new Uri($"http://{line.Groups[1].Value}/"));
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.DoesNotContain("Web chat on", broker.Process.Output, StringComparison.Ordinal);
    }

    [GeneratedRegex(@"WebSocket listening on ws://(\S+)/chat")]
    private static partial Regex WsLine();
}
