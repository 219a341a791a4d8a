using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Messaging;
using ChatBroker.Broker.Observability;
using ChatBroker.Tokens;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Sessions;

/// <summary>What every device session shares: settings, the messaging core, the registry, the token secret,
/// presence, typing and the key directory.</summary>
public sealed class BrokerContext(
    BrokerOptions options,
    ChatService chat,
    GroupService groups,
    ConversationDirectory directory,
    SessionRegistry registry,
    TokenSecret secret,
    BrokerMetrics metrics,
    TimeProvider clock,
    ILoggerFactory loggerFactory,
    PresenceService presence,
    TypingRelay typing,
    KeyDirectory keys)
{
    public BrokerOptions Options { get; } = options;
    public ChatService Chat { get; } = chat;
    public GroupService Groups { get; } = groups;
    public ConversationDirectory Directory { get; } = directory;
    public SessionRegistry Registry { get; } = registry;
    public TokenSecret Secret { get; } = secret;
    public BrokerMetrics Metrics { get; } = metrics;
    public TimeProvider Clock { get; } = clock;
    public PresenceService Presence { get; } = presence;
    public TypingRelay Typing { get; } = typing;
    public KeyDirectory Keys { get; } = keys;
    public ILogger Logger { get; } = loggerFactory.CreateLogger("ChatBroker.Session");
    internal HandshakeDeadlines Handshakes { get; } = new(options.Tcp.ConnectTimeout);

    /// <summary>The current secret, the previous one during a rotation, and revoked devices.</summary>
    public TokenVerifier Tokens { get; } = new(secret, options.Auth);

    /// <summary>SETTINGS: the user's presence visibility and contacts.</summary>
    public UserSettingsService Settings { get; } = new(chat.Store, presence, metrics, options.Privacy);

    /// <summary>Per-user hourly limits (abuse.*).</summary>
    public AbuseLimits Abuse { get; } = new(options.Abuse, metrics, clock);
}
