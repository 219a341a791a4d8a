using System.Collections.Concurrent;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Messaging;

/// <summary>
/// Members of conversations and ids of direct chats, cached in front of the store because every SEND needs
/// them. Bounded: past <c>capacity</c> entries the cache is emptied and refills from the store (a crude but
/// safe bound; an LRU is a later refinement). Group membership changes replace a group's members with
/// <see cref="SetMembers"/> under the group's <see cref="GateOf">gate</see>, and call <see cref="Invalidate"/>
/// when a change could not be stored.
/// <para>
/// The gate of a group orders "which members does this message go to" against membership changes: a SEND
/// reads the members and enqueues its append under the gate, and a change swaps the members and enqueues its
/// SYSTEM message under the gate, so a message sequenced after a removal never goes to the removed user.
/// </para>
/// </summary>
public sealed class ConversationDirectory(IChatStore store, int capacity = 1_000_000)
{
    private readonly ConcurrentDictionary<ulong, string[]> _members = new();
    private readonly ConcurrentDictionary<(string, string), ulong> _direct = new();
    private readonly ConcurrentDictionary<ulong, bool> _groups = new();
    private readonly ConcurrentDictionary<ulong, Lock> _gates = new();

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

    /// <summary>The refusal of a direct conversation whose derived id holds another pair (cluster mode): the
    /// gateway tries the pair's next candidate id.</summary>
    public const string DirectIdTaken = "the derived id of this direct conversation is taken by another pair";

    /// <summary>Cluster mode: the id a pair's direct conversation was resolved to, if this node has seen it.</summary>
    public bool TryGetDirect(string userA, string userB, out ulong conversationId) =>
        _direct.TryGetValue(string.CompareOrdinal(userA, userB) < 0 ? (userA, userB) : (userB, userA), out conversationId);

    /// <summary>Cluster mode: remembers the id a pair's direct conversation resolved to.</summary>
    public void RememberDirect(string userA, string userB, ulong conversationId)
    {
        Bound(_direct);
        _direct[string.CompareOrdinal(userA, userB) < 0 ? (userA, userB) : (userB, userA)] = conversationId;
    }

    /// <summary>
    /// Cluster mode: the members of the direct conversation of two users at its derived id, created on first use;
    /// null when the id holds another pair's conversation (a hash collision).
    /// </summary>
    public async ValueTask<string[]?> GetOrCreateDirectAtAsync(ulong conversationId, string userA, string userB, CancellationToken cancellationToken)
    {
        var members = MembersOf(conversationId);
        if (members is null)
        {
            await store.GetOrCreateDirectAtAsync(conversationId, userA, userB, cancellationToken).ConfigureAwait(false);
            members = MembersOf(conversationId);
        }

        return members is { Length: 2 } && Contains(members, userA) && Contains(members, userB) ? members : null;
    }

    /// <summary>The members of a conversation, or null when it does not exist.</summary>
    public string[]? MembersOf(ulong conversationId)
    {
        if (_members.TryGetValue(conversationId, out var members))
        {
            return members;
        }

        var conversation = store.GetConversation(conversationId);
        if (conversation is null)
        {
            return null;
        }

        Bound(_groups);
        _groups[conversationId] = conversation.Kind == ConversationKind.Group;

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

    /// <summary>True when the conversation exists and is a group.</summary>
    public bool IsGroup(ulong conversationId)
    {
        if (_groups.TryGetValue(conversationId, out var group))
        {
            return group;
        }

        var conversation = store.GetConversation(conversationId);
        if (conversation is null)
        {
            return false;
        }

        group = conversation.Kind == ConversationKind.Group;
        Bound(_groups);
        _groups[conversationId] = group;
        return group;
    }

    /// <summary>Replaces the cached members of a group (under its gate, before the change is stored).</summary>
    public void SetMembers(ulong conversationId, string[] members)
    {
        Bound(_members);
        _members[conversationId] = members;
        _groups[conversationId] = true;
    }

    /// <summary>The lock that orders a group's appends against its membership changes.</summary>
    public Lock GateOf(ulong conversationId)
    {
        if (_gates.TryGetValue(conversationId, out var gate))
        {
            return gate;
        }

        // Not bounded by clearing: a cleared gate could be held by one caller while another takes a new one.
        return _gates.GetOrAdd(conversationId, static _ => new Lock());
    }

    private void Bound<TKey, TValue>(ConcurrentDictionary<TKey, TValue> map)
        where TKey : notnull
    {
        if (map.Count >= capacity)
        {
            map.Clear();
        }
    }
}
