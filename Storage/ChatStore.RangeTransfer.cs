using ChatBroker.Storage.Codec;
using ChatBroker.Storage.Engine;

namespace ChatBroker.Storage;

// IRangeTransfer: a moving range's records out of this store and into another (docs/cluster.md, "Ring changes").
public abstract partial class ChatStore
{
    public RangeExportPage ExportRange(IRangeSelector selector, RangePosition from, int maxRecords, int maxBytes)
    {
        ArgumentNullException.ThrowIfNull(selector);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRecords, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBytes, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(from.FamilyIndex);
        var families = RangeTransferLayout.Families;
        var records = new List<RangeRecord>();
        long bytes = 0;
        var messageKey = new ByteWriter(16);
        for (var f = from.FamilyIndex; f < families.Length; f++)
        {
            var (family, owner) = families[f];
            var lower = f == from.FamilyIndex ? from.FromKey.Span : default;
            using var cursor = _engine.OpenCursor(family, lower, []);
            for (cursor.SeekToFirst(); cursor.Valid; cursor.Next())
            {
                if (records.Count >= maxRecords || bytes >= maxBytes)
                {
                    return new RangeExportPage(records, new RangePosition(f, cursor.Key.ToArray()), false, bytes);
                }

                if (!RangeTransferLayout.Takes(owner, cursor.Key, cursor.Value, selector))
                {
                    continue;
                }

                records.Add(new RangeRecord((byte)family, cursor.Key.ToArray(), cursor.Value.ToArray()));
                bytes += cursor.Key.Length + cursor.Value.Length;
                if (family == Cf.Inboxes)
                {
                    // The home keeps a copy of each message its inboxes refer to: it moves with the entry.
                    var entry = Records.ReadInbox(cursor.Key, cursor.Value);
                    Records.MessageKey(messageKey, entry.ConversationId, entry.Seq);
                    if (_engine.Get(Cf.Messages, messageKey.Span) is { } message)
                    {
                        records.Add(new RangeRecord((byte)Cf.Messages, messageKey.ToArray(), message));
                        bytes += 16 + message.Length;
                    }
                }
            }
        }

        return new RangeExportPage(records, new RangePosition(families.Length, default), true, bytes);
    }

    public Task<int> ImportRangeAsync(IReadOnlyList<RangeRecord> records, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(records);
        var puts = new ReplicaRecord[records.Count];
        for (var i = 0; i < puts.Length; i++)
        {
            puts[i] = new ReplicaRecord(records[i].Family, records[i].Key, records[i].Value, Delete: false);
        }

        return EnqueueApply(puts, "an import", cancellationToken);
    }
}

/// <summary>The rules for a record written as another node stored it (a range import, a replica's apply): what
/// makes it placeable, and the counters it raises (see <see cref="IRangeTransfer.ImportRangeAsync"/>).</summary>
internal static class ImportedRecord
{
    /// <summary>Checks a record can be placed (so that <see cref="ReplicaApplyOp"/> never throws half-way); returns the
    /// conflict key of a cursor record, else null. Throws <see cref="ArgumentException"/>.</summary>
    public static string? Validate(RangeRecord record)
    {
        var family = (Cf)record.Family;
        if (RangeTransferLayout.OwnerOf(family) is not { } owner || record.Key.Length is 0 or > 4 * Records.MaxIdBytes)
        {
            throw new ArgumentException($"range record of family {record.Family} with a {record.Key.Length}-byte key cannot be imported");
        }

        try
        {
            var key = record.Key.Span;
            var value = record.Value.Span;
            switch (family)
            {
                case Cf.Messages when key.Length != 16 || value.IsEmpty:
                case Cf.Conversations when key.Length != 8:
                case Cf.Directs or Cf.Idempotency when value.Length < 8:
                case Cf.Cursors or Cf.Receipts when value.Length != 8:
                    throw new ArgumentException($"malformed {family} record in a range import");
                case Cf.Idempotency:
                    Records.ReadIdempotencyKey(key);
                    break;
                case Cf.Cursors:
                {
                    var reader = new ByteReader(key);
                    reader.U64();
                    var user = reader.Str();
                    var device = reader.Str();
                    var stream = reader.U64();
                    return $"cursor|{user}|{device}|{stream}";
                }

                case Cf.Receipts:
                {
                    var reader = new ByteReader(key);
                    var user = reader.Str();
                    var conversation = reader.U64();
                    var readerUser = reader.Str();
                    return $"receipt|{user}|{conversation}|{readerUser}";
                }
            }

            if (owner is RangeOwner.UserAtKeyStart or RangeOwner.UserAfterKeyHash && RangeTransferLayout.UserOf(owner, key).Length == 0)
            {
                throw new ArgumentException($"malformed {family} record in a range import: no user");
            }

            if (owner is RangeOwner.ConversationAtKeyStart or RangeOwner.ConversationAtKeyEnd && key.Length < 8)
            {
                throw new ArgumentException($"malformed {family} record in a range import: no conversation");
            }
        }
        catch (StorageException e)
        {
            throw new ArgumentException($"malformed {family} record in a range import: {e.Message}", e);
        }

        return null;
    }

    /// <summary>Raises the counters an imported (or replicated) record covers; false when the record must not be
    /// written (a cursor or receipt this node already has further).</summary>
    internal static bool Raise(CommitWriter w, byte familyNumber, ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        var family = (Cf)familyNumber;
        switch (family)
        {
            case Cf.Messages:
                w.TryTakeSeq(Records.TrailingU64(key[..8]), Records.TrailingU64(key));
                break;
            case Cf.Inboxes:
                w.RaiseInboxSeq(RangeTransferLayout.UserOf(RangeOwner.UserAfterKeyHash, key), Records.TrailingU64(key));
                break;
            case Cf.Conversations:
                w.RaiseConversationId(Records.TrailingU64(key));
                break;
            case Cf.Idempotency:
                var (user, device, clientMsgId) = Records.ReadIdempotencyKey(key);
                w.NoteClientMsgId(user, device, clientMsgId);
                break;
            case Cf.Cursors when IsCopyMark(key, out var markUser, out var conversation):
                // A user's copy mark: forward only, and seen by the copies being built in this very batch.
                w.RaiseInboxCopyMark(markUser, conversation, Records.TrailingU64(value));
                return false;
            case Cf.Cursors or Cf.Receipts:
                // Cursors and receipts only move forward: one this node already moved further stays.
                var existing = w.Engine.Get(family, key);
                if (existing is { Length: 8 } && Records.TrailingU64(existing) >= Records.TrailingU64(value))
                {
                    return false;
                }

                break;
        }

        return true;
    }

    private static bool IsCopyMark(ReadOnlySpan<byte> key, out string user, out ulong conversation)
    {
        var reader = new ByteReader(key);
        reader.U64();
        user = reader.Str();
        var device = reader.Str();
        conversation = reader.U64();
        return device.Length == 0;
    }
}
