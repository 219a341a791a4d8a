using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

/// <summary>Where a family's records name the conversation or user they belong to (docs/storage.md).</summary>
internal enum RangeOwner
{
    /// <summary>u64 conversation id in the key's first 8 bytes.</summary>
    ConversationAtKeyStart,

    /// <summary>u64 conversation id in the key's last 8 bytes.</summary>
    ConversationAtKeyEnd,

    /// <summary>u64 conversation id in the value's first 8 bytes.</summary>
    ConversationAtValueStart,

    /// <summary>str user first in the key.</summary>
    UserAtKeyStart,

    /// <summary>str user after the key's 8-byte hash prefix.</summary>
    UserAfterKeyHash,
}

/// <summary>
/// The families a range hand-over moves, in transfer order, and where each one's owner sits. A new column family
/// that belongs to a conversation or a user moves with one line here; families of node-local state (push jobs,
/// meta) are absent and never move. Conversations' families come first, so a target has a conversation's record
/// and members before the messages and idempotency marks that refer to it.
/// </summary>
internal static class RangeTransferLayout
{
    public static readonly (Cf Family, RangeOwner Owner)[] Families =
    [
        (Cf.Conversations, RangeOwner.ConversationAtKeyStart),
        (Cf.Members, RangeOwner.ConversationAtKeyStart),
        (Cf.UserConversations, RangeOwner.ConversationAtKeyEnd),
        (Cf.Directs, RangeOwner.ConversationAtValueStart),
        (Cf.Messages, RangeOwner.ConversationAtKeyStart),
        (Cf.Idempotency, RangeOwner.ConversationAtValueStart),
        (Cf.Inboxes, RangeOwner.UserAfterKeyHash),
        (Cf.Cursors, RangeOwner.UserAfterKeyHash),
        (Cf.Presence, RangeOwner.UserAtKeyStart),
        (Cf.Prekeys, RangeOwner.UserAtKeyStart),
        (Cf.Receipts, RangeOwner.UserAtKeyStart),
    ];

    public static RangeOwner? OwnerOf(Cf family)
    {
        foreach (var (cf, owner) in Families)
        {
            if (cf == family)
            {
                return owner;
            }
        }

        return null;
    }

    /// <summary>Whether the selector takes the record; reserved users ('#…', a node's forward queues) never move.</summary>
    public static bool Takes(RangeOwner owner, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value, IRangeSelector selector)
    {
        switch (owner)
        {
            case RangeOwner.ConversationAtKeyStart:
                return key.Length >= 8 && selector.TakesConversation(new ByteReader(key).U64());
            case RangeOwner.ConversationAtKeyEnd:
                return key.Length >= 8 && selector.TakesConversation(Records.TrailingU64(key));
            case RangeOwner.ConversationAtValueStart:
                return value.Length >= 8 && selector.TakesConversation(new ByteReader(value).U64());
            default:
                var user = UserOf(owner, key);
                return user.Length > 0 && user[0] != '#' && selector.TakesUser(user);
        }
    }

    /// <summary>The user a user-owned record belongs to; throws <see cref="StorageException"/> on a truncated key.</summary>
    public static string UserOf(RangeOwner owner, ReadOnlySpan<byte> key)
    {
        var reader = new ByteReader(key);
        if (owner == RangeOwner.UserAfterKeyHash)
        {
            reader.U64();
        }

        return reader.Str();
    }
}
