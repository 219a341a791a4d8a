using System.Globalization;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Configuration;

public enum SettingKind
{
    String,
    Integer,
    Boolean,
    Duration,
    Endpoint,
    Choice,
}

/// <summary>
/// One configuration key: where it lives ("tcp.listen"), what it accepts, what it means, and how it reads
/// and writes <see cref="BrokerOptions"/>. The schema is the single list the binder, the unknown-key check,
/// <c>chatbroker config check</c> and the broker.toml test all walk, so a key cannot exist in one and not
/// the others.
/// </summary>
public sealed class Setting
{
    internal Setting(
        string key,
        SettingKind kind,
        string description,
        Func<BrokerOptions, string> get,
        Func<BrokerOptions, string, string?> set)
    {
        Key = key;
        ConfigKey = key.Replace('.', ':');
        Kind = kind;
        Description = description;
        Get = get;
        Set = set;
    }

    /// <summary>The dotted TOML key, e.g. <c>tcp.max_frame_bytes</c>.</summary>
    public string Key { get; }

    /// <summary>The Microsoft.Extensions.Configuration key, e.g. <c>tcp:max_frame_bytes</c>.</summary>
    public string ConfigKey { get; }

    /// <summary>The environment variable that overrides it, e.g. <c>CHATBROKER__TCP__MAX_FRAME_BYTES</c>.</summary>
    public string EnvironmentVariable => BrokerConfiguration.EnvironmentPrefix + ConfigKey.Replace(":", "__", StringComparison.Ordinal).ToUpperInvariant();

    public SettingKind Kind { get; }
    public string Description { get; }
    public bool Secret { get; init; }
    public IReadOnlyList<string> Choices { get; init; } = [];

    /// <summary>The current value, formatted the way broker.toml spells it (strings unquoted).</summary>
    public Func<BrokerOptions, string> Get { get; }

    /// <summary>Parses and stores a value; returns an error sentence, or null when it was accepted.</summary>
    public Func<BrokerOptions, string, string?> Set { get; }
}

public static class SettingsSchema
{
    public static IReadOnlyList<Setting> All { get; } = Build();

    private static readonly Dictionary<string, Setting> ByConfigKey =
        All.ToDictionary(s => s.ConfigKey, StringComparer.OrdinalIgnoreCase);

    public static Setting? Find(string configKey) => ByConfigKey.GetValueOrDefault(configKey);

