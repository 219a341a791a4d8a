namespace ChatBroker.Broker.Cluster;

/// <summary>Counters of receipts, presence, typing and keys across nodes (<see cref="ClusterNode.SignalMetrics"/>).</summary>
public sealed class SignalMetrics
{
    /// <summary>Receipts the owner sent to a recipient's home (or kept, when the home is the owner).</summary>
    public long ReceiptsRouted;

    /// <summary>Receipts a home stored for its user (and told the user's devices).</summary>
    public long ReceiptsStored;

    /// <summary>Receipts that could not be recorded or kept (a store failure).</summary>
    public long ReceiptsFailed;

    /// <summary>Stored-receipt reads at CONNECT that the home did not answer.</summary>
    public long StoredReceiptReadsFailed;

    /// <summary>Presence subscriptions made at other nodes' homes.</summary>
    public long PresenceWatches;

    /// <summary>TYPING sent to a conversation's owner.</summary>
    public long TypingForwarded;

    /// <summary>KEYS_UPLOAD and FETCH_KEYS answered for other nodes.</summary>
    public long KeyRequests;

    /// <summary>Notices, reports and subscriptions posted to other nodes, and those dropped (a full or missing link).</summary>
    public long Posted;

    public long Dropped;
}
