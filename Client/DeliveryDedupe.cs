namespace ChatBroker.Client;

/// <summary>
/// Remembers which (conversation id, seq) pairs were surfaced, in bounded memory, so a message is never
/// handed to the app twice (resume seams, own messages coming back, redelivery after a lost ACK).
/// <para>
/// Per conversation: a floor (every seq ≤ floor counts as seen; it starts at 0) plus a small set of seen
/// seqs above it.
/// A seq that is floor + 1 raises the floor and absorbs the set entries that became contiguous. Gaps are
/// normal (own messages the broker does not echo, expired messages), so when the set passes
/// <see cref="MaxOutOfOrder"/> the floor jumps to its smallest entry: a seq older than that many newer
/// ones would be dropped if it ever arrived for the first time, which in-order delivery (docs/protocol.md
/// §7: ascending seq within a conversation) never does. Conversations past <see cref="MaxConversations"/>
/// are forgotten oldest first; the inbox cursor still guards those against resume duplicates.
/// </para>
/// Not thread-safe: only the read loop uses it.
/// </summary>
internal sealed class DeliveryDedupe
{
    public const int MaxOutOfOrder = 32;
    public const int MaxConversations = 4096;

    private readonly Dictionary<ulong, Window> _conversations = [];
    private readonly Queue<ulong> _order = new();

    /// <summary>Whether the pair was marked before (does not mark it).</summary>
    public bool Seen(ulong conversationId, ulong seq) =>
        _conversations.TryGetValue(conversationId, out var window) && window.Seen(seq);

    /// <summary>Records the pair; false if it was seen before.</summary>
    public bool TryMark(ulong conversationId, ulong seq)
    {
        if (!_conversations.TryGetValue(conversationId, out var window))
        {
            if (_conversations.Count >= MaxConversations)
            {
                _conversations.Remove(_order.Dequeue());
            }

            window = new Window();
            _conversations.Add(conversationId, window);
            _order.Enqueue(conversationId);
        }

        return window.TryMark(seq);
    }

    private sealed class Window
    {
        private SortedSet<ulong>? _above;

        public ulong Floor { get; set; }

        public bool Seen(ulong seq) => seq <= Floor || (_above is not null && _above.Contains(seq));

        public bool TryMark(ulong seq)
        {
            if (seq <= Floor)
            {
                return false;
            }

            if (seq == Floor + 1)
            {
                Floor = seq;
                while (_above is { Count: > 0 } && _above.Min == Floor + 1)
                {
                    Floor = _above.Min;
                    _above.Remove(Floor);
                }

                return true;
            }

            _above ??= [];
            if (!_above.Add(seq))
            {
                return false;
            }

            if (_above.Count > MaxOutOfOrder)
            {
                Floor = _above.Min;
                _above.Remove(Floor);
                while (_above.Count > 0 && _above.Min == Floor + 1)
                {
                    Floor = _above.Min;
                    _above.Remove(Floor);
                }
            }

            return true;
        }
    }
}
