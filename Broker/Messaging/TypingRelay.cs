using ChatBroker.Broker.Observability;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// TYPING → TYPING_NOTICE to the online devices (with CAPABILITY_TYPING) of the conversation's other members.
/// Ephemeral by design: nothing is stored, nothing is resent to a device that connects later. The per-connection
/// rate limit is the session's (limits.typing_per_second).
/// </summary>
public sealed class TypingRelay(ConversationDirectory directory, SessionRegistry registry, BrokerMetrics metrics)
{
    /// <summary>Relays the notice; NOT_A_MEMBER when the sender is not in the conversation (or it does not exist).</summary>
    public ReasonCode Relay(IDeviceLink from, Typing typing)
    {
        var members = directory.MembersOf(typing.ConversationId);
        if (members is null || !ConversationDirectory.Contains(members, from.UserId))
        {
            // A conversation that does not exist answers like one the sender is not in: ids are not probed.
            return ReasonCode.NotAMember;
        }

        TypingNotice? notice = null;
        var sent = 0;
        foreach (var member in members)
        {
            if (member == from.UserId)
            {
                continue;
            }

            foreach (var device in registry.DevicesOf(member))
            {
                if ((device.Capabilities & (ulong)Capability.Typing) != 0)
                {
                    notice ??= new TypingNotice { ConversationId = typing.ConversationId, UserId = from.UserId, Stopped = typing.Stopped };
                    device.OnNotice(notice);
                    sent++;
                }
            }
        }

        metrics.TypingOut.Add(sent);
        return ReasonCode.Success;
    }
}
