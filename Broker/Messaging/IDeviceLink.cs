using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// A connected device as the broker core sees it. The session layer (<c>Sessions/DeviceSession</c>) implements it over a connection;
/// unit tests implement it in memory. Every method is called from arbitrary threads and must not block.
/// </summary>
public interface IDeviceLink
{
    string UserId { get; }

    string DeviceId { get; }

    /// <summary>Capability bits the session agreed to (receipts, typing, presence).</summary>
    ulong Capabilities { get; }

    /// <summary>A message was committed into this device's user's inbox at <paramref name="inboxSeq"/>.</summary>
    void OnInboxAppended(ulong inboxSeq, DeliveryMessage message);

    /// <summary>
    /// A message was committed to a large group's log (fan-out on read; no inbox entry). <paramref name="write"/>
    /// false: the message reached the device another way (a SYSTEM message, through the inbox) and only moves
    /// the device's position in that group.
    /// </summary>
    void OnGroupLogAppended(DeliveryMessage message, bool write);

    /// <summary>A delivered/read receipt for this device's user.</summary>
    void OnReceipt(Receipt receipt);

    /// <summary>
    /// An ephemeral packet for this device: PRESENCE, TYPING_NOTICE, or a KEYS_UPLOADED telling it to top up
    /// its one-time prekeys. Never stored, never resent; the caller has checked the capability it needs.
    /// </summary>
    void OnNotice(IMessage packet);

    /// <summary>
    /// The node that notifies this device of new entries may have missed some (its user's home restarted and lost
    /// its table of remote devices, or the ring gave the user a new home): read every stream again from the
    /// device's positions, as after a gap. Nothing happens before the session's streams are set up (CONNECT
    /// reads them itself) or after it closed.
    /// </summary>
    void Resync()
    {
    }

    /// <summary>Ends the session with a reason (takeover, shutdown).</summary>
    void Close(ReasonCode reason, string message);
}
