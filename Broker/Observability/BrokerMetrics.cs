using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.InteropServices;

namespace ChatBroker.Broker.Observability;

/// <summary>
/// The broker's own instruments, on the meter "ChatBroker". Connection counts are plain counters updated
/// by the listener; process figures are observed at scrape time. Runtime figures (GC, thread pool, heap)
/// come from .NET's built-in "System.Runtime" meter, which <see cref="PrometheusExporter"/> also exports.
/// </summary>
public sealed partial class BrokerMetrics : IDisposable
{
    public const string MeterName = "ChatBroker";

    private readonly Meter _meter;
    private readonly long _startTimestamp = Stopwatch.GetTimestamp();

    public BrokerMetrics(string nodeName)
    {
        _meter = new Meter(MeterName, "1.0", [new KeyValuePair<string, object?>("node", nodeName)]);
        ConnectionsAccepted = _meter.CreateCounter<long>("chatbroker.connections.accepted", "{connection}", "TCP connections accepted.");
        ConnectionsRejected = _meter.CreateCounter<long>("chatbroker.connections.rejected", "{connection}", "TCP connections refused at accept time because tcp.max_connections was reached.");
        ConnectionsOpen = _meter.CreateUpDownCounter<long>("chatbroker.connections.open", "{connection}", "TCP connections currently open.");
        Sessions = _meter.CreateUpDownCounter<long>("chatbroker.sessions", "{session}", "Authenticated device sessions currently open.");
        Connects = _meter.CreateCounter<long>("chatbroker.connects", "{connect}", "CONNECT attempts by result (reason code name).");
        Disconnects = _meter.CreateCounter<long>("chatbroker.disconnects", "{disconnect}", "Sessions and connections ended, by reason code name.");
        MessagesIn = _meter.CreateCounter<long>("chatbroker.messages.in", "{message}", "Messages accepted from senders and made durable.");
        BytesIn = _meter.CreateCounter<long>("chatbroker.messages.in.body", "By", "Body bytes of accepted messages.");
        MessagesOut = _meter.CreateCounter<long>("chatbroker.messages.out", "{message}", "DELIVER frames queued to devices (live and catch-up).");
        DuplicateSends = _meter.CreateCounter<long>("chatbroker.messages.duplicate", "{message}", "Retried SENDs answered from the idempotency index without storing anything.");
        FanOut = _meter.CreateHistogram<long>("chatbroker.messages.fanout", "{device}", "Online devices told about each new message.");
        Receipts = _meter.CreateCounter<long>("chatbroker.receipts", "{receipt}", "Delivered/read positions that moved forward.");
        SendLatency = _meter.CreateHistogram<double>("chatbroker.send.duration", "s", "From a SEND read off the socket to its SENT queued (durability included).");
        RateLimited = _meter.CreateCounter<long>("chatbroker.limits.rejected", "{request}", "Requests refused by a per-connection limit, by limit.");
        ProtocolErrors = _meter.CreateCounter<long>("chatbroker.protocol.errors", "{error}", "Connections closed for a protocol error, by reason code name.");
        PushJobs = _meter.CreateCounter<long>("chatbroker.push.jobs", "{job}", "Push jobs handed to the notifier, by outcome (sent, retry).");
        PresencePublished = _meter.CreateCounter<long>("chatbroker.presence.published", "{change}", "User status changes published after the debounce (each reaches every subscribed device).");
        PresenceCoalesced = _meter.CreateCounter<long>("chatbroker.presence.coalesced", "{change}", "User status changes that reverted within the debounce and were never published.");
        PresenceOut = _meter.CreateCounter<long>("chatbroker.presence.out", "{packet}", "PRESENCE packets queued to devices.");
        PresenceSubscriptions = _meter.CreateUpDownCounter<long>("chatbroker.presence.subscriptions", "{subscription}", "Presence subscriptions currently held by open sessions.");
        TypingOut = _meter.CreateCounter<long>("chatbroker.typing.out", "{packet}", "TYPING_NOTICE packets queued to devices.");
        KeyUploads = _meter.CreateCounter<long>("chatbroker.keys.uploads", "{upload}", "KEYS_UPLOAD requests stored.");
        KeyFetches = _meter.CreateCounter<long>("chatbroker.keys.fetched", "{device}", "Device bundles handed out by FETCH_KEYS, by whether a one-time prekey was left (one_time = true/false).");
        KeysLow = _meter.CreateCounter<long>("chatbroker.keys.low", "{notice}", "KEYS_UPLOADED notices sent to devices whose one-time prekeys fell below keys.low_watermark.");
        KeysLowSuppressed = _meter.CreateCounter<long>("chatbroker.keys.low_suppressed", "{notice}", "Low-supply notices not sent because the device had one within keys.low_notice_interval.");
        // Issue 18 (hardening).
        DevicesRevoked = _meter.CreateCounter<long>("chatbroker.devices.revoked", "{device}", "Devices revoked (admin API or CLI); their sessions are closed with DEVICE_REVOKED.");
        TokensRefused = _meter.CreateCounter<long>("chatbroker.tokens.refused", "{connect}", "CONNECTs refused for their token, by reason (bad_token, expired, revoked, previous_expired).");
        TokensPreviousSecret = _meter.CreateCounter<long>("chatbroker.tokens.previous_secret", "{connect}", "CONNECTs accepted with a token of auth.previous_secret (rotation in progress).");
        PresenceHidden = _meter.CreateCounter<long>("chatbroker.presence.hidden", "{packet}", "PRESENCE answers and packets that said HIDDEN because the user's privacy setting does not show the viewer.");
        SettingsChanged = _meter.CreateCounter<long>("chatbroker.settings.changed", "{request}", "SETTINGS requests that changed a user's settings.");
        ReadSynced = _meter.CreateCounter<long>("chatbroker.read.synced", "{packet}", "READ receipts sent to the reader's own other devices (read state across devices).");
        _meter.CreateObservableGauge("chatbroker.uptime", () => Stopwatch.GetElapsedTime(_startTimestamp).TotalSeconds, "s", "Seconds since the broker started.");
        _meter.CreateObservableGauge("process.memory.resident", static () => Environment.WorkingSet, "By", "Resident set size of the broker process.");
        _meter.CreateObservableGauge("process.memory.managed_heap", static () => GC.GetTotalMemory(false), "By", "Bytes currently thought to be allocated on the managed heap.");
        _meter.CreateObservableCounter("process.cpu.time", static () => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds, "s", "CPU time used by the broker process.");
        _meter.CreateObservableGauge("process.open_files", CountOpenFiles, "{file}", "Open file descriptors of the broker process.");
    }

