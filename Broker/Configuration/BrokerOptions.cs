using System.Net;

namespace ChatBroker.Broker.Configuration;

/// <summary>
/// The broker's effective configuration, bound from <c>broker.toml</c>, environment variables and
/// command-line flags by <see cref="BrokerConfiguration"/>. Every property here has exactly one entry in
/// <see cref="SettingsSchema"/>, which carries its key, default, description and validation.
/// </summary>
public sealed class BrokerOptions
{
    public NodeOptions Node { get; } = new();
    public TcpOptions Tcp { get; } = new();
    public TlsOptions Tls { get; } = new();
    public WsOptions Ws { get; } = new();
    public WebOptions Web { get; } = new();
    public MqttOptions Mqtt { get; } = new();
    public AdminOptions Admin { get; } = new();
    public AuthOptions Auth { get; } = new();
    public StorageSettings Storage { get; } = new();
    public RetentionOptions Retention { get; } = new();
    public LogOptions Log { get; } = new();
    public ShutdownOptions Shutdown { get; } = new();
    public SessionOptions Session { get; } = new();
    public LimitsOptions Limits { get; } = new();
    public PushOptions Push { get; } = new();
    public PresenceOptions Presence { get; } = new();
    public KeysOptions Keys { get; } = new();
    public GroupsOptions Groups { get; } = new();
    public FanoutOptions Fanout { get; } = new();
    public ClusterSettings Cluster { get; } = new();

    // Issue 18 (hardening): abuse limits and privacy.
    public AbuseOptions Abuse { get; } = new();
    public PrivacyOptions Privacy { get; } = new();
}

/// <summary>The <c>abuse.*</c> settings: per-user hourly limits a public service needs (0 turns one off).</summary>
public sealed class AbuseOptions
{
    public int NewConversationsPerHour { get; set; } = 1000;
    public int GroupCreationsPerHour { get; set; } = 100;
    public int MembershipChangesPerHour { get; set; } = 2000;
    public int PrekeyFetchesPerHour { get; set; } = 2000;
}

/// <summary>The <c>privacy.*</c> settings.</summary>
public sealed class PrivacyOptions
{
    public int MaxContacts { get; set; } = 5000;
}

/// <summary>The <c>cluster.*</c> settings; the host maps them onto ChatBroker.Cluster's ClusterOptions.</summary>
public sealed class ClusterSettings
{
    /// <summary>Comma-separated etcd client URLs; empty means a single node (cluster mode off).</summary>
    public string EtcdEndpoints { get; set; } = "";
    public string EtcdPrefix { get; set; } = "/chatbroker";
    public TimeSpan EtcdTimeout { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>Empty means node.name.</summary>
    public string NodeId { get; set; } = "";
    public TimeSpan LeaseTtl { get; set; } = TimeSpan.FromSeconds(5);
    public IPEndPoint MeshListen { get; set; } = new(IPAddress.Loopback, 7890);
    /// <summary>Empty means mesh_listen.</summary>
    public string AdvertiseMesh { get; set; } = "";
    /// <summary>Empty means tcp.listen.</summary>
    public string AdvertiseClient { get; set; } = "";
    public int VirtualNodes { get; set; } = 128;
    public int ReplicationFactor { get; set; } = 3;
    /// <summary>A node not in the map joins it on start (the first one writes the first map).</summary>
    public bool AutoJoin { get; set; } = true;

    // Routing between nodes (ChatBroker.Broker.Cluster.ClusterRoutingOptions).
    public TimeSpan ForwardTimeout { get; set; } = TimeSpan.FromSeconds(5);
    public TimeSpan ReadTimeout { get; set; } = TimeSpan.FromSeconds(5);
    public TimeSpan RetryAfter { get; set; } = TimeSpan.FromSeconds(1);
    public int ForwardBatch { get; set; } = 64;
    public int MaxStaleRetries { get; set; } = 3;

    public TimeSpan LeaseMargin { get; set; } = TimeSpan.FromSeconds(1);

    public TimeSpan FailoverBackupDelay { get; set; } = TimeSpan.FromSeconds(2);

    public TimeSpan FailedNodeTimeout { get; set; } = TimeSpan.FromMinutes(15);

    public TimeSpan ReforwardWindow { get; set; } = TimeSpan.FromMinutes(2);

    // Replication (ChatBroker.Broker.Cluster.ClusterRoutingOptions).
    public TimeSpan ReplicationTimeout { get; set; } = TimeSpan.FromSeconds(2);

    public int ReplicationMaxQueueBatches { get; set; } = 4096;

    // The mesh's bounds (ChatBroker.Cluster.Mesh.MeshOptions).
    public int MeshMaxBatchMessages { get; set; } = 64;
    public long MeshMaxBatchBytes { get; set; } = 512 * 1024;
    public long MeshMaxMessageBytes { get; set; } = 128 * 1024;
    public long MeshMaxReplyBytes { get; set; } = 256 * 1024;
    public long MeshMaxQueueBytes { get; set; } = 8 * 1024 * 1024;
    public int MeshMaxQueueMessages { get; set; } = 16 * 1024;
    public int MeshMaxLinks { get; set; } = 1024;
    public int MeshMaxCachedResults { get; set; } = 16 * 1024;
    public TimeSpan MeshReconnectInitialDelay { get; set; } = TimeSpan.FromMilliseconds(50);
    public TimeSpan MeshReconnectMaxDelay { get; set; } = TimeSpan.FromSeconds(5);
}

public sealed class PresenceOptions
{
    /// <summary>A user's status change is published only after it has held this long (coalesces flapping).</summary>
    public TimeSpan Debounce { get; set; } = TimeSpan.FromSeconds(2);
    public int MaxSubscriptions { get; set; } = 1000;
}

public sealed class KeysOptions
{
    public int LowWatermark { get; set; } = 10;
    public int MaxOneTimePrekeys { get; set; } = 1000;

