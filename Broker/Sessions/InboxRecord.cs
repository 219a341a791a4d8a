namespace ChatBroker.Broker.Sessions;

/// <summary>
/// The inbox entries a device's inbox stream has passed since the device's last ACK, in position order, and the
/// inbox cursor that ACK stored: what an ACK needs, kept so that acknowledging what the session itself delivered
/// costs no store read (<see cref="Messaging.ChatService.AckAsync"/>: no cursor <c>Get</c>, no inbox iterator;
/// the ACK was ~16 % of the broker's CPU at 10,000 paced msg/s, half of it those two reads).
/// <para>
/// The stream notes every position it moves to, the device's own messages included (they are inbox entries too:
/// an ACK covers them). Only a run without a gap is kept: a jump (a SYNC or a resume moving the stream, an entry
/// whose message retention removed) starts the run again, and an ACK that reaches outside the run is answered
/// from the store as before. So the record answers exactly what the store would, or nothing.
/// </para>
/// Memory: nothing until the stream passes its first entry; then ~40 bytes, plus 16 bytes per entry not yet
/// acknowledged (at most <see cref="MaxEntries"/>: past that the oldest half goes and an ACK reaching back to it
/// reads the store). The entries' array is let go when an ACK empties it, so an idle device holds none.
/// Locking: guarded by the session's lock, like the stream that owns it.
/// </summary>
internal sealed class InboxRecord
{
    /// <summary>The most entries kept: a device that leaves more than this unacknowledged costs at most
    /// 2 KiB here (its outbox holds far more) and has its ACKs answered from the store.</summary>
    internal const int MaxEntries = 128;

    private (ulong ConversationId, ulong Seq)[]? _entries; // _entries[i] is position _first + i
    private ulong _first;
    private int _count;

    /// <summary>True once an ACK through this session was stored: <see cref="AckedCursor"/> is then the
    /// device's inbox cursor as that ACK left it (receipts were sent up to it).</summary>
    public bool HasAcked { get; private set; }

    public ulong AckedCursor { get; private set; }

    /// <summary>Positions held now (tests and the record's own checks).</summary>
    public int Count => _count;

    /// <summary>True while the record has an array of entries (memory an idle device should not hold).</summary>
    public bool HoldsEntries => _entries is not null;

    /// <summary>The stream moved to <paramref name="position"/>, an entry of <paramref name="conversationId"/>
    /// at <paramref name="seq"/>.</summary>
    public void Note(ulong position, ulong conversationId, ulong seq)
    {
        if (_count > 0 && position != _first + (ulong)_count)
        {
            _count = 0; // a jump: what came before is not a run with this
        }

        if (_count == 0)
        {
            _first = position;
        }

        if (_entries is null || _count == _entries.Length)
        {
            if (_count == MaxEntries)
            {
                var drop = _count / 2;
                Array.Copy(_entries!, drop, _entries!, 0, _count - drop);
                _first += (ulong)drop;
                _count -= drop;
            }
            else
            {
                Array.Resize(ref _entries, Math.Min(MaxEntries, Math.Max(8, _count * 2)));
            }
        }

        _entries![_count++] = (conversationId, seq);
    }

    /// <summary>The stream jumped (SYNC, resume) or passed an entry it cannot describe: no run continues. The array
    /// goes too: a device that goes idle after a SYNC would otherwise keep it until a message and an ACK came.</summary>
    public void Break()
    {
        _count = 0;
        _entries = null;
    }

    /// <summary>
    /// When every position in (<paramref name="after"/>, <paramref name="through"/>] is held: raises
    /// <paramref name="highest"/>[conversation] to the highest seq among them and returns true. False (and
    /// <paramref name="highest"/> untouched) when any is missing.
    /// </summary>
    public bool TryCollect(ulong after, ulong through, Dictionary<ulong, ulong> highest)
    {
        if (_count == 0 || through <= after || after + 1 < _first || through > _first + (ulong)_count - 1)
        {
            return false;
        }

        for (var position = after + 1; position <= through; position++)
        {
            var (conversationId, seq) = _entries![position - _first];
            ref var high = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(highest, conversationId, out _);
            high = Math.Max(high, seq);
        }

        return true;
    }

    /// <summary>An ACK stored the inbox cursor at <paramref name="cursor"/>: entries up to it are no longer needed.</summary>
    public void Acked(ulong cursor)
    {
        HasAcked = true;
        AckedCursor = Math.Max(AckedCursor, cursor);
        Forget(AckedCursor);
    }

    /// <summary>Drops the entries up to <paramref name="through"/> (acknowledged, whoever stored it).</summary>
    public void Forget(ulong through)
    {
        if (_count == 0 || through < _first)
        {
            return;
        }

        var upToCursor = through - _first + 1; // positions _first..through
        var drop = upToCursor >= (ulong)_count ? _count : (int)upToCursor;
        _count -= drop;
        if (_count == 0)
        {
            _entries = null; // an idle device holds no array
        }
        else
        {
            Array.Copy(_entries!, drop, _entries!, 0, _count);
            _first += (ulong)drop;
        }
    }
}
