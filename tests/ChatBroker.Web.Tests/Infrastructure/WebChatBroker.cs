using System.Text.RegularExpressions;
using ChatBroker.EndToEnd.Tests.Infrastructure;

namespace ChatBroker.Web.Tests.Infrastructure;

/// <summary>Starts the real broker process with the WebSocket listener on port 0 and the web chat on it.</summary>
public static partial class WebChatBroker
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>The broker and the web chat's address (http://127.0.0.1:port/, or https:// with ws.tls).</summary>
    public static async Task<(TestBroker Broker, Uri Web)> StartAsync(params string[] extraArgs)
    {
        var broker = await TestBroker.StartAsync(null, [
            "--set", "ws.listen=127.0.0.1:0",
            "--set", "web.enabled=true",
            // Presence changes are published at once, so a test sees them without waiting out a debounce.
            "--set", "presence.debounce=0s",
            .. extraArgs]);
        try
        {
            var line = await broker.Process.WaitForLineAsync(WebLine()).WaitAsync(Timeout);
            return (broker, new Uri(line.Groups[1].Value));
        }
        catch
        {
            await broker.DisposeAsync();
            throw;
        }
    }

    [GeneratedRegex(@"Web chat on (https?://\S+/)")]
    private static partial Regex WebLine();
}
