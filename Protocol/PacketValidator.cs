using ChatBroker.Protocol.Messages;
using Google.Protobuf;
using Google.Protobuf.Collections;

namespace ChatBroker.Protocol;

/// <summary>
/// The required-field rules of docs/protocol.md ("Required fields"). proto3 has no required
/// fields, so the codec checks them after parsing: a missing one is
/// <see cref="ReasonCode.MissingField"/>, a contradictory or out-of-range one is
/// <see cref="ReasonCode.InvalidField"/>.
/// </summary>
public static class PacketValidator
{
    public static ReasonCode Validate(IMessage message) => message switch
    {
        Deliver m => m.ConversationId == 0 || m.Seq == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        Send m => ValidateSend(m.ClientMsgId, m.ConversationId, m.ToUserId),
        Sent m => m.ClientMsgId == 0 || m.ConversationId == 0 || m.Seq == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        Ack m => ValidateAck(m),
        Read m => m.ConversationId == 0 || m.UpToSeq == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        Receipt m => ValidateReceipt(m),
        Ping or Pong => ReasonCode.Success,
        Connect m => ValidateConnect(m),
        Connack => ReasonCode.Success,
        Disconnect => ReasonCode.Success,
        Error m => m.Reason == ReasonCode.Success ? ReasonCode.MissingField : ReasonCode.Success,
        Sync m => ValidateCursors(m.Conversations),
        SyncDone m => ValidateCursors(m.Conversations),
        History m => m.ConversationId == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        HistoryPage m => m.ConversationId == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        GroupRequest m => ValidateGroupRequest(m),
        GroupResult => ReasonCode.Success,
        PresenceSet m => m.Status == PresenceStatus.Unspecified ? ReasonCode.MissingField : ReasonCode.Success,
        PresenceSubscribe m => ValidateUserIds(m.UserIds),
        PresenceSubscribed => ReasonCode.Success,
        Presence m => m.UserId.Length == 0 || m.Status == PresenceStatus.Unspecified ? ReasonCode.MissingField : ReasonCode.Success,
        Typing m => m.ConversationId == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        TypingNotice m => m.ConversationId == 0 || m.UserId.Length == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        KeysUpload m => m.IdentityKey.IsEmpty && m.SignedPrekey is null && m.OneTimePrekeys.Count == 0
            ? ReasonCode.MissingField
            : ReasonCode.Success,
        KeysUploaded => ReasonCode.Success,
        FetchKeys m => ValidateId(m.UserId),
        KeyBundle m => m.UserId.Length == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        Settings m => ValidateSettings(m),
        SettingsResult => ReasonCode.Success,
        _ => ReasonCode.UnknownPacketType,
    };

    private static ReasonCode ValidateConnect(Connect m)
    {
        if (m.ProtocolVersion == 0 || m.UserId.Length == 0 || m.DeviceId.Length == 0 || m.Token.Length == 0)
        {
            return ReasonCode.MissingField;
        }

        if (m.ProtocolVersion != ProtocolConstants.ProtocolVersion)
        {
            return ReasonCode.UnsupportedVersion;
        }

        var result = ValidateId(m.UserId);
        if (result == ReasonCode.Success)
        {
            result = ValidateId(m.DeviceId);
        }

        return result == ReasonCode.Success ? ValidateCursors(m.ResumeConversations) : result;
    }

    internal static ReasonCode ValidateSend(ulong clientMsgId, ulong conversationId, string toUserId)
    {
        if (clientMsgId == 0)
        {
            return ReasonCode.MissingField;
        }

        var hasConversation = conversationId != 0;
        var hasUser = toUserId.Length != 0;
        if (hasConversation == hasUser)
        {
            // Neither address is missing information; both is a contradiction.
            return hasConversation ? ReasonCode.InvalidField : ReasonCode.MissingField;
        }

        return hasUser ? ValidateId(toUserId) : ReasonCode.Success;
    }

    private static ReasonCode ValidateAck(Ack m)
    {
        if (m.InboxSeq == 0 && m.Conversations.Count == 0)
        {
            return ReasonCode.MissingField;
        }

        return ValidateCursors(m.Conversations);
    }

    private static ReasonCode ValidateReceipt(Receipt m)
    {
        if (m.ConversationId == 0 || m.Kind == ReceiptKind.Unspecified || m.UpToSeq == 0 || m.ReaderUserId.Length == 0)
        {
            return ReasonCode.MissingField;
        }

        return m.FromSeq > m.UpToSeq ? ReasonCode.InvalidField : ReasonCode.Success;
    }

    private static ReasonCode ValidateCursors(RepeatedField<ConversationCursor> cursors)
    {
        for (var i = 0; i < cursors.Count; i++)
        {
            if (cursors[i].ConversationId == 0)
            {
                return ReasonCode.MissingField;
            }
        }

        return ReasonCode.Success;
    }

    private static ReasonCode ValidateGroupRequest(GroupRequest m) => m.OpCase switch
    {
        GroupRequest.OpOneofCase.Create => m.Create.MemberUserIds.Count == 0 ? ReasonCode.Success : ValidateUserIds(m.Create.MemberUserIds),
        GroupRequest.OpOneofCase.AddMembers => ValidateMembers(m.AddMembers),
        GroupRequest.OpOneofCase.RemoveMembers => ValidateMembers(m.RemoveMembers),
        GroupRequest.OpOneofCase.Leave => m.Leave.ConversationId == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        GroupRequest.OpOneofCase.Get => m.Get.ConversationId == 0 ? ReasonCode.MissingField : ReasonCode.Success,
        GroupRequest.OpOneofCase.List => ReasonCode.Success,
        GroupRequest.OpOneofCase.SetAdmin => m.SetAdmin.ConversationId == 0 ? ReasonCode.MissingField : ValidateId(m.SetAdmin.UserId),
        _ => ReasonCode.MissingField,
    };

    private static ReasonCode ValidateMembers(GroupMembers m) =>
        m.ConversationId == 0 ? ReasonCode.MissingField : ValidateUserIds(m.UserIds);

    private static ReasonCode ValidateUserIds(RepeatedField<string> ids)
    {
        if (ids.Count == 0)
        {
            return ReasonCode.MissingField;
        }

        for (var i = 0; i < ids.Count; i++)
        {
            var result = ValidateId(ids[i]);
            if (result != ReasonCode.Success)
            {
                return result;
            }
        }

        return ReasonCode.Success;
    }

    private static ReasonCode ValidateId(string id) => ChatIds.Validate(id);

    // Nothing is required (a bare SETTINGS reads them); every contact id follows the id rule, and a visibility
    // this version does not know is out of range.
    private static ReasonCode ValidateSettings(Settings m)
    {
        if (m.PresenceVisibility is < PresenceVisibility.Everyone or > PresenceVisibility.Nobody)
        {
            return ReasonCode.InvalidField;
        }

        foreach (var list in (ReadOnlySpan<RepeatedField<string>>)[m.Contacts, m.AddContacts, m.RemoveContacts])
        {
            for (var i = 0; i < list.Count; i++)
            {
                var result = ValidateId(list[i]);
                if (result != ReasonCode.Success)
                {
                    return result;
                }
            }
        }

        return ReasonCode.Success;
    }
}
