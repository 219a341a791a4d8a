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
    private ISignalRouter? _router;

    /// <summary>Cluster mode: TYPING goes to the conversation's owner, which knows the members, and from there through
    /// each member's home to the nodes its devices are connected at (called once, before the node serves devices).</summary>
    public void UseRouter(ISignalRouter router) => _router = router ?? throw new ArgumentNullException(nameof(router));

    public ReasonCode Relay(IDeviceLink from, Typing typing)
    {
        if (_router is { } router && !router.OwnsConversation(typing.ConversationId))
        {
            router.RelayTyping(from, typing); // a refusal comes back as ERROR, like the one below
            return ReasonCode.Success;
        }

        var members = directory.MembersOf(typing.ConversationId);
        if (members is null || !ConversationDirectory.Contains(members, from.UserId))
        {
            // A conversation that does not exist answers like one the sender is not in: ids are not probed.
            return ReasonCode.NotAMember;
        }

        TypingNotice? notice = null;
        var sent = 0;
        if (_router is { } owner)
        {
            List<string>? others = null;
            foreach (var member in members)
            {
                if (member != from.UserId)
                {
                    (others ??= []).Add(member);
                }
            }

            if (others is not null)
            {
                sent = owner.NotifyUsers(others, new TypingNotice { ConversationId = typing.ConversationId, UserId = from.UserId, Stopped = typing.Stopped });
            }

            metrics.TypingOut.Add(sent);
            return ReasonCode.Success;
        }

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
