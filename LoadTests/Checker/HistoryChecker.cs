namespace ChatBroker.LoadTests.Checker;

/// <summary>What the checker found; every count but the first four is a violation when above zero.</summary>
public sealed record CheckReport
{
    /// <summary>Distinct (client, client_msg_id) that got a SENT.</summary>
    public long Acked { get; init; }

    /// <summary>SENDs written again with the same client_msg_id after a reconnect or a retryable refusal.</summary>
    public long Retried { get; init; }

    /// <summary>DELIVERs of a (conversation, seq) the device had already got in an earlier session: allowed, dropped by the client's dedupe.</summary>
    public long Redelivered { get; init; }

    /// <summary>Messages in the final reads of all conversations.</summary>
    public long Stored { get; init; }

    /// <summary>An acked (conversation, seq) that the final read does not hold with the same sender and client_msg_id.</summary>
    public long Lost { get; init; }

    /// <summary>A seq stored twice, or one (sender, client_msg_id) stored under two seqs.</summary>
    public long Duplicates { get; init; }

    /// <summary>After the client's dedupe by (conversation, seq): one (sender, client_msg_id) handed to the application twice.</summary>
    public long AppDuplicates { get; init; }

    /// <summary>Seqs missing from 1..max of a conversation (max over the final read, SENTs and DELIVERs).</summary>
    public long Gaps { get; init; }

    /// <summary>A new seq delivered below one the device already had, a repeat inside one session, or a DELIVER whose content differs from the final read.</summary>
    public long OrderViolations { get; init; }

    /// <summary>A retried client_msg_id that got no SENT or SENTs with different seqs.</summary>
    public long UnresolvedRetries { get; init; }

    /// <summary>A SEND never retried that got neither SENT nor a definite refusal.</summary>
    public long Indeterminate { get; init; }

    /// <summary>A SEND the broker refused for good (SEND_FAILED) that is stored anyway.</summary>
    public long FailedButStored { get; init; }

    /// <summary>Devices (live receivers and final inbox readers) missing at least one message of their conversations.</summary>
    public long IncompleteInboxes { get; init; }

    /// <summary>The messages those devices miss, summed.</summary>
    public long MissingFromInboxes { get; init; }

    /// <summary>Informational: a sender got SENTs of one conversation with seqs not in client_msg_id order.</summary>
    public long SenderOrderInversions { get; init; }

    /// <summary>The history hit its bound: it is incomplete and proves nothing.</summary>
    public bool HistoryOverflowed { get; init; }

    /// <summary>Cluster runs: SENDs per owner node and per gateway (<see cref="OwnerTally"/>); empty on a single node.</summary>
    public OwnerReport Owners { get; init; } = OwnerReport.None;

    /// <summary>Cluster runs: for each node killed -9, how long its conversations waited for a SENT (<see cref="RecoveryTally"/>).</summary>
    public IReadOnlyList<KillRecovery> Recoveries { get; init; } = [];

    /// <summary>Refusals of SENDs whose conversation a node no nemesis touched owned; judged while the ring stays the same.</summary>
    public long OtherOwnerFailures => Owners.OtherOwnerFailures;

    public bool Passed => Lost == 0 && Duplicates == 0 && AppDuplicates == 0 && Gaps == 0 && OrderViolations == 0
        && UnresolvedRetries == 0 && Indeterminate == 0 && FailedButStored == 0 && IncompleteInboxes == 0 && !HistoryOverflowed && Acked > 0
        && (!Owners.OtherOwnersJudged || OtherOwnerFailures == 0);

    public IEnumerable<(string Name, long Value)> Counts()
    {
        yield return ("acked", Acked);
        yield return ("retried", Retried);
        yield return ("redelivered", Redelivered);
        yield return ("stored", Stored);
        yield return ("lost", Lost);
        yield return ("duplicates", Duplicates);
        yield return ("app_duplicates", AppDuplicates);
        yield return ("gaps", Gaps);
        yield return ("order_violations", OrderViolations);
        yield return ("unresolved_retries", UnresolvedRetries);
        yield return ("indeterminate", Indeterminate);
        yield return ("failed_but_stored", FailedButStored);
        yield return ("incomplete_inboxes", IncompleteInboxes);
        yield return ("missing_from_inboxes", MissingFromInboxes);
        yield return ("sender_order_inversions", SenderOrderInversions);
        if (Owners.Owners.Count > 0)
        {
            yield return ("other_owner_failures", OtherOwnerFailures);
        }
    }
}

