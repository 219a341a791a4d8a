namespace ChatBroker.Broker.Messaging;

/// <summary>
/// What a local session knows of its device's inbox (<c>Sessions/InboxRecord</c>), offered to
/// <see cref="ChatService.AckAsync"/> so that an ACK of what the session delivered reads nothing from the store.
/// Every answer is either what the store would give or "not known" (then the store is read).
/// </summary>
internal interface IInboxAckRecord
{
    /// <summary>The device's inbox cursor as its last ACK through this session stored it (receipts were sent up to
    /// it); false when no ACK was stored through this session yet.</summary>
    bool TryGetAckedCursor(out ulong cursor);

    /// <summary>Raises <paramref name="highest"/>[conversation] to the highest seq of the inbox entries in
    /// (<paramref name="after"/>, <paramref name="through"/>] when the session passed every one of them; false when not.</summary>
    bool TryCollect(ulong after, ulong through, Dictionary<ulong, ulong> highest);

    /// <summary>An ACK stored the inbox cursor at <paramref name="cursor"/>.</summary>
    void Acked(ulong cursor);

    /// <summary>An ACK up to <paramref name="through"/> went to the user's home on another node: the entries up to it
    /// are not needed here, and this node knows nothing of the stored cursor.</summary>
    void Forget(ulong through);
}