    public Counter<long> ConnectionsAccepted { get; }
    public Counter<long> ConnectionsRejected { get; }
    public UpDownCounter<long> ConnectionsOpen { get; }
    public UpDownCounter<long> Sessions { get; }
    public Counter<long> Connects { get; }
    public Counter<long> Disconnects { get; }
    public Counter<long> MessagesIn { get; }
    public Counter<long> BytesIn { get; }
    public Counter<long> MessagesOut { get; }
    public Counter<long> DuplicateSends { get; }
    public Histogram<long> FanOut { get; }
    public Counter<long> Receipts { get; }
    public Histogram<double> SendLatency { get; }
    public Counter<long> DevicesRevoked { get; }
    public Counter<long> TokensRefused { get; }
    public Counter<long> TokensPreviousSecret { get; }
    public Counter<long> PresenceHidden { get; }
    public Counter<long> SettingsChanged { get; }
    public Counter<long> ReadSynced { get; }
    public Counter<long> RateLimited { get; }
    public Counter<long> ProtocolErrors { get; }
    public Counter<long> PushJobs { get; }
    public Counter<long> PresencePublished { get; }
    public Counter<long> PresenceCoalesced { get; }
    public Counter<long> PresenceOut { get; }
    public UpDownCounter<long> PresenceSubscriptions { get; }
    public Counter<long> TypingOut { get; }
    public Counter<long> KeyUploads { get; }
    public Counter<long> KeyFetches { get; }
    public Counter<long> KeysLow { get; }

    public Counter<long> KeysLowSuppressed { get; }

    public void Dispose() => _meter.Dispose();

    /// <summary>
    /// The entries of /proc/self/fd, read with readdir and nothing else: no name strings and no stat of each
    /// descriptor's link (Directory.GetFiles did both, ~15,000 stat calls per scrape at 15,000 connections; at a
    /// million a scrape would have cost seconds of CPU). The directory's own descriptor is not counted. 0 where
    /// there is no /proc.
    /// </summary>
    internal static unsafe long CountOpenFiles()
    {
        if (!OperatingSystem.IsLinux())
        {
            return 0;
        }

        var directory = opendir("/proc/self/fd");
        if (directory == 0)
        {
            return 0;
        }

        try
        {
            long entries = 0;
            byte* entry;
            while ((entry = readdir(directory)) != null)
            {
                // struct dirent (glibc, 64-bit): d_ino 8, d_off 8, d_reclen 2, d_type 1, then d_name.
                if (entry[19] != (byte)'.')
                {
                    entries++;
                }
            }

            return Math.Max(0, entries - 1);
        }
        finally
        {
            _ = closedir(directory);
        }
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint opendir(string name);

    [LibraryImport("libc")]
    private static unsafe partial byte* readdir(nint directory);

    [LibraryImport("libc")]
    private static partial int closedir(nint directory);
}
