namespace ChatBroker.Protocol;

/// <summary>Numbers every implementation of the wire protocol must agree on.</summary>
public static class ProtocolConstants
{
    /// <summary>The protocol version this library speaks (Connect.protocol_version).</summary>
    public const uint ProtocolVersion = 1;

    /// <summary>Default maximum body length (remaining length) a peer accepts: 64 KiB.</summary>
    public const int DefaultMaxFrameSize = 64 * 1024;

    /// <summary>The largest value a 4-byte MQTT remaining-length varint can carry (2^28 - 1).</summary>
    public const int MaxRemainingLength = 268_435_455;

    /// <summary>1 type byte + at most 4 length bytes.</summary>
    public const int MaxHeaderLength = 5;

    /// <summary>Longest user or device id, in UTF-8 bytes.</summary>
    public const int MaxIdLength = 128;

    /// <summary>Mask of the first byte that keeps the packet type (family and op).</summary>
    public const byte TypeMask = 0xFC;

    /// <summary>Mask of the first byte that keeps the flags.</summary>
    public const byte FlagsMask = 0x03;
}