/// <summary>
/// The checker: a pure function from a history (events of the run followed by the final reads, see
/// <see cref="HistoryEvent"/>) to counts. The rules, in docs/cluster.md "Checker":
/// <list type="number">
/// <item>No acked message lost: every SENT (conv, seq) is in the final read of conv with the same sender and client_msg_id.</item>
/// <item>No duplicate: each seq stored once, each (sender, client_msg_id) stored under one seq.</item>
/// <item>No gap: each conversation holds seqs 1..max, max over everything anyone saw of it.</item>
/// <item>Order: per device and conversation, each new seq is above every seq it had; a seq it had may come again only in a
///   later session (redelivery after reconnect, deduped); every delivered seq carries the message the final read has.</item>
/// <item>Exactly-once to the application: after dedupe by (conv, seq), no (sender, client_msg_id) surfaces twice.</item>
/// <item>Retries resolve: every client_msg_id sent more than once got SENTs naming exactly one seq; every SEND got an outcome.</item>
/// <item>Inboxes complete: every device that connected, and every fresh device reading its user's inbox from cursor 0,
///   got every message of its user's conversations (its own sends excepted for the sending device).</item>
/// <item>Cluster: no SEND to a range of a node no nemesis touched was refused, while the ring stays the same (<see cref="OwnerTally"/>).</item>
/// </list>
/// </summary>
public static class HistoryChecker
{
    private sealed class SendState
    {
        public int Attempts;
        public bool Failed;
        public readonly HashSet<(ulong Conv, ulong Seq)> Acks = [];
    }

    private sealed class DeviceConversation
    {
        public readonly Dictionary<ulong, int> FirstSession = [];
        public ulong MaxSeq;
    }

