using System.Buffers.Binary;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage.Codec;

/// <summary>Key and value layouts of every column family. docs/storage.md is the byte-level description
/// of this file; change both together.</summary>
internal static class Records
{
    public const int MaxIdBytes = 1024;

    // ---- messages: u64 conversation | u64 seq ----
    public static ByteWriter MessageKey(ByteWriter w, ulong conversationId, ulong seq) => w.Reset().U64(conversationId).U64(seq);

    public static ByteWriter ConversationPrefix(ByteWriter w, ulong conversationId) => w.Reset().U64(conversationId);

    public const byte MessageFormat = 1;

    // value: u8 format | i64 ts | u32 content type | str sender | str device | u64 client_msg_id
    //        | u8 has media | [str media] | body (rest)
    public static void MessageValue(ByteWriter w, long ts, AppendRequest r)
    {
        w.Reset().U8(MessageFormat).I64(ts).U32(r.ContentType).Str(r.SenderUserId).Str(r.SenderDeviceId).U64(r.ClientMsgId);
        if (r.MediaRef is null)
        {
            w.U8(0);
        }
        else
        {
            w.U8(1).Str(r.MediaRef);
        }

        w.Raw(r.Body.Span);
    }

    public static StoredMessage ReadMessage(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var k = new ByteReader(key);
        var conversationId = k.U64();
        var seq = k.U64();
        var v = new ByteReader(value);
        if (v.U8() != MessageFormat)
        {
            throw new StorageException(StorageFailure.Corruption, $"Unknown message record format in conversation {conversationId} seq {seq}.");
        }

        var ts = v.I64();
        var contentType = v.U32();
        var sender = v.Str();
        var device = v.Str();
        var clientMsgId = v.U64();
        var media = v.U8() != 0 ? v.Str() : null;
        return new StoredMessage(conversationId, seq, ts, sender, device, clientMsgId, contentType, media, v.Rest.ToArray());
    }

    /// <summary>The timestamp of a message record without decoding the rest.</summary>
    public static long MessageTimestamp(ReadOnlySpan<byte> value)
    {
        var v = new ByteReader(value);
        v.U8();
        return v.I64();
    }

    /// <summary>Bumped when a key or value layout changes incompatibly; stored under
    /// <see cref="FormatKey"/> in the default family and checked on open.</summary>
    public const uint StorageFormat = 2;

    public static readonly byte[] FormatKey = "meta/storage_format"u8.ToArray();

    // Families whose keys start with a fixed 8-byte prefix that groups one owner's keys (a conversation
    // id, or the hash of a user or device): RocksDB remembers where it last inserted under each prefix.
    public static readonly Cf[] HintedFamilies = [Cf.Messages, Cf.Inboxes, Cf.Cursors, Cf.Idempotency];

    // ---- inboxes: u64 h(str user) | str user | u64 inbox seq → u64 conversation | u64 seq | i64 ts ----
    public static ByteWriter InboxPrefix(ByteWriter w, string userId) => w.Reset().HashSlot().Str(userId).SealHash();

    public static ByteWriter InboxKey(ByteWriter w, string userId, ulong inboxSeq) => InboxPrefix(w, userId).U64(inboxSeq);

    /// <summary>Length of the per-user prefix of an inbox key (hash, then the user's str).</summary>
    public static int InboxPrefixLength(ReadOnlySpan<byte> key) => 8 + 2 + ((key[8] << 8) | key[9]);

    public static ByteWriter InboxValue(ByteWriter w, ulong conversationId, ulong seq, long ts) => w.Reset().U64(conversationId).U64(seq).I64(ts);

    public static InboxEntry ReadInbox(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var inboxSeq = TrailingU64(key);
        var v = new ByteReader(value);
        return new InboxEntry(inboxSeq, v.U64(), v.U64(), v.I64());
    }

    // ---- cursors: u64 h(str user | str device) | str user | str device | u64 stream (0 = inbox, else conversation) → u64 position ----
    public static ByteWriter CursorKey(ByteWriter w, string userId, string deviceId, CursorStream stream) =>
        w.Reset().HashSlot().Str(userId).Str(deviceId).SealHash().U64(stream.ConversationId);

    /// <summary>A user's copy mark for a conversation (docs/storage.md): a cursors-family row under the empty device id,
    /// which no device can have (ids are 1..MaxIdBytes), with the conversation as the stream → u64 seq. It is the
    /// user's, so it replicates and moves with the user's range, and an import only ever raises it.</summary>
    public static ByteWriter InboxCopyMarkKey(ByteWriter w, string userId, ulong conversationId) =>
        w.Reset().HashSlot().Str(userId).Str("").SealHash().U64(conversationId);

