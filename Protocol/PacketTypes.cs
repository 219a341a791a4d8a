using System.Runtime.CompilerServices;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol;

/// <summary>
/// The packet type table: which first-byte values exist, who may send them, which flags they may
/// carry and which protobuf message is their body. Every packet type has exactly one body message
/// type and every body message type belongs to exactly one packet type.
/// </summary>
/// <remarks>
/// First byte of a frame:
/// <code>
///   bit  7   6   5   4   3   2   1   0
///      +---------------+-------+-------+
///      |    family     |  op   | flags |
///      +---------------+-------+-------+
///   packet type = byte &amp; 0xFC, flags = byte &amp; 0x03
/// </code>
/// </remarks>
public static class PacketTypes
{
    private const byte KnownBit = 0x80;
    private const byte DirectionShift = 4;

    // Indexed by (first byte >> 2). Bit 7: known; bits 5..4: PacketDirection; bits 1..0: allowed flags.
    private static readonly byte[] Info = new byte[64];
    private static readonly MessageParser?[] Parsers = new MessageParser?[64];

    static PacketTypes()
    {
        Define(PacketType.Connect, PacketDirection.ClientToServer, FrameFlags.None, Connect.Parser);
        Define(PacketType.Connack, PacketDirection.ServerToClient, FrameFlags.None, Connack.Parser);
        Define(PacketType.Disconnect, PacketDirection.Both, FrameFlags.None, Disconnect.Parser);
        Define(PacketType.Error, PacketDirection.ServerToClient, FrameFlags.None, Error.Parser);
        Define(PacketType.Ping, PacketDirection.ClientToServer, FrameFlags.None, Ping.Parser);
        Define(PacketType.Pong, PacketDirection.ServerToClient, FrameFlags.None, Pong.Parser);
        Define(PacketType.Send, PacketDirection.ClientToServer, FrameFlags.Dup, Send.Parser);
        Define(PacketType.Sent, PacketDirection.ServerToClient, FrameFlags.None, Sent.Parser);
        Define(PacketType.Deliver, PacketDirection.ServerToClient, FrameFlags.Dup, Deliver.Parser);
        Define(PacketType.Ack, PacketDirection.ClientToServer, FrameFlags.None, Ack.Parser);
        Define(PacketType.Read, PacketDirection.ClientToServer, FrameFlags.None, Read.Parser);
        Define(PacketType.Receipt, PacketDirection.ServerToClient, FrameFlags.None, Receipt.Parser);
        Define(PacketType.Sync, PacketDirection.ClientToServer, FrameFlags.None, Sync.Parser);
        Define(PacketType.SyncDone, PacketDirection.ServerToClient, FrameFlags.None, SyncDone.Parser);
        Define(PacketType.History, PacketDirection.ClientToServer, FrameFlags.None, History.Parser);
        Define(PacketType.HistoryPage, PacketDirection.ServerToClient, FrameFlags.None, HistoryPage.Parser);
        Define(PacketType.GroupRequest, PacketDirection.ClientToServer, FrameFlags.None, GroupRequest.Parser);
        Define(PacketType.GroupResult, PacketDirection.ServerToClient, FrameFlags.None, GroupResult.Parser);
        Define(PacketType.PresenceSet, PacketDirection.ClientToServer, FrameFlags.None, PresenceSet.Parser);
        Define(PacketType.PresenceSubscribe, PacketDirection.ClientToServer, FrameFlags.None, PresenceSubscribe.Parser);
        Define(PacketType.PresenceSubscribed, PacketDirection.ServerToClient, FrameFlags.None, PresenceSubscribed.Parser);
        Define(PacketType.Presence, PacketDirection.ServerToClient, FrameFlags.None, Presence.Parser);
        Define(PacketType.Typing, PacketDirection.ClientToServer, FrameFlags.None, Typing.Parser);
        Define(PacketType.TypingNotice, PacketDirection.ServerToClient, FrameFlags.None, TypingNotice.Parser);
        Define(PacketType.KeysUpload, PacketDirection.ClientToServer, FrameFlags.None, KeysUpload.Parser);
        Define(PacketType.KeysUploaded, PacketDirection.ServerToClient, FrameFlags.None, KeysUploaded.Parser);
        Define(PacketType.FetchKeys, PacketDirection.ClientToServer, FrameFlags.None, FetchKeys.Parser);
        Define(PacketType.KeyBundle, PacketDirection.ServerToClient, FrameFlags.None, KeyBundle.Parser);
        Define(PacketType.Settings, PacketDirection.ClientToServer, FrameFlags.None, Settings.Parser);
        Define(PacketType.SettingsResult, PacketDirection.ServerToClient, FrameFlags.None, SettingsResult.Parser);

        // Assigned here, not in an initializer: initializers run before this constructor fills Info.
        All = BuildAll();
    }