    /// <summary>At most one low-supply notice per device in this time (fetches can come by the dozen).</summary>
    public TimeSpan LowNoticeInterval { get; set; } = TimeSpan.FromMinutes(1);
}

public sealed class GroupsOptions
{
    public int MaxMembers { get; set; } = 1024;
}

public sealed class FanoutOptions
{
    public int WriteThreshold { get; set; } = 100;
}

public sealed class SessionOptions
{
    public TimeSpan DefaultKeepalive { get; set; } = TimeSpan.FromSeconds(60);
    public TimeSpan MinKeepalive { get; set; } = TimeSpan.FromSeconds(10);
    public TimeSpan MaxKeepalive { get; set; } = TimeSpan.FromMinutes(30);
    public int MaxDevicesPerUser { get; set; } = 10;
    public int MaxOutboundBytes { get; set; } = 4 * 1024 * 1024;
    public int MaxOutboundFrames { get; set; } = 50_000;
    public int MaxInflightSends { get; set; } = 1024;
    public int ResumeBatch { get; set; } = 256;
    public int MaxResumeReceiptConversations { get; set; } = 256;
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(5);
    public TimeSpan StallTimeout { get; set; } = TimeSpan.FromSeconds(30);
}

public sealed class LimitsOptions
{
    public int SendsPerSecond { get; set; } = 1000;
    public long BytesPerSecond { get; set; } = 8L * 1024 * 1024;
    public int TypingPerSecond { get; set; } = 2;
    public int KeyFetchesPerSecond { get; set; } = 10;
}

public enum NotifierKind
{
    Log,
    Webhook,
}

public sealed class PushOptions
{
    public NotifierKind Notifier { get; set; } = NotifierKind.Log;
    public string WebhookUrl { get; set; } = "";
    public TimeSpan WebhookTimeout { get; set; } = TimeSpan.FromSeconds(5);
    public TimeSpan MaxBackoff { get; set; } = TimeSpan.FromMinutes(5);
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(5);
}

public sealed class NodeOptions
{
    public string Name { get; set; } = "node1";
    public string DataDir { get; set; } = "./data";
}

public sealed class TcpOptions
{
    public IPEndPoint Listen { get; set; } = new(IPAddress.Loopback, 7883);
    public int MaxFrameBytes { get; set; } = 64 * 1024;
    public int MaxConnections { get; set; } = 1_000_000;
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);
    /// <summary>Socket continuations run on the socket event threads (one per core) instead of the thread pool.</summary>
    public bool InlineCompletions { get; set; } = true;
    /// <summary>Idle connections wait for data through the broker's own epoll loops (Transport/ReadinessPoller.cs), not .NET's per-socket receive state.</summary>
    public bool ReadinessPoller { get; set; } = true;
}

public sealed class AdminOptions
{
    public bool Enabled { get; set; } = true;
    public IPEndPoint Listen { get; set; } = new(IPAddress.Loopback, 7880);
}

public sealed class AuthOptions
{
    /// <summary>Empty means <c>&lt;data_dir&gt;/token.secret</c>, created on first start.</summary>
    public string SecretFile { get; set; } = "";
    /// <summary>Base64 secret given inline (e.g. from an environment variable); wins over the file.</summary>
    public string Secret { get; set; } = "";
    public TimeSpan DefaultTokenTtl { get; set; } = TimeSpan.FromDays(30);
    /// <summary>Token rotation: the secret being replaced, base64; tokens it signed are accepted until <see cref="PreviousSecretUntil"/>.</summary>
    public string PreviousSecret { get; set; } = "";
    /// <summary>Empty (null): the previous secret is not accepted at all.</summary>
    public DateTimeOffset? PreviousSecretUntil { get; set; }

    public string ResolveSecretFile(NodeOptions node) =>
        SecretFile.Length > 0 ? SecretFile : Path.Combine(node.DataDir, "token.secret");
}

public enum DurabilityMode
{
    Sync,
    Async,
}

public sealed class StorageSettings
{
    public DurabilityMode Durability { get; set; } = DurabilityMode.Sync;
    public int MaxBatchMessages { get; set; } = 1024;
    public long MaxBatchBytes { get; set; } = 4L * 1024 * 1024;
    public int QueueCapacity { get; set; } = 65_536;
    public long BlockCacheBytes { get; set; } = 64L * 1024 * 1024;

    public long WriteBufferBytes { get; set; } = 64L * 1024 * 1024;
    public TimeSpan IdempotencyWindow { get; set; } = TimeSpan.FromHours(24);
    public int IdempotencyCacheDevices { get; set; } = 100_000;
    public bool RocksDbInfoLog { get; set; }
}

public enum RetentionPolicy
{
    Keep,
    Days,
}

public sealed class RetentionOptions
{
    public RetentionPolicy Policy { get; set; } = RetentionPolicy.Days;
    public int Days { get; set; } = 30;
}

public enum LogFormat
{
    Console,
    Json,
}

public sealed class LogOptions
{
    public LogFormat Format { get; set; } = LogFormat.Console;
    public Microsoft.Extensions.Logging.LogLevel Level { get; set; } = Microsoft.Extensions.Logging.LogLevel.Information;
}

public sealed class ShutdownOptions
{
    public TimeSpan GracePeriod { get; set; } = TimeSpan.FromSeconds(10);
}