    /// <summary>True when <paramref name="configKey"/> is a section that holds settings (e.g. "tcp").</summary>
    public static bool IsSection(string configKey)
    {
        foreach (var s in All)
        {
            if (s.ConfigKey.StartsWith(configKey + ":", StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }

        return false;
    }

    private static List<Setting> Build() =>
    [
        Str("node.name", "This node's name: shown in logs and metrics, and its identity in a cluster.",
            o => o.Node.Name, (o, v) => o.Node.Name = v, NonEmpty),
        Str("node.data_dir", "Directory for the message store and the token secret; created when missing.",
            o => o.Node.DataDir, (o, v) => o.Node.DataDir = v, NonEmpty),

        Endpoint("tcp.listen", "Address and port of the native TCP protocol listener.",
            o => o.Tcp.Listen, (o, v) => o.Tcp.Listen = v),
        Int("tcp.max_frame_bytes", "Largest frame a client may send, in bytes; a larger declared length closes the connection.",
            o => o.Tcp.MaxFrameBytes, (o, v) => o.Tcp.MaxFrameBytes = (int)v, 64, 16 * 1024 * 1024),
        Int("tcp.max_connections", "Connections beyond this many are refused at accept time.",
            o => o.Tcp.MaxConnections, (o, v) => o.Tcp.MaxConnections = (int)v, 1, 10_000_000),
        Duration("tcp.connect_timeout", "A new connection must send CONNECT within this time.",
            o => o.Tcp.ConnectTimeout, (o, v) => o.Tcp.ConnectTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(10)),
        Bool("tcp.inline_completions", "Handle received packets on the socket event threads (one per core) instead of handing each receive to the thread pool: fewer thread wake-ups per message. Applies to every socket of the process; read once at start.",
            o => o.Tcp.InlineCompletions, (o, v) => o.Tcp.InlineCompletions = v),
        Bool("tcp.readiness_poller", "Plain TCP connections (native protocol and MQTT) are accepted as bare descriptors and wait for their next bytes through the broker's own epoll loops (one per core) instead of a .NET Socket with a pending receive: about 1,000 bytes less per idle connection. Linux x64 only (elsewhere ignored); read once at start.",
            o => o.Tcp.ReadinessPoller, (o, v) => o.Tcp.ReadinessPoller = v),

        Str("tls.listen", "Address and port of the native protocol over TLS (1.2 or 1.3, ALPN \"chatbroker/1\"); empty: no TLS listener. Needs tls.certificate_file and tls.key_file.",
            o => o.Tls.Listen is { } ep ? SettingParsers.FormatEndpoint(ep) : "", (o, v) => o.Tls.Listen = v.Length == 0 ? null : SettingParsers.TryParseEndpoint(v, out var ep, out _) ? ep : null, OptionalEndpoint),
        Str("tls.certificate_file", "PEM file with the server certificate (then any intermediates). Reloaded on SIGHUP and when the file changes: new connections get the new certificate, open ones keep theirs.",
            o => o.Tls.CertificateFile, (o, v) => o.Tls.CertificateFile = v, null),
        Str("tls.key_file", "PEM file with the certificate's private key (unencrypted PKCS#8, PKCS#1 or SEC1); reloaded with the certificate.",
            o => o.Tls.KeyFile, (o, v) => o.Tls.KeyFile = v, null),
        Duration("tls.handshake_timeout", "A TLS connection must finish its handshake within this time, or it is closed and counted (chatbroker_tls_handshakes_total{result=\"timeout\"}).",
            o => o.Tls.HandshakeTimeout, (o, v) => o.Tls.HandshakeTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(10)),

        Str("ws.listen", "Address and port of the WebSocket listener (path /chat, binary messages carrying whole frames of the native protocol); empty: no WebSocket listener.",
            o => o.Ws.Listen is { } ep ? SettingParsers.FormatEndpoint(ep) : "", (o, v) => o.Ws.Listen = v.Length == 0 ? null : SettingParsers.TryParseEndpoint(v, out var ep, out _) ? ep : null, OptionalEndpoint),
        Bool("ws.tls", "Serve the WebSocket listener as wss:// with the tls.certificate_file certificate.",
            o => o.Ws.Tls, (o, v) => o.Ws.Tls = v),
        Str("ws.allowed_origins", "Comma-separated origins (scheme://host[:port]) browsers may open the WebSocket from; a request with another Origin gets HTTP 403. Empty: any origin. Requests without an Origin header (non-browser clients) are allowed.",
            o => o.Ws.AllowedOrigins, (o, v) => o.Ws.AllowedOrigins = v, AllowedOrigins),

        Bool("web.enabled", "Serve the web chat (static files built into the broker) on the ws.listen listener: open http://<ws.listen>/ (https:// with ws.tls) in a browser and sign in with a device token. Needs ws.listen.",
            o => o.Web.Enabled, (o, v) => o.Web.Enabled = v),
        // mqtt.* (Broker/Mqtt, docs/mqtt.md)
        Str("mqtt.listen", "Address and port of the MQTT 3.1.1/5.0 listener (e.g. 127.0.0.1:1883); empty: no MQTT listener. The password is a device token; chat/u/{user}, chat/g/{group} and inbox/{user}/# are chat messages, other topics behave as in any MQTT broker.",
            o => o.Mqtt.Listen is { } ep ? SettingParsers.FormatEndpoint(ep) : "", (o, v) => o.Mqtt.Listen = v.Length == 0 ? null : SettingParsers.TryParseEndpoint(v, out var ep, out _) ? ep : null, OptionalEndpoint),
        Str("mqtt.tls_listen", "Address and port of MQTT over TLS (e.g. 127.0.0.1:8883) with the tls.certificate_file certificate; empty: none.",
            o => o.Mqtt.TlsListen is { } ep ? SettingParsers.FormatEndpoint(ep) : "", (o, v) => o.Mqtt.TlsListen = v.Length == 0 ? null : SettingParsers.TryParseEndpoint(v, out var ep, out _) ? ep : null, OptionalEndpoint),
        Bool("mqtt.allow_anonymous", "Let MQTT clients without a password (token) connect, to the general topic space only (development and conformance testing).",
            o => o.Mqtt.AllowAnonymous, (o, v) => o.Mqtt.AllowAnonymous = v),
        Int("mqtt.max_packet_bytes", "Largest MQTT packet a client may send, in bytes; a larger declared length closes the connection (5.0: reason 0x95).",
            o => o.Mqtt.MaxPacketBytes, (o, v) => o.Mqtt.MaxPacketBytes = (int)v, 64, 16 * 1024 * 1024),
        Int("mqtt.max_inflight", "QoS 1/2 messages sent to one MQTT client and not yet acknowledged; more wait (chat: in the store, other topics: in the session queue).",
            o => o.Mqtt.MaxInflight, (o, v) => o.Mqtt.MaxInflight = (int)v, 1, 65535),
        Int("mqtt.max_queued_messages", "Messages of the general topic space queued for one MQTT session (offline, or its in-flight window full); beyond it new ones are dropped and counted.",
            o => o.Mqtt.MaxQueuedMessages, (o, v) => o.Mqtt.MaxQueuedMessages = (int)v, 0, 1_000_000),
        Int("mqtt.max_queued_bytes", "Bytes of messages queued for all MQTT sessions together (in memory, and in the store for persistent sessions); beyond it new ones are dropped and counted in chatbroker_mqtt_dropped_total{limit=\"max_queued_bytes\"}.",
            o => o.Mqtt.MaxQueuedBytes, (o, v) => o.Mqtt.MaxQueuedBytes = v, 0, 1L << 40),
        Int("mqtt.max_retained_messages", "Retained messages the broker keeps; a new retained topic beyond it is not retained (counted).",
            o => o.Mqtt.MaxRetainedMessages, (o, v) => o.Mqtt.MaxRetainedMessages = (int)v, 0, 10_000_000),
        Int("mqtt.max_subscriptions", "Topic filters one MQTT session may hold; more are refused in SUBACK (0x80 / 5.0: 0x97 quota exceeded).",
            o => o.Mqtt.MaxSubscriptions, (o, v) => o.Mqtt.MaxSubscriptions = (int)v, 1, 100_000),
        Int("mqtt.max_sessions", "MQTT sessions kept at once, connected or waiting out their expiry (every client id is one); a CONNECT that would create one more is refused (3.1.1: server unavailable, 5.0: 0x97 quota exceeded), counted in chatbroker_mqtt_connects_total{result=\"too_many_sessions\"}.",
            o => o.Mqtt.MaxSessions, (o, v) => o.Mqtt.MaxSessions = (int)v, 1, 10_000_000),
        Duration("mqtt.max_session_expiry", "Longest an offline persistent MQTT session (clean session false, or a 5.0 session expiry) is kept.",
            o => o.Mqtt.MaxSessionExpiry, (o, v) => o.Mqtt.MaxSessionExpiry = v, TimeSpan.Zero, TimeSpan.FromDays(365)),

        Bool("admin.enabled", "Serve the admin HTTP endpoint (/healthz, /readyz, /metrics).",
            o => o.Admin.Enabled, (o, v) => o.Admin.Enabled = v),
        Endpoint("admin.listen", "Address and port of the admin HTTP endpoint. Keep it off public interfaces.",
            o => o.Admin.Listen, (o, v) => o.Admin.Listen = v),

        Str("auth.secret_file", "File holding the token signing secret; empty means <data_dir>/token.secret, generated on first start with mode 0600.",
            o => o.Auth.SecretFile, (o, v) => o.Auth.SecretFile = v, null),
        Str("auth.secret", "The token signing secret itself, base64 (at least 32 bytes); wins over secret_file. Prefer the environment variable CHATBROKER__AUTH__SECRET to writing it here.",
            o => o.Auth.Secret, (o, v) => o.Auth.Secret = v, ValidSecret, secret: true),
        Duration("auth.default_token_ttl", "Lifetime of tokens made by `chatbroker token` when --ttl is not given.",
            o => o.Auth.DefaultTokenTtl, (o, v) => o.Auth.DefaultTokenTtl = v, TimeSpan.FromSeconds(1), TimeSpan.FromDays(3650)),
        // Issue 18 (hardening): token rotation.
        Str("auth.previous_secret", "Token rotation: the secret being replaced (base64). Tokens it signed are still accepted until auth.previous_secret_until; new tokens are signed with the current secret. Empty: none.",
            o => o.Auth.PreviousSecret, (o, v) => o.Auth.PreviousSecret = v, ValidSecret, secret: true),
        Str("auth.previous_secret_until", "End of the rotation window (RFC 3339 time, e.g. 2026-12-31T00:00:00Z): after it, tokens of auth.previous_secret are refused (BAD_TOKEN). Empty: the previous secret is not accepted.",
            o => o.Auth.PreviousSecretUntil is { } t ? t.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture) : "",
            (o, v) => o.Auth.PreviousSecretUntil = v.Length == 0 ? null : DateTimeOffset.Parse(v, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal), Rfc3339),

        Choice("storage.durability", "\"sync\": the write-ahead log is fsynced before SENT (survives power loss); \"async\": SENT after the OS has the write (survives a broker crash, not a machine crash).",
            ["sync", "async"], o => o.Storage.Durability.ToString().ToLowerInvariant(),
            (o, v) => o.Storage.Durability = Enum.Parse<DurabilityMode>(v, ignoreCase: true)),
        Int("storage.max_batch_messages", "Most writes the commit writer puts into one batch (one fsync).",
            o => o.Storage.MaxBatchMessages, (o, v) => o.Storage.MaxBatchMessages = (int)v, 1, 1_000_000),
        Int("storage.max_batch_bytes", "Most bytes the commit writer puts into one batch.",
            o => o.Storage.MaxBatchBytes, (o, v) => o.Storage.MaxBatchBytes = v, 4096, 1L << 30),
        Int("storage.queue_capacity", "Writes waiting for the commit writer; when full, senders wait (backpressure).",
            o => o.Storage.QueueCapacity, (o, v) => o.Storage.QueueCapacity = (int)v, 1, 10_000_000),
        Int("storage.block_cache_bytes", "RocksDB block cache size in bytes.",
            o => o.Storage.BlockCacheBytes, (o, v) => o.Storage.BlockCacheBytes = v, 0, 1L << 40),
        Int("storage.write_buffer_bytes", "RocksDB memtable size per column family; larger means fewer flushes and less compaction work, at that much memory per busy column family (up to two memtables each).",
            o => o.Storage.WriteBufferBytes, (o, v) => o.Storage.WriteBufferBytes = v, 1L << 20, 1L << 30),
        Bool("storage.rocksdb_info_log", "RocksDB's LOG file (in the store directory) at INFO: every flush, memtable switch, new WAL file and compaction with its time, for finding the cause of a latency stall; off: warnings only.",
            o => o.Storage.RocksDbInfoLog, (o, v) => o.Storage.RocksDbInfoLog = v),
        Duration("storage.idempotency_window", "How long a client_msg_id is remembered, so a retried SEND is answered with the original seq.",
            o => o.Storage.IdempotencyWindow, (o, v) => o.Storage.IdempotencyWindow = v, TimeSpan.FromMinutes(1), TimeSpan.FromDays(365)),
        Int("storage.idempotency_cache_devices", "Sending devices whose highest client_msg_id the commit writer remembers; a SEND above it skips the idempotency lookup. Cleared when full.",
            o => o.Storage.IdempotencyCacheDevices, (o, v) => o.Storage.IdempotencyCacheDevices = (int)v, 1, 100_000_000),

        Choice("retention.policy", "\"days\": messages older than retention.days are removed in the background; \"keep\": messages are kept forever.",
            ["days", "keep"], o => o.Retention.Policy.ToString().ToLowerInvariant(),
            (o, v) => o.Retention.Policy = Enum.Parse<RetentionPolicy>(v, ignoreCase: true)),
        Int("retention.days", "Age in days after which messages are removed when retention.policy = \"days\".",
            o => o.Retention.Days, (o, v) => o.Retention.Days = (int)v, 1, 36_500),

        Choice("log.format", "\"console\": one readable line per event; \"json\": one JSON object per line, for log shippers.",
            ["console", "json"], o => o.Log.Format.ToString().ToLowerInvariant(),
            (o, v) => o.Log.Format = Enum.Parse<LogFormat>(v, ignoreCase: true)),
        Choice("log.level", "Least severe level written.",
            ["trace", "debug", "information", "warning", "error", "critical"], o => o.Log.Level.ToString().ToLowerInvariant(),
            (o, v) => o.Log.Level = Enum.Parse<LogLevel>(v, ignoreCase: true)),

        Duration("session.default_keepalive", "Keepalive used when a device asks for none; a device silent for 1.5 x its keepalive is disconnected.",
            o => o.Session.DefaultKeepalive, (o, v) => o.Session.DefaultKeepalive = v, TimeSpan.FromSeconds(1), TimeSpan.FromHours(2)),
        Duration("session.min_keepalive", "Shortest keepalive a device may ask for (shorter requests are raised to it).",
            o => o.Session.MinKeepalive, (o, v) => o.Session.MinKeepalive = v, TimeSpan.FromSeconds(1), TimeSpan.FromHours(2)),
        Duration("session.max_keepalive", "Longest keepalive a device may ask for (longer requests are lowered to it).",
            o => o.Session.MaxKeepalive, (o, v) => o.Session.MaxKeepalive = v, TimeSpan.FromSeconds(1), TimeSpan.FromHours(2)),
        Int("session.max_devices_per_user", "Devices of one user online at once; one more gets CONNACK TOO_MANY_DEVICES.",
            o => o.Session.MaxDevicesPerUser, (o, v) => o.Session.MaxDevicesPerUser = (int)v, 1, 1000),
        Int("session.max_outbound_bytes", "Bytes queued for one device that its socket has not taken; past it the device is disconnected as a slow consumer.",
            o => o.Session.MaxOutboundBytes, (o, v) => o.Session.MaxOutboundBytes = (int)v, 4096, 1 << 30),
        Int("session.max_outbound_frames", "Frames queued for one device that its socket has not taken; past it the device is a slow consumer.",
            o => o.Session.MaxOutboundFrames, (o, v) => o.Session.MaxOutboundFrames = (int)v, 16, 10_000_000),
        Int("session.max_inflight_sends", "SENDs of one connection waiting to become durable; the broker stops reading that connection until one completes.",
            o => o.Session.MaxInflightSends, (o, v) => o.Session.MaxInflightSends = (int)v, 1, 1_000_000),
        Int("session.resume_batch", "Messages read from the store per batch when a device catches up.",
            o => o.Session.ResumeBatch, (o, v) => o.Session.ResumeBatch = (int)v, 1, 100_000),
        Int("session.max_resume_receipt_conversations", "On connect, stored receipts are replayed for at most this many of the user's conversations.",
            o => o.Session.MaxResumeReceiptConversations, (o, v) => o.Session.MaxResumeReceiptConversations = (int)v, 0, 1_000_000),
        Duration("session.drain_timeout", "How long a closing connection may take to accept its last bytes before it is cut.",
            o => o.Session.DrainTimeout, (o, v) => o.Session.DrainTimeout = v, TimeSpan.Zero, TimeSpan.FromMinutes(5)),

        Duration("session.stall_timeout", "A device catching up whose socket takes nothing for this long is disconnected as a slow consumer.",
            o => o.Session.StallTimeout, (o, v) => o.Session.StallTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromHours(1)),

        Int("limits.sends_per_second", "SENDs one connection may make per second (burst: twice that); more get ERROR RATE_LIMITED.",
            o => o.Limits.SendsPerSecond, (o, v) => o.Limits.SendsPerSecond = (int)v, 1, 10_000_000),
        Int("limits.bytes_per_second", "Body bytes one connection may send per second (burst: twice that); more get ERROR RATE_LIMITED.",
            o => o.Limits.BytesPerSecond, (o, v) => o.Limits.BytesPerSecond = v, 1024, 1L << 40),
        Int("limits.typing_per_second", "TYPING packets one connection may send per second (burst: twice that); more are dropped silently.",
            o => o.Limits.TypingPerSecond, (o, v) => o.Limits.TypingPerSecond = (int)v, 1, 1000),
        Int("limits.key_fetches_per_second", "FETCH_KEYS one connection may send per second (burst: twice that); more get ERROR RATE_LIMITED. Each fetch consumes one-time prekeys of others, so this bounds how fast one connection can drain them.",
            o => o.Limits.KeyFetchesPerSecond, (o, v) => o.Limits.KeyFetchesPerSecond = (int)v, 1, 100_000),

        Duration("presence.debounce", "A user's status change (online, away, offline) is published to subscribers only after it has held this long, so a flapping connection sends nothing; 0s publishes at once.",
            o => o.Presence.Debounce, (o, v) => o.Presence.Debounce = v, TimeSpan.Zero, TimeSpan.FromMinutes(5)),
        Int("presence.max_subscriptions", "Users one connection may subscribe to for presence; a subscription past it gets ERROR TOO_MANY_SUBSCRIPTIONS.",
            o => o.Presence.MaxSubscriptions, (o, v) => o.Presence.MaxSubscriptions = (int)v, 1, 100_000),

        Int("keys.low_watermark", "When a fetch leaves a device fewer one-time prekeys than this, the device (if online) gets a KEYS_UPLOADED with the remaining count so it uploads more.",
            o => o.Keys.LowWatermark, (o, v) => o.Keys.LowWatermark = (int)v, 0, 100_000),
        Duration("keys.low_notice_interval", "A device running low on one-time prekeys gets at most one KEYS_UPLOADED notice after fetches in this time (another after it uploads, and one at each CONNECT); fetches past that send none. 0s: a notice on every such fetch.",
            o => o.Keys.LowNoticeInterval, (o, v) => o.Keys.LowNoticeInterval = v, TimeSpan.Zero, TimeSpan.FromHours(24)),
        Int("keys.max_one_time_prekeys", "One-time prekeys stored per device; an upload that would pass it gets ERROR BAD_REQUEST.",
            o => o.Keys.MaxOneTimePrekeys, (o, v) => o.Keys.MaxOneTimePrekeys = (int)v, 1, 1_000_000),

        Choice("push.notifier", "Where push jobs for offline users go: \"log\" (a log line per job) or \"webhook\" (HTTP POST of JSON to push.webhook_url).",
            ["log", "webhook"], o => o.Push.Notifier.ToString().ToLowerInvariant(),
            (o, v) => o.Push.Notifier = Enum.Parse<NotifierKind>(v, ignoreCase: true)),
        Str("push.webhook_url", "URL the webhook notifier POSTs to (http or https); required when push.notifier = \"webhook\".",
            o => o.Push.WebhookUrl, (o, v) => o.Push.WebhookUrl = v,
            v => v.Length == 0 || (Uri.TryCreate(v, UriKind.Absolute, out var u) && (u.Scheme == "http" || u.Scheme == "https")) ? null : "must be an absolute http or https URL"),
        Duration("push.webhook_timeout", "Timeout of one webhook request.",
            o => o.Push.WebhookTimeout, (o, v) => o.Push.WebhookTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(5)),
        Duration("push.max_backoff", "Longest wait between retries of a failed push job (backoff doubles from 1s up to this).",
            o => o.Push.MaxBackoff, (o, v) => o.Push.MaxBackoff = v, TimeSpan.FromSeconds(1), TimeSpan.FromDays(1)),
        Duration("push.poll_interval", "How often the notifier looks for due jobs when not woken by a new one (retries, jobs left by a restart).",
            o => o.Push.PollInterval, (o, v) => o.Push.PollInterval = v, TimeSpan.FromMilliseconds(10), TimeSpan.FromHours(1)),

        Int("groups.max_members", "Most members a group may have, the creator included; a create or add past it gets GROUP_FULL.",
            o => o.Groups.MaxMembers, (o, v) => o.Groups.MaxMembers = (int)v, 2, 100_000),

        Int("fanout.write_threshold", "Groups with at most this many members are fanned out on write (an inbox entry per member); larger groups store each message once and members read the group log (fan-out on read).",
            o => o.Fanout.WriteThreshold, (o, v) => o.Fanout.WriteThreshold = (int)v, 0, 100_000),

        Str("cluster.etcd_endpoints", "Comma-separated etcd client URLs (http://host:2379,...). Empty: this is a single node and needs no etcd; set: cluster mode, the node registers in etcd and follows the cluster map there.",
            o => o.Cluster.EtcdEndpoints, (o, v) => o.Cluster.EtcdEndpoints = v, EtcdEndpoints),
        Str("cluster.etcd_prefix", "Key prefix of this cluster in etcd (starts with /), so several clusters can share one etcd.",
            o => o.Cluster.EtcdPrefix, (o, v) => o.Cluster.EtcdPrefix = v, v => v.StartsWith('/') && !v.EndsWith('/') ? null : "must start with / and not end with /"),
        Duration("cluster.etcd_timeout", "Deadline of one etcd request; past it etcd counts as unreachable (map changes are refused, the node keeps serving with the map it has).",
            o => o.Cluster.EtcdTimeout, (o, v) => o.Cluster.EtcdTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(1)),
        Str("cluster.node_id", "This node's id in the cluster map and in etcd (1 to 64 of a-z A-Z 0-9 . _ -); empty means node.name.",
            o => o.Cluster.NodeId, (o, v) => o.Cluster.NodeId = v, NodeId),
        Duration("cluster.lease_ttl", "The node's etcd lease: a node that stops renewing it (crash, cut off) leaves the live members this long after its last renewal. Renewed every third of it.",
            o => o.Cluster.LeaseTtl, (o, v) => o.Cluster.LeaseTtl = v, TimeSpan.FromSeconds(2), TimeSpan.FromMinutes(5)),
        Endpoint("cluster.mesh_listen", "Address and port of the node-to-node mesh (gRPC over HTTP/2 cleartext).",
            o => o.Cluster.MeshListen, (o, v) => o.Cluster.MeshListen = v),
        Str("cluster.advertise_mesh", "host:port the other nodes dial for the mesh; empty means cluster.mesh_listen.",
            o => o.Cluster.AdvertiseMesh, (o, v) => o.Cluster.AdvertiseMesh = v, HostPort),
        Str("cluster.advertise_client", "host:port clients are told to use for this node; empty means tcp.listen.",
            o => o.Cluster.AdvertiseClient, (o, v) => o.Cluster.AdvertiseClient = v, HostPort),
        Int("cluster.vnodes", "Virtual nodes per member on the consistent-hash ring, written into the cluster map when it is first created.",
            o => o.Cluster.VirtualNodes, (o, v) => o.Cluster.VirtualNodes = (int)v, 1, 4096),
        Int("cluster.replication_factor", "Copies of each conversation and user range (1 = none), written into the cluster map when it is first created. A range has min(factor, members that own ranges) copies: with 3, none on one node, two on two, three from three nodes on. Default 3: every acknowledged message survives the loss of any two nodes (docs/cluster.md, Replication); 1 turns replication off (faster, but a dead node's ranges wait for it).",
            o => o.Cluster.ReplicationFactor, (o, v) => o.Cluster.ReplicationFactor = (int)v, 1, 5),
        Bool("cluster.auto_join", "On start, a node that is not in the cluster map joins it (the first node writes the first map). false: the node only registers as live and waits for `chatbroker cluster join`.",
            o => o.Cluster.AutoJoin, (o, v) => o.Cluster.AutoJoin = v),
        Duration("cluster.forward_timeout", "How long a node waits for a conversation's owner (another node) to answer a forwarded SEND before it answers the device SERVER_UNAVAILABLE with cluster.retry_after. A SEND whose owner is not a live member is answered at once.",
            o => o.Cluster.ForwardTimeout, (o, v) => o.Cluster.ForwardTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(5)),
        Duration("cluster.read_timeout", "How long a node waits for another node's inbox or history page (catch-up, HISTORY) before it gives up: a catch-up closes the session with SERVER_UNAVAILABLE (the device resumes), a HISTORY is answered SERVER_UNAVAILABLE.",
            o => o.Cluster.ReadTimeout, (o, v) => o.Cluster.ReadTimeout = v, TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(5)),
        Duration("cluster.retry_after", "The retry_after of a SERVER_UNAVAILABLE answered because the node that owns the conversation or user is unreachable.",
            o => o.Cluster.RetryAfter, (o, v) => o.Cluster.RetryAfter = v, TimeSpan.Zero, TimeSpan.FromMinutes(10)),
        Int("cluster.forward_batch", "Inbox entries a conversation's owner sends to another home node per round of its forward queue.",
            o => o.Cluster.ForwardBatch, (o, v) => o.Cluster.ForwardBatch = (int)v, 1, 4096),
        Int("cluster.max_stale_retries", "Times a forwarded SEND is routed again after the owner refused it with a newer cluster map (STALE_EPOCH).",
            o => o.Cluster.MaxStaleRetries, (o, v) => o.Cluster.MaxStaleRetries = (int)v, 0, 100),
        Duration("cluster.lease_margin", "Fencing: while a range can fail over to a replica, a node acknowledges writes only while its etcd lease is certainly alive for this much longer on its own clock (counted from the send time of its last confirmed renewal); otherwise it answers SERVER_UNAVAILABLE with cluster.retry_after. Must be below cluster.lease_ttl.",
            o => o.Cluster.LeaseMargin, (o, v) => o.Cluster.LeaseMargin = v, TimeSpan.Zero, TimeSpan.FromMinutes(1)),
        Duration("cluster.failover_backup_delay", "Failover: the first live member (by id) marks a member whose lease is gone Failed at once; each next live member tries after this much more, in case the first cannot reach etcd.",
            o => o.Cluster.FailoverBackupDelay, (o, v) => o.Cluster.FailoverBackupDelay = v, TimeSpan.Zero, TimeSpan.FromMinutes(5)),
        Duration("cluster.failed_node_timeout", "How long a member stays Failed (its ranges served by its replicas) before it is removed from the ring for good and its ranges get new replicas.",
            o => o.Cluster.FailedNodeTimeout, (o, v) => o.Cluster.FailedNodeTimeout = v, TimeSpan.FromSeconds(1), TimeSpan.FromDays(30)),
        Duration("cluster.reforward_window", "Failover: the node that takes over a failed node's conversations sends their messages of this last stretch before the failure (at most 256 per conversation) to the recipients' home nodes again, since the failed node's queue of entries for other homes is not replicated; homes store each message once.",
            o => o.Cluster.ReforwardWindow, (o, v) => o.Cluster.ReforwardWindow = v, TimeSpan.Zero, TimeSpan.FromDays(1)),
        // ---- replication (docs/cluster.md, "Replication") ----
        Duration("cluster.replication_timeout", "Replication: how long a primary waits for an in-sync replica to acknowledge a committed batch before it proposes the replica's removal from the in-sync set (a compare-and-set in etcd; SENT waits until the map without it is applied).",
            o => o.Cluster.ReplicationTimeout, (o, v) => o.Cluster.ReplicationTimeout = v, TimeSpan.FromMilliseconds(50), TimeSpan.FromMinutes(5)),
        Int("cluster.replication_max_queue_batches", "Replication: committed batches sent to one replica and not yet acknowledged past which the replica counts as fallen behind (as after cluster.replication_timeout).",
            o => o.Cluster.ReplicationMaxQueueBatches, (o, v) => o.Cluster.ReplicationMaxQueueBatches = (int)v, 1, 1 << 20),
        Int("cluster.mesh_max_batch_messages", "Mesh: messages coalesced into one write to another node; a receiver refuses larger batches.",
            o => o.Cluster.MeshMaxBatchMessages, (o, v) => o.Cluster.MeshMaxBatchMessages = (int)v, 1, 4096),
        Int("cluster.mesh_max_batch_bytes", "Mesh: payload bytes packed into one write (at least cluster.mesh_max_message_bytes).",
            o => o.Cluster.MeshMaxBatchBytes, (o, v) => o.Cluster.MeshMaxBatchBytes = v, 1024, 64L * 1024 * 1024),
        Int("cluster.mesh_max_message_bytes", "Mesh: largest payload of one message between nodes (a forwarded SEND carries one client frame, so at least tcp.max_frame_bytes plus 1 KiB).",
            o => o.Cluster.MeshMaxMessageBytes, (o, v) => o.Cluster.MeshMaxMessageBytes = v, 1024, 16L * 1024 * 1024),
        Int("cluster.mesh_max_reply_bytes", "Mesh: largest reply to one message (an inbox or history page read from another node; at least cluster.mesh_max_message_bytes plus 1 KiB).",
            o => o.Cluster.MeshMaxReplyBytes, (o, v) => o.Cluster.MeshMaxReplyBytes = v, 2048, 1024 * 1024),
        Int("cluster.mesh_max_queue_bytes", "Mesh: payload bytes held for one other node, queued plus sent and not yet acknowledged; when full, senders wait or are answered SERVER_UNAVAILABLE (backpressure).",
            o => o.Cluster.MeshMaxQueueBytes, (o, v) => o.Cluster.MeshMaxQueueBytes = v, 1024, 4L * 1024 * 1024 * 1024),
        Int("cluster.mesh_max_queue_messages", "Mesh: messages held for one other node, queued plus unacknowledged (at least cluster.mesh_max_batch_messages).",
            o => o.Cluster.MeshMaxQueueMessages, (o, v) => o.Cluster.MeshMaxQueueMessages = (int)v, 1, 1 << 24),
        Int("cluster.mesh_max_links", "Mesh receiver: streams from other nodes it keeps state for; more are refused.",
            o => o.Cluster.MeshMaxLinks, (o, v) => o.Cluster.MeshMaxLinks = (int)v, 1, 1_000_000),
        Int("cluster.mesh_max_cached_results", "Mesh receiver: answers kept per stream until the sender has seen them, so a resent message gets its answer again (at least cluster.mesh_max_batch_messages).",
            o => o.Cluster.MeshMaxCachedResults, (o, v) => o.Cluster.MeshMaxCachedResults = (int)v, 1, 1 << 24),
        Duration("cluster.mesh_reconnect_initial_delay", "Mesh: first wait before dialling a node again after a failed attempt; doubled per failure up to cluster.mesh_reconnect_max_delay.",
            o => o.Cluster.MeshReconnectInitialDelay, (o, v) => o.Cluster.MeshReconnectInitialDelay = v, TimeSpan.FromMilliseconds(1), TimeSpan.FromMinutes(1)),
        Duration("cluster.mesh_reconnect_max_delay", "Mesh: longest wait between attempts to dial a node that does not answer.",
            o => o.Cluster.MeshReconnectMaxDelay, (o, v) => o.Cluster.MeshReconnectMaxDelay = v, TimeSpan.FromMilliseconds(1), TimeSpan.FromMinutes(10)),

        // Issue 18 (hardening): abuse limits and privacy.
        Int("abuse.new_conversations_per_hour", "Direct conversations one user may start per hour (a SEND to_user_id with someone new); more get ERROR RATE_LIMITED. 0: no limit.",
            o => o.Abuse.NewConversationsPerHour, (o, v) => o.Abuse.NewConversationsPerHour = (int)v, 0, 10_000_000),
        Int("abuse.group_creations_per_hour", "Groups one user may create per hour; more get ERROR RATE_LIMITED. 0: no limit.",
            o => o.Abuse.GroupCreationsPerHour, (o, v) => o.Abuse.GroupCreationsPerHour = (int)v, 0, 10_000_000),
        Int("abuse.membership_changes_per_hour", "Users one user may add to or remove from groups per hour (each user named counts); more get ERROR RATE_LIMITED. 0: no limit.",
            o => o.Abuse.MembershipChangesPerHour, (o, v) => o.Abuse.MembershipChangesPerHour = (int)v, 0, 10_000_000),
        Int("abuse.prekey_fetches_per_hour", "FETCH_KEYS one user may make per hour over all its connections; more get ERROR RATE_LIMITED (limits.key_fetches_per_second bounds one connection's burst). 0: no limit.",
            o => o.Abuse.PrekeyFetchesPerHour, (o, v) => o.Abuse.PrekeyFetchesPerHour = (int)v, 0, 10_000_000),
        Int("privacy.max_contacts", "Most user ids a SETTINGS contact list may hold; a longer one gets ERROR BAD_REQUEST.",
            o => o.Privacy.MaxContacts, (o, v) => o.Privacy.MaxContacts = (int)v, 0, 100_000),

        Duration("shutdown.grace_period", "On SIGTERM or Ctrl-C, how long to drain connections and flush the store before exiting.",
            o => o.Shutdown.GracePeriod, (o, v) => o.Shutdown.GracePeriod = v, TimeSpan.Zero, TimeSpan.FromMinutes(10)),
    ];

    private static string? OptionalEndpoint(string v) =>
        v.Length == 0 || SettingParsers.TryParseEndpoint(v, out _, out var error) ? null : error;

    private static string? AllowedOrigins(string v)
    {
        foreach (var origin in v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!Uri.TryCreate(origin, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || uri.PathAndQuery != "/" || origin.EndsWith('/'))
            {
                return $"\"{origin}\" is not an origin (scheme://host[:port], http or https, no path)";
            }
        }

        return null;
    }

    private static string? Rfc3339(string v) =>
        v.Length == 0 || (DateTimeOffset.TryParse(v, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out _) && v.Contains('T', StringComparison.Ordinal))
            ? null
            : "expected an RFC 3339 time such as 2026-12-31T00:00:00Z";

    private static string? NonEmpty(string v) => v.Length == 0 ? "must not be empty" : null;

    private static string? EtcdEndpoints(string v) =>
        ChatBroker.Cluster.ClusterOptions.TryParseEtcdEndpoints(v, out _, out var error) ? null : error;

    private static string? NodeId(string v) =>
        v.Length == 0 || ChatBroker.Cluster.Coordination.NodeRegistration.IsValidNodeId(v) ? null : "must be 1 to 64 of a-z A-Z 0-9 . _ -";

    private static string? HostPort(string v)
    {
        var colon = v.LastIndexOf(':');
        return v.Length == 0 || (colon > 0 && ushort.TryParse(v.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port) && port > 0)
            ? null
            : "expected host:port";
    }

    private static string? ValidSecret(string v)
    {
        if (v.Length == 0)
        {
            return null;
        }

        Span<byte> buffer = stackalloc byte[256];
        return Convert.TryFromBase64String(v, buffer, out var n) && n >= 32
            ? null
            : "must be base64 of at least 32 bytes (and at most 256)";
    }

    private static Setting Str(string key, string description, Func<BrokerOptions, string> get,
        Action<BrokerOptions, string> set, Func<string, string?>? validate, bool secret = false) =>
        new(key, SettingKind.String, description, get, (o, v) =>
        {
            var error = validate?.Invoke(v);
            if (error is null)
            {
                set(o, v);
            }

            return error;
        })
        { Secret = secret };

    private static Setting Int(string key, string description, Func<BrokerOptions, long> get,
        Action<BrokerOptions, long> set, long min, long max) =>
        new(key, SettingKind.Integer, description + $" Range {min.ToString("N0", CultureInfo.InvariantCulture)} to {max.ToString("N0", CultureInfo.InvariantCulture)}.",
            o => get(o).ToString(CultureInfo.InvariantCulture), (o, v) =>
            {
                if (!long.TryParse(v.Replace("_", "", StringComparison.Ordinal), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var n))
                {
                    return $"expected an integer, got \"{v}\"";
                }

                if (n < min || n > max)
                {
                    return string.Create(CultureInfo.InvariantCulture, $"{n} is out of range ({min} to {max})");
                }

                set(o, n);
                return null;
            });

    private static Setting Bool(string key, string description, Func<BrokerOptions, bool> get, Action<BrokerOptions, bool> set) =>
        new(key, SettingKind.Boolean, description, o => get(o) ? "true" : "false", (o, v) =>
        {
            if (!bool.TryParse(v, out var b))
            {
                return $"expected true or false, got \"{v}\"";
            }

            set(o, b);
            return null;
        });

    private static Setting Duration(string key, string description, Func<BrokerOptions, TimeSpan> get,
        Action<BrokerOptions, TimeSpan> set, TimeSpan min, TimeSpan max) =>
        new(key, SettingKind.Duration, description, o => SettingParsers.FormatDuration(get(o)), (o, v) =>
        {
            if (!SettingParsers.TryParseDuration(v, out var d, out var error))
            {
                return error;
            }

            if (d < min || d > max)
            {
                return $"\"{v}\" is out of range ({SettingParsers.FormatDuration(min)} to {SettingParsers.FormatDuration(max)})";
            }

            set(o, d);
            return null;
        });

    private static Setting Endpoint(string key, string description, Func<BrokerOptions, System.Net.IPEndPoint> get,
        Action<BrokerOptions, System.Net.IPEndPoint> set) =>
        new(key, SettingKind.Endpoint, description, o => SettingParsers.FormatEndpoint(get(o)), (o, v) =>
        {
            if (!SettingParsers.TryParseEndpoint(v, out var ep, out var error))
            {
                return error;
            }

            set(o, ep);
            return null;
        });

    private static Setting Choice(string key, string description, string[] choices, Func<BrokerOptions, string> get,
        Action<BrokerOptions, string> set) =>
        new(key, SettingKind.Choice, description, get, (o, v) =>
        {
            foreach (var c in choices)
            {
                if (string.Equals(c, v, StringComparison.OrdinalIgnoreCase))
                {
                    set(o, c);
                    return null;
                }
            }

            return $"expected one of {string.Join(", ", choices.Select(c => "\"" + c + "\""))}, got \"{v}\"";
        })
        { Choices = choices };
}
