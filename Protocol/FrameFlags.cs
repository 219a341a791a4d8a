namespace ChatBroker.Protocol;

/// <summary>
/// The two flag bits of the first frame byte (bits 1..0). Which flags a packet type may carry is
/// fixed by <see cref="PacketTypes.AllowedFlags"/>; any other bit set is
/// <c>ReasonCode.InvalidFlags</c>.
/// </summary>
[Flags]
public enum FrameFlags
{
    None = 0,

    /// <summary>
    /// SEND: a retransmission of a client_msg_id the client may have sent before.
    /// DELIVER: a redelivery; the device may have seen this (conversation id, seq) already.
    /// </summary>
    Dup = 0x01,

    /// <summary>Reserved: must be zero on every packet type in protocol version 1.</summary>
    Reserved = 0x02,
}
