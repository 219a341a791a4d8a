using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Protocol.Tests;

/// <summary>A realistic, fully populated body for every packet type.</summary>
internal static class Samples
{
    public const ulong ConversationId = 4_294_967_297;   // ~2^32
    public const ulong ClientMsgId = 1_099_511_627_791;  // ~2^40

    public static byte[] Body(int length, int seed = 1)
    {
        var body = new byte[length];
        new Random(seed).NextBytes(body);
        return body;
    }

    public static IEnumerable<IMessage> All()
    {
        yield return new Connect
        {
            ProtocolVersion = 1,
            UserId = "alice",
            DeviceId = "phone-1",
            Token = "eyJ1IjoiYWxpY2UifQ.c2lnbmF0dXJl",
            KeepaliveS = 300,
            ResumeInboxSeq = 1234,
            ResumeConversations = { new ConversationCursor { ConversationId = 77, Seq = 9001 } },
            Capabilities = (ulong)(Capability.Receipts | Capability.Typing),
            MaxFrameSize = 65536,
            ClientInfo = "acme-android/2.3.1",
        };
        yield return new Connack
        {
            Reason = ReasonCode.Success,
            SessionId = "s-5f2c",
            ServerTimeMs = 1_764_096_000_000,
            KeepaliveS = 300,
            MaxFrameSize = 65536,
            Capabilities = 3,
        };
        yield return new Disconnect { Reason = ReasonCode.ServerShuttingDown, Message = "restarting", RetryAfterMs = 5000 };
        yield return new Error
        {
            Reason = ReasonCode.NotAMember,
            Message = "not a member of 77",
            RequestId = ClientMsgId,
            InReplyTo = PacketType.Send,
        };
        yield return new Ping();
        yield return new Pong();
        yield return new Send
        {
            ClientMsgId = ClientMsgId,
            ConversationId = ConversationId,
            ContentType = ContentType.Image,
            Body = ByteString.CopyFrom(Body(100)),
            Media = new MediaRef { MediaId = "m-1", MimeType = "image/jpeg", SizeBytes = 123456, Sha256 = ByteString.CopyFrom(Body(32, 2)), Width = 640, Height = 480 },
        };
        yield return new Sent { ClientMsgId = ClientMsgId, ConversationId = ConversationId, Seq = 17, TimestampMs = 1_764_096_000_123 };
        yield return new Deliver
        {
            ConversationId = ConversationId,
            Seq = 17,
            SenderUserId = "alice",
            SenderDeviceId = "phone-1",
            TimestampMs = 1_764_096_000_123,
            ContentType = ContentType.Text,
            Body = ByteString.CopyFrom(Body(100)),
            InboxSeq = 1235,
        };
        yield return new Ack { InboxSeq = 1235, Conversations = { new ConversationCursor { ConversationId = 77, Seq = 9005 } } };
        yield return new Read { ConversationId = ConversationId, UpToSeq = 17 };
        yield return new Receipt
        {
            ConversationId = ConversationId,
            Kind = ReceiptKind.Read,
            FromSeq = 15,
            UpToSeq = 17,
            ReaderUserId = "bob",
            TimestampMs = 1_764_096_001_000,
        };
        yield return new Sync { RequestId = 5, InboxSeq = 1235, Conversations = { new ConversationCursor { ConversationId = 78, Seq = 1 } } };
        yield return new SyncDone { RequestId = 5, InboxSeq = 1240 };
        yield return new History { RequestId = 6, ConversationId = ConversationId, BeforeSeq = 17, Limit = 50 };
        yield return new HistoryPage
        {
            RequestId = 6,
            ConversationId = ConversationId,
            Messages = { new Deliver { ConversationId = ConversationId, Seq = 16, SenderUserId = "bob", Body = ByteString.CopyFromUtf8("hey") } },
            More = true,
        };
        yield return new GroupRequest { RequestId = 7, Create = new GroupCreate { Title = "climbing", MemberUserIds = { "bob", "carol" } } };
        yield return new GroupResult
        {
            RequestId = 7,
            ConversationId = 99,
            Seq = 1,
            Groups = { new GroupInfo { ConversationId = 99, Title = "climbing", Members = { new GroupMember { UserId = "alice", Admin = true } } } },
        };
        yield return new PresenceSet { Status = PresenceStatus.Away };
        yield return new PresenceSubscribe { RequestId = 8, UserIds = { "bob", "carol" } };
        yield return new PresenceSubscribed { RequestId = 8, Current = { new Presence { UserId = "bob", Status = PresenceStatus.Offline, LastSeenMs = 1_764_095_000_000 } } };
        yield return new Presence { UserId = "bob", Status = PresenceStatus.Online };
        yield return new Typing { ConversationId = ConversationId };
        yield return new TypingNotice { ConversationId = ConversationId, UserId = "bob", Stopped = true };
        yield return new KeysUpload
        {
            RequestId = 9,
            IdentityKey = ByteString.CopyFrom(Body(32, 3)),
            SignedPrekey = new SignedPrekey { KeyId = 1, PublicKey = ByteString.CopyFrom(Body(32, 4)), Signature = ByteString.CopyFrom(Body(64, 5)) },
            OneTimePrekeys = { new OneTimePrekey { KeyId = 100, PublicKey = ByteString.CopyFrom(Body(32, 6)) } },
        };
        yield return new KeysUploaded { RequestId = 9, OneTimePrekeysRemaining = 99 };
        yield return new FetchKeys { RequestId = 10, UserId = "bob" };
        yield return new KeyBundle
        {
            RequestId = 10,
            UserId = "bob",
            Devices = { new DeviceKeys { DeviceId = "tablet", IdentityKey = ByteString.CopyFrom(Body(32, 7)) } },
        };
        yield return new Settings { RequestId = 11, SetPresenceVisibility = true, PresenceVisibility = PresenceVisibility.Contacts, AddContacts = { "bob" } };
        yield return new SettingsResult { RequestId = 11, PresenceVisibility = PresenceVisibility.Contacts, ContactCount = 1 };
    }

    /// <summary>All sample frames back to back, each SEND and DELIVER twice (once with DUP).</summary>
    public static byte[] Stream(out List<(PacketType Type, FrameFlags Flags, IMessage Message)> expected)
    {
        expected = [];
        var writer = new System.Buffers.ArrayBufferWriter<byte>();
        foreach (var message in All())
        {
            var type = PacketTypes.Of(message);
            FrameWriter.Write(writer, message);
            expected.Add((type, FrameFlags.None, message));
            if (PacketTypes.AllowedFlags(type) != FrameFlags.None)
            {
                FrameWriter.Write(writer, message, FrameFlags.Dup);
                expected.Add((type, FrameFlags.Dup, message));
            }
        }

        return writer.WrittenSpan.ToArray();
    }
}