    /// <summary>The conversation of a cursors-family key written by <see cref="InboxCopyMarkKey"/> (hash, user, the empty
    /// device, conversation); false for a device's cursor key or a key of another shape.</summary>
    public static bool TryReadInboxCopyMarkKey(ReadOnlySpan<byte> key, out ulong conversationId)
    {
        conversationId = 0;
        if (key.Length < 8 + 2 + 2 + 8)
        {
            return false;
        }

        var device = 8 + 2 + BinaryPrimitives.ReadUInt16BigEndian(key[8..]);
        if (key.Length != device + 2 + 8 || BinaryPrimitives.ReadUInt16BigEndian(key[device..]) != 0)
        {
            return false;
        }

        conversationId = TrailingU64(key);
        return true;
    }

    // ---- conversations: u64 id → u8 kind | i64 created | str created by | u8 has title | [str title] ----
    public static ByteWriter ConversationKey(ByteWriter w, ulong id) => w.Reset().U64(id);

    public static ByteWriter ConversationValue(ByteWriter w, Conversation c)
    {
        w.Reset().U8((byte)c.Kind).I64(c.CreatedAtMs).Str(c.CreatedBy);
        return c.Title is null ? w.U8(0) : w.U8(1).Str(c.Title);
    }

    public static Conversation ReadConversation(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var id = new ByteReader(key).U64();
        var v = new ByteReader(value);
        var kind = (ConversationKind)v.U8();
        var created = v.I64();
        var by = v.Str();
        var title = v.U8() != 0 ? v.Str() : null;
        return new Conversation(id, kind, created, by, title);
    }

    // ---- members: u64 conversation | str user → u8 role | i64 joined ----
    public static ByteWriter MemberKey(ByteWriter w, ulong conversationId, string userId) => w.Reset().U64(conversationId).Str(userId);

    public static ByteWriter MemberValue(ByteWriter w, MemberRole role, long joinedAt) => w.Reset().U8((byte)role).I64(joinedAt);

    public static Member ReadMember(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var k = new ByteReader(key);
        k.U64();
        var user = k.Str();
        var v = new ByteReader(value);
        return new Member(user, (MemberRole)v.U8(), v.I64());
    }

    // ---- user_conversations: str user | u64 conversation → (empty) ----
    public static ByteWriter UserConversationKey(ByteWriter w, string userId, ulong conversationId) => w.Reset().Str(userId).U64(conversationId);

    // ---- directs: str lower user | str higher user (ordinal) → u64 conversation ----
    public static ByteWriter DirectKey(ByteWriter w, string userA, string userB)
    {
        var (lo, hi) = string.CompareOrdinal(userA, userB) <= 0 ? (userA, userB) : (userB, userA);
        return w.Reset().Str(lo).Str(hi);
    }

    // ---- idempotency: u64 h(str user | str device) | str user | str device | u64 client_msg_id → u64 conversation | u64 seq | i64 ts ----
    public static ByteWriter IdempotencyKey(ByteWriter w, string userId, string deviceId, ulong clientMsgId) =>
        w.Reset().HashSlot().Str(userId).Str(deviceId).SealHash().U64(clientMsgId);

    public static (string UserId, string DeviceId, ulong ClientMsgId) ReadIdempotencyKey(ReadOnlySpan<byte> key)
    {
        var k = new ByteReader(key);
        k.U64();
        return (k.Str(), k.Str(), k.U64());
    }

    public static ByteWriter IdempotencyValue(ByteWriter w, ulong conversationId, ulong seq, long ts) => w.Reset().U64(conversationId).U64(seq).I64(ts);

    // ---- push_jobs: u64 job id → str user | u64 conversation | u64 seq | i64 created | u32 attempts | i64 not before ----
    public static ByteWriter PushJobKey(ByteWriter w, ulong id) => w.Reset().U64(id);

    public static ByteWriter PushJobValue(ByteWriter w, PushJob j) =>
        w.Reset().Str(j.UserId).U64(j.ConversationId).U64(j.Seq).I64(j.CreatedAtMs).U32((uint)j.Attempts).I64(j.NotBeforeMs);

    public static PushJob ReadPushJob(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var id = new ByteReader(key).U64();
        var v = new ByteReader(value);
        return new PushJob(id, v.Str(), v.U64(), v.U64(), v.I64(), (int)v.U32(), v.I64());
    }

    // ---- presence: str user → i64 last seen ----
    public static ByteWriter PresenceKey(ByteWriter w, string userId) => w.Reset().Str(userId);

    // ---- account records, in the presence family (kept at the user's home, moved with the user's range) ----
    // str user | u8 1 → u8 presence visibility | u16 n | n × str contact
    // str user | u8 2 | str device → i64 revoked at (unix ms)
    public const byte SettingsTag = 1;
    public const byte RevokedTag = 2;

