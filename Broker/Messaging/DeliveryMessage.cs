using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// One committed message: what every DELIVER is built from, live or caught up, pushed or paged in history.
/// Immutable and shared by every recipient's delivery: built once per SEND (or once per message read from the
/// store), never per recipient. <see cref="DeliverFieldsFor"/> is the one place a DELIVER's fields are chosen.
/// </summary>
public sealed record DeliveryMessage(
    ulong ConversationId,
    ulong Seq,
    string SenderUserId,
    string SenderDeviceId,
    long TimestampMs,
    ContentType ContentType,
    ReadOnlyMemory<byte> Body,
    MediaRef? Media,
    ulong ClientMsgId)
{
    /// <summary>A message read back from the store (catch-up and history).</summary>
    public static DeliveryMessage FromStored(StoredMessage m) =>
        new(m.ConversationId, m.Seq, m.SenderUserId, m.SenderDeviceId, m.TimestampMs, (ContentType)m.ContentType,
            m.Body, ParseMedia(m.MediaRef), m.ClientMsgId);

    /// <summary>True for the device that sent it: that device has its own message (it got SENT), and is not sent it again.</summary>
    public bool IsFrom(string userId, string deviceId) => SenderUserId == userId && SenderDeviceId == deviceId;

    /// <summary>
    /// The DELIVER of this message to a device of <paramref name="recipientUserId"/> at
    /// <paramref name="inboxSeq"/> (0: read from a large group's log, or a page of history). The sender's own
    /// other devices get the client_msg_id too, so they can match the message to the one they show as sent.
    /// </summary>
    public DeliverFields DeliverFieldsFor(string recipientUserId, ulong inboxSeq) => new()
    {
        ConversationId = ConversationId,
        Seq = Seq,
        SenderUserId = SenderUserId,
        SenderDeviceId = SenderDeviceId,
        TimestampMs = (ulong)TimestampMs,
        ContentType = ContentType,
        Media = Media,
        InboxSeq = inboxSeq,
        ClientMsgId = SenderUserId == recipientUserId ? ClientMsgId : 0,
    };

    /// <summary>As a <see cref="Deliver"/> object, for a HISTORY page (the rare path; live delivery writes frames).</summary>
    public Deliver ToDeliver(string recipientUserId) => DeliverWriter.ToMessage(DeliverFieldsFor(recipientUserId, 0), Body.Span);

    /// <summary>The stored media reference (base64 of a MediaRef); null when absent or unreadable.</summary>
    private static MediaRef? ParseMedia(string? stored)
    {
        if (string.IsNullOrEmpty(stored))
        {
            return null;
        }

        try
        {
            return MediaRef.Parser.ParseFrom(Convert.FromBase64String(stored));
        }
        catch (Exception e) when (e is FormatException or InvalidProtocolBufferException)
        {
            return null;
        }
    }
}

/// <summary>
/// One position of a delivery stream read back for catch-up: an inbox seq or a large group's seq, and the message
/// there, or null when there is nothing to deliver at it (removed or expired by retention; a large group's SYSTEM
/// message, which reaches members through their inbox). The position moves past it either way.
/// </summary>
public readonly record struct DeliveryItem(ulong Position, DeliveryMessage? Message);
