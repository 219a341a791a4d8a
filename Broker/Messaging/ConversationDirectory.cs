using System.Collections.Concurrent;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Members of conversations and ids of direct chats, cached in front of the store because every SEND needs
/// them. Bounded: past <c>capacity</c> entries the cache is emptied and refills from the store (a crude but
/// safe bound; an LRU is a later refinement). Group membership changes call <see cref="Invalidate"/>.
/// </summary>
public sealed class ConversationDirectory(IChatStore store, int capacity = 1_000_000)
{
    private readonly ConcurrentDictionary<ulong, string[]> _members = new();
    private readonly ConcurrentDictionary<(string, string), ulong> _direct = new();

    /// <summary>The direct conversation of two distinct users, created on first use.</summary>
    public async ValueTask<ulong> GetOrCreateDirectAsync(string userA, string userB, CancellationToken cancellationToken)
    {
        var key = string.CompareOrdinal(userA, userB) < 0 ? (userA, userB) : (userB, userA);
        if (_direct.TryGetValue(key, out var id))
        {
            return id;
        }

        var conversation = await store.GetOrCreateDirectAsync(userA, userB, cancellationToken).ConfigureAwait(false);
        Bound(_direct);
        _direct[key] = conversation.Id;
        return conversation.Id;
    }

    /// <summary>The members of a conversation, or null when it does not exist.</summary>
    public string[]? MembersOf(ulong conversationId)
    {
        if (_members.TryGetValue(conversationId, out var members))
        {
            return members;
        }

        if (store.GetConversation(conversationId) is null)
        {
            return null;
        }

        var list = store.ListMembers(conversationId);
        members = new string[list.Count];
        for (var i = 0; i < list.Count; i++)
        {
            members[i] = list[i].UserId;
        }

        Bound(_members);
        _members[conversationId] = members;
        return members;
    }

    public static bool Contains(string[] members, string userId)
    {
        foreach (var m in members)
        {
            if (m == userId)
            {
                return true;
            }
        }

        return false;
    }

    public void Invalidate(ulong conversationId) => _members.TryRemove(conversationId, out _);

    private void Bound<TKey, TValue>(ConcurrentDictionary<TKey, TValue> map)
        where TKey : notnull
    {
        if (map.Count >= capacity)
        {
            map.Clear();
        }
    }
}
