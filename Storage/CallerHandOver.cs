using System.Threading.Channels;

namespace ChatBroker.Storage;

/// <summary>
/// The hand-over between callers (<see cref="Durability.Async"/> only). A caller that writes its own op
/// (<see cref="CommitWriter"/>, CommitWriter.CallerWrite.cs) while it holds an
/// <see cref="AppendCompletionScope"/> opens this for as long as it holds the builder lock; a caller that
/// arrives meanwhile hands its op here instead of queuing it for the builder thread, and the writing
/// caller writes it before it lets go of the builder lock and completes it in its scope.
/// <para>
/// Its lock, <c>_handOverLock</c>, guards the list and the open flag; it is taken inside the builder lock
/// (by the writing caller) or alone (by a caller handing over), never the other way round, and nothing is
/// taken while it is held.
/// </para>
/// </summary>
internal sealed class CallerHandOver(ChannelReader<WriteOp> queue, int maxOps)
{
    private readonly Lock _handOverLock = new();
    private List<WriteOp> _handedOps = [];
    private List<WriteOp> _writingHanded = []; // the writing caller's, while it writes what it took
    // True while a caller holds the builder lock and will still look at _handedOps.
    private bool _open;

    /// <summary>Called by the writing caller, under the builder lock: ops may be handed to it from now on.</summary>
    public void Open()
    {
        lock (_handOverLock)
        {
            _open = true;
        }
    }

    /// <summary>
    /// Hands <paramref name="op"/> to the caller writing now, if one is open for it. Order is kept: an
    /// earlier op of this caller is either still queued (then this one queues too), handed over already
    /// (then it is ahead in the same list), or written.
    /// </summary>
    public bool TryHand(WriteOp op)
    {
        if (!Volatile.Read(ref _open))
        {
            return false; // the usual case without scopes (the builder thread, or a caller outside one, writes)
        }

        lock (_handOverLock)
        {
            if (!_open || queue.Count != 0 || _handedOps.Count >= maxOps)
            {
                return false;
            }

            _handedOps.Add(op);
            return true;
        }
    }

    /// <summary>Takes what was handed so far (the returned list is the writing caller's until the next
    /// take: it clears it). Closes when nothing was handed or on the <paramref name="last"/> round: nobody
    /// adds after that, so this take is the final one.</summary>
    public List<WriteOp> Take(bool last)
    {
        lock (_handOverLock)
        {
            if (_handedOps.Count == 0 || last)
            {
                _open = false;
            }

            (_handedOps, _writingHanded) = (_writingHanded, _handedOps);
            return _writingHanded;
        }
    }

    /// <summary>After a bug in the writing caller: closes and returns everything taken or handed, to fail it.</summary>
    public List<WriteOp> CloseAndTakeAll()
    {
        lock (_handOverLock)
        {
            _open = false;
            _writingHanded.AddRange(_handedOps);
            _handedOps.Clear();
            return _writingHanded;
        }
    }
}
