namespace ChatBroker.Storage;

/// <summary>Why the store could not do what was asked (<see cref="StorageException.Failure"/>).</summary>
public enum StorageFailure
{
    /// <summary>The engine could not read or write: a RocksDB I/O error, a failed write batch or WAL fsync,
    /// a batch built on one that failed, a directory that cannot be opened. Nothing was acknowledged;
    /// retrying later may succeed (after a failed fsync only once the store is reopened).</summary>
    Io,

    /// <summary>Stored data cannot be read (a damaged or truncated record; RocksDB reported corruption).</summary>
    Corruption,

    /// <summary>The store is closed (disposed), or its commit writer stopped: it accepts no more writes.</summary>
    Closed,

    /// <summary>A record the request needs does not exist (e.g. the conversation a member change names).</summary>
    NotFound,

    /// <summary>The directory holds a store in another storage format, or RocksDB refused an option or argument.</summary>
    Incompatible,

    /// <summary>A bug in the store: an op or the writer threw something unexpected. The inner exception says what.</summary>
    Internal,
}

/// <summary>
/// The one exception the store throws for a failure of its own, with the reason in <see cref="Failure"/>;
/// the message says what and where. Callers catch this type and filter on the reason where it matters.
/// Bad arguments are the caller's error and stay <see cref="ArgumentException"/>s (checked before anything
/// is written); a cancelled wait for room in the queue is an <see cref="OperationCanceledException"/>.
/// </summary>
public class StorageException : Exception
{
    public StorageException(StorageFailure failure, string message) : base(message) => Failure = failure;

    public StorageException(StorageFailure failure, string message, Exception innerException) : base(message, innerException) => Failure = failure;

    public StorageFailure Failure { get; }

    /// <summary>
    /// <paramref name="error"/> as the store reports it, with <paramref name="context"/> in front of its message:
    /// a <see cref="StorageException"/> keeps its reason, a disposed engine is <see cref="StorageFailure.Closed"/>,
    /// anything else gets <paramref name="otherwise"/> (<see cref="StorageFailure.Io"/> where the engine
    /// threw it, <see cref="StorageFailure.Internal"/> where it can only be a bug).
    /// </summary>
    internal static StorageException From(string context, Exception error, StorageFailure otherwise) => error switch
    {
        StorageException storage => new StorageException(storage.Failure, context + storage.Message, storage),
        ObjectDisposedException => new StorageException(StorageFailure.Closed, context + "the message store is closed.", error),
        _ => new StorageException(otherwise, context + error.Message, error),
    };
}
