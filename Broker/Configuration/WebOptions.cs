namespace ChatBroker.Broker.Configuration;

/// <summary>
/// The <c>web.*</c> settings: the web chat (clients/web, embedded in the broker) served on the WebSocket listener's
/// Kestrel beside <c>/chat</c>, so the page and its WebSocket share one origin.
/// </summary>
public sealed class WebOptions
{
    public bool Enabled { get; set; }
}
