using System.Text.Json;
using System.Text.Json.Serialization;

namespace ChatBroker.LoadTests.Checker;

/// <summary>
/// One line of a checker history (JSON lines, one object per event). What each operation records:
/// <code>
///   CONNECT       client, node, conn                     a session opened (CONNACK SUCCESS); conn counts the client's sessions
///   DISCONNECT    client, node, conn, reason             the session ended (socket closed, DISCONNECT, keepalive)
///   SEND          client, node, conn, cmid, to, attempt  a SEND written; attempt &gt; 1 = a retry with the same cmid (DUP)
///   SENT          client, node, conn, cmid, conv, seq     the broker acknowledged the message as durable
///   SEND_FAILED   client, node, conn, cmid, reason        a definite refusal (ERROR that is not retryable)
///   SEND_REFUSED  client, node, conn, cmid, reason        a retryable refusal (SERVER_UNAVAILABLE, SERVER_BUSY, RATE_LIMITED): resent later
///   DELIVER       client, node, conn, conv, seq, inbox, cmid, sender   every DELIVER as it arrived, redeliveries too
///   ACK           client, node, conn, inbox               an ACK written
///   NEMESIS       node, reason, killed                    a fault or a heal ("kill", "restart", "pause", "resume", "partition",
///                                                         "heal"); node = the cluster node ids it hit, comma-separated ("etcd"
///                                                         for etcd), none on a single node; killed = the node ids it killed -9
///   MAP           epoch, vnodes, nodes                    cluster runs: the ring's Active members ("id=host:port") from now on
///   MEMBERS       conv, members                           final read: the conversation's member users
///   READ_CONV     client, conv, seq, cmid, sender         final read of a conversation (HISTORY paging)
///   READ_INBOX    client, conv, seq, inbox, cmid, sender  final read of a user's inbox by a fresh device from cursor 0
/// </code>
/// client is "user/device"; sender is the sending client; cmid = client_msg_id (carried in the body, since a
/// DELIVER to another user has no client_msg_id field); t is milliseconds since the run started.
/// </summary>
public sealed record HistoryEvent
{
    public const string Connect = "CONNECT";
    public const string Disconnect = "DISCONNECT";
    public const string Send = "SEND";
    public const string Sent = "SENT";
    public const string SendFailed = "SEND_FAILED";
    public const string SendRefused = "SEND_REFUSED";
    public const string Map = "MAP";
    public const string Deliver = "DELIVER";
    public const string Ack = "ACK";
    public const string Nemesis = "NEMESIS";
    public const string Members = "MEMBERS";
    public const string ReadConversation = "READ_CONV";
    public const string ReadInbox = "READ_INBOX";

    [JsonPropertyName("t")] public double T { get; init; }
    [JsonPropertyName("op")] public string Op { get; init; } = "";
    [JsonPropertyName("client")] public string? Client { get; init; }
    [JsonPropertyName("node")] public string? Node { get; init; }
    [JsonPropertyName("conn")] public int Conn { get; init; }
    [JsonPropertyName("cmid")] public ulong Cmid { get; init; }
    [JsonPropertyName("to")] public string? To { get; init; }
    [JsonPropertyName("attempt")] public int Attempt { get; init; }
    [JsonPropertyName("conv")] public ulong Conv { get; init; }
    [JsonPropertyName("seq")] public ulong Seq { get; init; }
    [JsonPropertyName("inbox")] public ulong Inbox { get; init; }
    [JsonPropertyName("sender")] public string? Sender { get; init; }
    [JsonPropertyName("reason")] public string? Reason { get; init; }
    [JsonPropertyName("members")] public string[]? MemberUsers { get; init; }
    [JsonPropertyName("nodes")] public string[]? Nodes { get; init; }
    [JsonPropertyName("vnodes")] public int Vnodes { get; init; }
    [JsonPropertyName("epoch")] public long Epoch { get; init; }
    [JsonPropertyName("killed")] public string[]? Killed { get; init; }

    /// <summary>The node id of a MAP entry "id=host:port".</summary>
    public static string NodeIdOf(string mapEntry)
    {
        var eq = mapEntry.IndexOf('=', StringComparison.Ordinal);
        return eq < 0 ? mapEntry : mapEntry[..eq];
    }

    /// <summary>The user part of a "user/device" client name.</summary>
    public static string UserOf(string client)
    {
        var slash = client.IndexOf('/', StringComparison.Ordinal);
        return slash < 0 ? client : client[..slash];
    }

    public static IEnumerable<HistoryEvent> ReadFile(string path)
    {
        foreach (var line in File.ReadLines(path))
        {
            if (line.Length > 0)
            {
                yield return JsonSerializer.Deserialize(line, HistoryJson.Default.HistoryEvent)
                    ?? throw new InvalidDataException("history line is null: " + line);
            }
        }
    }
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingDefault)]
[JsonSerializable(typeof(HistoryEvent))]
internal sealed partial class HistoryJson : JsonSerializerContext;
