namespace ChatBroker.Cluster.Ring;

/// <summary>
/// The separate key spaces placed on one ring. A key is hashed with its space's value as the XxHash3
/// seed, so conversation 42 and a user named "42" land independently (as if the key were prefixed
/// with its space) without building a prefixed key per lookup.
/// </summary>
public enum RingKeySpace : long
{
    /// <summary>Conversation ids: the owner sequences and stores the conversation.</summary>
    Conversation = 0x636F6E76, // "conv"

    /// <summary>User ids: the home node keeps the user's inbox, cursors, receipts, devices, presence, keys.</summary>
    User = 0x75736572, // "user"
}