    public static CheckReport Check(IEnumerable<HistoryEvent> events, bool overflowed = false)
    {
        var history = events as IReadOnlyList<HistoryEvent> ?? [.. events];
        var sends = new Dictionary<(string Client, ulong Cmid), SendState>();
        var stored = new Dictionary<ulong, Dictionary<ulong, List<(string Sender, ulong Cmid)>>>();
        var members = new Dictionary<ulong, string[]>();
        var maxSeen = new Dictionary<ulong, ulong>();
        var devices = new HashSet<string>();
        var received = new Dictionary<string, HashSet<(ulong Conv, ulong Seq)>>();
        var deliveries = new List<HistoryEvent>();
        var sentOrder = new Dictionary<(string Client, ulong Conv), List<(ulong Cmid, ulong Seq)>>();

        SendState SendOf(string client, ulong cmid)
        {
            if (!sends.TryGetValue((client, cmid), out var s))
            {
                sends[(client, cmid)] = s = new SendState();
            }

            return s;
        }

        void See(ulong conv, ulong seq) => maxSeen[conv] = Math.Max(maxSeen.GetValueOrDefault(conv), seq);

        HashSet<(ulong, ulong)> ReceivedBy(string client)
        {
            if (!received.TryGetValue(client, out var set))
            {
                received[client] = set = [];
            }

            return set;
        }

        foreach (var e in history)
        {
            switch (e.Op)
            {
                case HistoryEvent.Connect:
                    devices.Add(e.Client!);
                    break;
                case HistoryEvent.Send:
                    SendOf(e.Client!, e.Cmid).Attempts++;
                    break;
                case HistoryEvent.Sent:
                    SendOf(e.Client!, e.Cmid).Acks.Add((e.Conv, e.Seq));
                    See(e.Conv, e.Seq);
                    if (!sentOrder.TryGetValue((e.Client!, e.Conv), out var order))
                    {
                        sentOrder[(e.Client!, e.Conv)] = order = [];
                    }

                    order.Add((e.Cmid, e.Seq));
                    break;
                case HistoryEvent.SendFailed:
                    SendOf(e.Client!, e.Cmid).Failed = true;
                    break;
                case HistoryEvent.Deliver:
                    deliveries.Add(e);
                    ReceivedBy(e.Client!).Add((e.Conv, e.Seq));
                    See(e.Conv, e.Seq);
                    break;
                case HistoryEvent.ReadInbox:
                    ReceivedBy(e.Client!).Add((e.Conv, e.Seq));
                    See(e.Conv, e.Seq);
                    break;
                case HistoryEvent.Members:
                    members[e.Conv] = e.MemberUsers ?? [];
                    break;
                case HistoryEvent.ReadConversation:
                    if (!stored.TryGetValue(e.Conv, out var conv))
                    {
                        stored[e.Conv] = conv = [];
                    }

                    if (!conv.TryGetValue(e.Seq, out var at))
                    {
                        conv[e.Seq] = at = [];
                    }

                    at.Add((e.Sender ?? "", e.Cmid));
                    See(e.Conv, e.Seq);
                    break;
            }
        }

        // Lost, retries, outcomes.
        long acked = 0, lost = 0, retried = 0, unresolved = 0, indeterminate = 0, failedButStored = 0;
        var storedAt = new Dictionary<(string Sender, ulong Cmid), HashSet<(ulong Conv, ulong Seq)>>();
        long storedCount = 0, duplicates = 0;
        foreach (var (convId, conv) in stored)
        {
            foreach (var (seq, entries) in conv)
            {
                storedCount += entries.Count;
                duplicates += entries.Count - 1;
                foreach (var entry in entries)
                {
                    if (!storedAt.TryGetValue(entry, out var seqs))
                    {
                        storedAt[entry] = seqs = [];
                    }

                    seqs.Add((convId, seq));
                }
            }
        }

        foreach (var seqs in storedAt.Values)
        {
            duplicates += seqs.Count - 1;
        }

        foreach (var ((client, cmid), s) in sends)
        {
            if (s.Attempts > 1)
            {
                retried++;
                if (s.Acks.Count != 1)
                {
                    unresolved++;
                }
            }
            else if (s.Acks.Count == 0 && !s.Failed)
            {
                indeterminate++;
            }

            if (s.Acks.Count > 0)
            {
                acked++;
            }

            foreach (var (convId, seq) in s.Acks)
            {
                if (!stored.TryGetValue(convId, out var conv) || !conv.TryGetValue(seq, out var entries) || !entries.Contains((client, cmid)))
                {
                    lost++;
                }
            }

            if (s.Failed && s.Acks.Count == 0 && storedAt.ContainsKey((client, cmid)))
            {
                failedButStored++;
            }
        }

        // Gaps: 1..max over everything seen of the conversation.
        long gaps = 0;
        foreach (var (convId, max) in maxSeen)
        {
            stored.TryGetValue(convId, out var conv);
            for (ulong seq = 1; seq <= max; seq++)
            {
                if (conv is null || !conv.ContainsKey(seq))
                {
                    gaps++;
                }
            }
        }

        // Order and exactly-once to the application, per device and conversation, in arrival order.
        long orderViolations = 0, redelivered = 0, appDuplicates = 0;
        var perDevice = new Dictionary<(string Client, ulong Conv), DeviceConversation>();
        var surfaced = new Dictionary<string, Dictionary<(string Sender, ulong Cmid), ulong>>();
        foreach (var d in deliveries)
        {
            if (!perDevice.TryGetValue((d.Client!, d.Conv), out var state))
            {
                perDevice[(d.Client!, d.Conv)] = state = new DeviceConversation();
            }

            if (state.FirstSession.TryGetValue(d.Seq, out var firstSession))
            {
                if (firstSession < d.Conn)
                {
                    redelivered++;
                }
                else
                {
                    orderViolations++; // repeated inside one session: the broker promises no repeat across the resume seam
                }

                continue;
            }

            if (d.Seq < state.MaxSeq)
            {
                orderViolations++;
            }

            state.FirstSession[d.Seq] = d.Conn;
            state.MaxSeq = Math.Max(state.MaxSeq, d.Seq);
            if (stored.TryGetValue(d.Conv, out var conv) && conv.TryGetValue(d.Seq, out var entries) && !entries.Contains((d.Sender ?? "", d.Cmid)))
            {
                orderViolations++; // this seq reached a device with another message than the one stored
            }

            if (!surfaced.TryGetValue(d.Client!, out var app))
            {
                surfaced[d.Client!] = app = [];
            }

            if (app.TryGetValue((d.Sender ?? "", d.Cmid), out var earlier) && earlier != d.Seq)
            {
                appDuplicates++;
            }
            else
            {
                app[(d.Sender ?? "", d.Cmid)] = d.Seq;
            }
        }

        // Inboxes: every connected device and every final inbox reader, against its user's conversations.
        long incomplete = 0, missing = 0;
        foreach (var client in devices)
        {
            var user = HistoryEvent.UserOf(client);
            var got = received.GetValueOrDefault(client);
            long missingHere = 0;
            foreach (var (convId, users) in members)
            {
                if (Array.IndexOf(users, user) < 0 || !stored.TryGetValue(convId, out var conv))
                {
                    continue;
                }

                foreach (var (seq, entries) in conv)
                {
                    if (entries[0].Sender != client && (got is null || !got.Contains((convId, seq))))
                    {
                        missingHere++;
                    }
                }
            }

            if (missingHere > 0)
            {
                incomplete++;
                missing += missingHere;
            }
        }

        long inversions = 0;
        foreach (var order in sentOrder.Values)
        {
            order.Sort((a, b) => a.Cmid.CompareTo(b.Cmid));
            for (var i = 1; i < order.Count; i++)
            {
                if (order[i].Seq < order[i - 1].Seq)
                {
                    inversions++;
                }
            }
        }

        return new CheckReport
        {
            Acked = acked,
            Retried = retried,
            Redelivered = redelivered,
            Stored = storedCount,
            Lost = lost,
            Duplicates = duplicates,
            AppDuplicates = appDuplicates,
            Gaps = gaps,
            OrderViolations = orderViolations,
            UnresolvedRetries = unresolved,
            Indeterminate = indeterminate,
            FailedButStored = failedButStored,
            IncompleteInboxes = incomplete,
            MissingFromInboxes = missing,
            SenderOrderInversions = inversions,
            HistoryOverflowed = overflowed,
            Owners = OwnerTally.Count(history),
            Recoveries = RecoveryTally.Count(history),
        };
    }
}