    public static ByteWriter SettingsKey(ByteWriter w, string userId) => w.Reset().Str(userId).U8(SettingsTag);

    public static ByteWriter SettingsValue(ByteWriter w, UserSettings settings)
    {
        w.Reset().U8((byte)settings.Visibility).U16(checked((ushort)settings.Contacts.Count));
        foreach (var contact in settings.Contacts)
        {
            w.Str(contact);
        }

        return w;
    }

    public static UserSettings ReadSettings(ReadOnlySpan<byte> value)
    {
        var v = new ByteReader(value);
        var visibility = (PresenceVisibility)v.U8();
        var contacts = new string[v.U16()];
        for (var i = 0; i < contacts.Length; i++)
        {
            contacts[i] = v.Str();
        }

        return new UserSettings(visibility, contacts);
    }

    public static ByteWriter RevokedPrefix(ByteWriter w, string userId) => w.Reset().Str(userId).U8(RevokedTag);

    public static ByteWriter RevokedKey(ByteWriter w, string userId, string deviceId) => RevokedPrefix(w, userId).Str(deviceId);

    // ---- prekeys: str user | str device | u8 0 → bundle; str user | str device | u8 1 | u32 id → public key ----
    public const byte BundleTag = 0;
    public const byte OneTimeTag = 1;

    public static ByteWriter BundleKey(ByteWriter w, string userId, string deviceId) => w.Reset().Str(userId).Str(deviceId).U8(BundleTag);

    public static ByteWriter OneTimePrefix(ByteWriter w, string userId, string deviceId) => w.Reset().Str(userId).Str(deviceId).U8(OneTimeTag);

    public static ByteWriter OneTimeKey(ByteWriter w, string userId, string deviceId, uint id) => OneTimePrefix(w, userId, deviceId).U32(id);

    public static ByteWriter UserPrefix(ByteWriter w, string userId) => w.Reset().Str(userId);

    public static ByteWriter KeyDevicePrefix(ByteWriter w, string userId, string deviceId) => w.Reset().Str(userId).Str(deviceId);

    /// <summary>The device id and tag of any key of the prekeys family.</summary>
    public static (string DeviceId, byte Tag) ReadKeyDevice(ReadOnlySpan<byte> key)
    {
        var k = new ByteReader(key);
        k.Str();
        var device = k.Str();
        return (device, k.U8());
    }

    // bundle value: blob identity | u32 signed prekey id | blob signed prekey | blob signature
    public static ByteWriter BundleValue(ByteWriter w, PrekeyBundle b) =>
        w.Reset().Blob(b.IdentityKey.Span).U32(b.SignedPrekeyId).Blob(b.SignedPrekey.Span).Blob(b.Signature.Span);

    public static PrekeyBundle ReadBundle(ReadOnlySpan<byte> value)
    {
        var v = new ByteReader(value);
        var identity = v.Blob().ToArray();
        var id = v.U32();
        var signed = v.Blob().ToArray();
        var signature = v.Blob().ToArray();
        return new PrekeyBundle(identity, id, signed, signature);
    }

    // ---- receipts: str user | u64 conversation | str reader | u8 kind (0 delivered, 1 read) → u64 seq ----
    public static ByteWriter ReceiptKey(ByteWriter w, string userId, ulong conversationId, string readerUserId, bool read) =>
        w.Reset().Str(userId).U64(conversationId).Str(readerUserId).U8(read ? (byte)1 : (byte)0);

    public static StoredReceipt ReadReceipt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var k = new ByteReader(key);
        k.Str();
        var conversationId = k.U64();
        var reader = k.Str();
        return new StoredReceipt(conversationId, reader, k.U8() != 0, new ByteReader(value).U64());
    }

    // ---- default family: meta records ----
    public static readonly byte[] PushJobHighWaterKey = "meta/push_job_last_id"u8.ToArray();

    public static ulong TrailingU64(ReadOnlySpan<byte> key) => new ByteReader(key[^8..]).U64();

    public static uint TrailingU32(ReadOnlySpan<byte> key) => new ByteReader(key[^4..]).U32();

    public static void ValidateId(string value, string name)
    {
        ArgumentNullException.ThrowIfNull(value, name);
        // A UTF-16 char is at most 3 UTF-8 bytes (a surrogate pair, two chars, is 4; a lone one becomes U+FFFD, 3):
        // an id of up to MaxIdBytes / 3 chars needs no count. Every append checks its ids (~2 % of a paced SEND).
        if (value.Length == 0 || (value.Length > MaxIdBytes / 3 && System.Text.Encoding.UTF8.GetByteCount(value) > MaxIdBytes))
        {
            throw new ArgumentException($"{name} must be 1..{MaxIdBytes} UTF-8 bytes.", name);
        }
    }
}
