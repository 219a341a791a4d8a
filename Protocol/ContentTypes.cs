using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol;

/// <summary>The content_type ranges of chat.proto: 0-9 well-known, 10-63 reserved (SYSTEM = 15 is the server's), 64 and above free for applications.</summary>
public static class ContentTypes
{
    public const uint FirstApplicationValue = 64;

    /// <summary>Whether a client may SEND this content_type: the reserved range, SYSTEM included, is the server's.</summary>
    public static bool IsClientWritable(ContentType type) =>
        (uint)type <= (uint)ContentType.Encrypted || (uint)type >= FirstApplicationValue;
}
