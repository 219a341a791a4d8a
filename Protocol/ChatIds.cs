using System.Text;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol;

/// <summary>
/// The one rule for user and device ids (docs/protocol.md §5): 1-128 bytes of UTF-8, not starting with '#'
/// (that prefix names the broker's own cursors and the SYSTEM sender device). Token issue, CONNECT, SEND,
/// group and presence requests all check ids here.
/// </summary>
public static class ChatIds
{
    public const char ReservedPrefix = '#';

    /// <summary>Success, MissingField (empty) or InvalidField (too long or reserved).</summary>
    public static ReasonCode Validate(string id)
    {
        if (id.Length == 0)
        {
            return ReasonCode.MissingField;
        }

        if (id[0] == ReservedPrefix)
        {
            return ReasonCode.InvalidField;
        }

        // Cheap upper bound first: a UTF-16 unit is at most 3 UTF-8 bytes.
        if (id.Length * 3 <= ProtocolConstants.MaxIdLength)
        {
            return ReasonCode.Success;
        }

        return Encoding.UTF8.GetByteCount(id) > ProtocolConstants.MaxIdLength ? ReasonCode.InvalidField : ReasonCode.Success;
    }

    /// <summary>Why <paramref name="id"/> is not a valid id, or null when it is.</summary>
    public static string? Describe(string id) => Validate(id) switch
    {
        ReasonCode.Success => null,
        ReasonCode.MissingField => "an id must not be empty",
        _ => id[0] == ReservedPrefix
            ? $"ids starting with '{ReservedPrefix}' are reserved"
            : $"an id is at most {ProtocolConstants.MaxIdLength} bytes of UTF-8",
    };
}