    /// <summary>Whether <paramref name="type"/> is a packet type of protocol version 1.</summary>
    public static bool IsKnown(PacketType type) => IsValidTypeValue(type) && (Info[(int)type >> 2] & KnownBit) != 0;

    /// <summary>The flags <paramref name="type"/> may carry; <see cref="FrameFlags.None"/> for unknown types.</summary>
    public static FrameFlags AllowedFlags(PacketType type) =>
        IsValidTypeValue(type) ? (FrameFlags)(Info[(int)type >> 2] & ProtocolConstants.FlagsMask) : FrameFlags.None;

    /// <summary>Who may send <paramref name="type"/>; <see cref="PacketDirection.None"/> for unknown types.</summary>
    public static PacketDirection Direction(PacketType type) =>
        IsValidTypeValue(type) ? (PacketDirection)((Info[(int)type >> 2] >> DirectionShift) & 0x3) : PacketDirection.None;

    /// <summary>The parser of the body message of <paramref name="type"/>, or null for unknown types.</summary>
    public static MessageParser? ParserFor(PacketType type) => IsValidTypeValue(type) ? Parsers[(int)type >> 2] : null;

    /// <summary>The packet type whose body is <paramref name="message"/>.</summary>
    /// <exception cref="ArgumentException">The message is not a packet body (e.g. a nested message).</exception>
    public static PacketType Of(IMessage message) => message switch
    {
        // Hot packets first: this is a chain of type tests.
        Deliver => PacketType.Deliver,
        Send => PacketType.Send,
        Sent => PacketType.Sent,
        Ack => PacketType.Ack,
        Receipt => PacketType.Receipt,
        Read => PacketType.Read,
        Ping => PacketType.Ping,
        Pong => PacketType.Pong,
        Typing => PacketType.Typing,
        TypingNotice => PacketType.TypingNotice,
        Presence => PacketType.Presence,
        Connect => PacketType.Connect,
        Connack => PacketType.Connack,
        Disconnect => PacketType.Disconnect,
        Error => PacketType.Error,
        Sync => PacketType.Sync,
        SyncDone => PacketType.SyncDone,
        History => PacketType.History,
        HistoryPage => PacketType.HistoryPage,
        GroupRequest => PacketType.GroupRequest,
        GroupResult => PacketType.GroupResult,
        PresenceSet => PacketType.PresenceSet,
        PresenceSubscribe => PacketType.PresenceSubscribe,
        PresenceSubscribed => PacketType.PresenceSubscribed,
        KeysUpload => PacketType.KeysUpload,
        KeysUploaded => PacketType.KeysUploaded,
        FetchKeys => PacketType.FetchKeys,
        KeyBundle => PacketType.KeyBundle,
        Settings => PacketType.Settings,
        SettingsResult => PacketType.SettingsResult,
        _ => ThrowNotAPacketBody(message),
    };

    /// <summary>Every packet type of protocol version 1, in numeric order.</summary>
    public static IReadOnlyList<PacketType> All { get; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static byte InfoOf(byte firstByte) => Info[firstByte >> 2];

    internal static bool IsKnownInfo(byte info) => (info & KnownBit) != 0;

    private static bool IsValidTypeValue(PacketType type) =>
        (uint)type <= 0xFF && ((int)type & ProtocolConstants.FlagsMask) == 0;

    private static void Define(PacketType type, PacketDirection direction, FrameFlags allowed, MessageParser parser)
    {
        var index = (int)type >> 2;
        Info[index] = (byte)(KnownBit | ((int)direction << DirectionShift) | (int)allowed);
        Parsers[index] = parser;
    }

    private static PacketType[] BuildAll()
    {
        var list = new List<PacketType>();
        for (var i = 0; i < Info.Length; i++)
        {
            if ((Info[i] & KnownBit) != 0)
            {
                list.Add((PacketType)(i << 2));
            }
        }

        return [.. list];
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static PacketType ThrowNotAPacketBody(IMessage message) =>
        throw new ArgumentException($"{message.Descriptor.Name} is not the body of any packet type.", nameof(message));
}
