using System.Collections;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Transport;

namespace ChatBroker.Broker.Tests.Configuration;

public sealed class WebSettingsTests
{
    private static readonly IDictionary NoEnvironment = new Hashtable();

    [Fact]
    public void The_web_chat_is_off_by_default_and_needs_the_websocket_listener()
    {
        Assert.False(BrokerConfiguration.Load(null, [], NoEnvironment).Options.Web.Enabled);
        Assert.True(BrokerConfiguration.Load(null, ["ws.listen=127.0.0.1:7885", "web.enabled=true"], NoEnvironment).Options.Web.Enabled);

        var refused = Assert.Throws<BrokerConfigurationException>(() => BrokerConfiguration.Load(null, ["web.enabled=true"], NoEnvironment));
        Assert.Contains(refused.Errors, e => e.Contains("web.enabled needs ws.listen", StringComparison.Ordinal));
    }

    [Fact]
    public void The_web_chat_files_are_embedded_with_the_client_modules_and_without_the_node_transport()
    {
        var files = WebChatFiles.Load();

        Assert.True(files.TryGet(new Microsoft.AspNetCore.Http.PathString("/"), out var index));
        Assert.Equal("text/html; charset=utf-8", index.ContentType);
        foreach (var path in new[] { "/app.js", "/style.css", "/js/index.js", "/js/ws-transport.js", "/js/browser/protobufjs-light.js", "/vendor/protobuf.light.min.js", "/vendor/long.js" })
        {
            Assert.True(files.TryGet(new Microsoft.AspNetCore.Http.PathString(path), out _), path);
        }

        Assert.False(files.TryGet(new Microsoft.AspNetCore.Http.PathString("/js/tcp-transport.js"), out _));
        Assert.DoesNotContain(files.Paths, p => p.EndsWith(".md", StringComparison.Ordinal));
    }
}
