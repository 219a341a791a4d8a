using ChatBroker.Protocol.Messages;

namespace ChatBroker.Client;

/// <summary>
/// A message delivered to this device. <see cref="Body"/> is a copy owned by the app.
/// <see cref="ClientMsgId"/> is set on the user's own messages sent from another device.
/// <see cref="IsBacklog"/>: delivered before SYNC_DONE of its connection (catch-up, e.g. no notification sound).
/// </summary>
public sealed record ReceivedMessage(
    ulong ConversationId,
    ulong Seq,
    ulong InboxSeq,
    string SenderUserId,
    string SenderDeviceId,
    ulong TimestampMs,
    ContentType ContentType,
    ReadOnlyMemory<byte> Body,
    ulong ClientMsgId,
    bool IsBacklog)
{
    /// <summary>The media reference of a media message (sent only to clients with <c>Capability.Media</c>), else null.</summary>
    public MediaRef? Media { get; init; }
}

/// <summary>A SEND made durable by the broker: where the message landed and the server's time.</summary>
public readonly record struct SentResult(ulong ClientMsgId, ulong ConversationId, ulong Seq, ulong TimestampMs);

/// <summary>A delivered/read receipt: <see cref="ReaderUserId"/> has received/read this user's messages of the conversation up to <see cref="UpToSeq"/>.</summary>
public readonly record struct ReceivedReceipt(
    ulong ConversationId,
    ReceiptKind Kind,
    ulong FromSeq,
    ulong UpToSeq,
    string ReaderUserId,
    ulong TimestampMs)
{
    /// <summary>On a READ receipt from this user's own other device (read state across devices): that device; null otherwise.
    /// Clear the conversation's unread count up to <see cref="UpToSeq"/> when it is set.</summary>
    public string? ReaderDeviceId { get; init; }
}

/// <summary>
/// A page of older messages (ascending seq). <see cref="More"/>: older messages exist; ask again with
/// beforeSeq = the smallest seq of this page. Named HistoryResult, not HistoryPage, so that it does not
/// clash with the protobuf type of ChatBroker.Protocol.Messages.
/// </summary>
public sealed record HistoryResult(ulong ConversationId, IReadOnlyList<ReceivedMessage> Messages, bool More);

/// <summary>Where the client's connection is.</summary>
public enum ChatConnectionState
{
    /// <summary>Not connected and not trying (before ConnectAsync, after DisconnectAsync).</summary>
    Disconnected,

    Connecting,

    Connected,

    /// <summary>Connection lost; waiting for the next attempt.</summary>
    Reconnecting,

    /// <summary>The broker refused the device for good (SESSION_TAKEN_OVER, BAD_TOKEN, DEVICE_REVOKED ...) or the client was disposed.</summary>
    Closed,
}

/// <summary>A change of connection state. <see cref="Attempt"/> and <see cref="Delay"/> are set for Reconnecting.</summary>
public readonly record struct ConnectionEvent(
    ChatConnectionState State,
    ReasonCode Reason,
    string? Message,
    int Attempt,
    TimeSpan Delay);
