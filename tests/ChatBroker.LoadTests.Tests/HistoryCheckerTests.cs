using ChatBroker.LoadTests.Checker;

namespace ChatBroker.LoadTests.Tests;

/// <summary>The checker's rules on small hand-written histories: a clean one passes, each fault is counted where it belongs.</summary>
public sealed class HistoryCheckerTests
{
    private const string Alice = "alice/d1";
    private const string Bob = "bob/d1";
    private const string BobFinal = "bob/final";
    private const ulong Conv = 7;

    /// <summary>
    /// alice sends 3 messages to bob (cmid 1..3 → seq 1..3); the connection drops after the SEND of cmid 3, which is
    /// retried on the next session; bob gets 1, 2, reconnects, gets 2 again (redelivery) and 3; the final reads hold 1..3.
    /// </summary>
    private static List<HistoryEvent> CleanHistory() =>
    [
        new() { Op = HistoryEvent.Connect, Client = Bob, Conn = 1 },
        new() { Op = HistoryEvent.Connect, Client = Alice, Conn = 1 },
        Send(1), Sent(1, 1),
        Send(2), Sent(2, 2),
        Send(3),
        new() { Op = HistoryEvent.Disconnect, Client = Alice, Conn = 1, Reason = "closed" },
        new() { Op = HistoryEvent.Connect, Client = Alice, Conn = 2 },
        Send(3, attempt: 2, conn: 2), Sent(3, 3, conn: 2),
        Deliver(1, conn: 1), Deliver(2, conn: 1),
        new() { Op = HistoryEvent.Connect, Client = Bob, Conn = 2 },
        Deliver(2, conn: 2), Deliver(3, conn: 2),
        new() { Op = HistoryEvent.Members, Conv = Conv, MemberUsers = ["alice", "bob"] },
        new() { Op = HistoryEvent.Connect, Client = BobFinal, Conn = 1 },
        Inbox(1), Inbox(2), Inbox(3),
        Stored(1), Stored(2), Stored(3),
    ];

    private static HistoryEvent Send(ulong cmid, int attempt = 1, int conn = 1) =>
        new() { Op = HistoryEvent.Send, Client = Alice, Conn = conn, Cmid = cmid, To = "bob", Attempt = attempt };

    private static HistoryEvent Sent(ulong cmid, ulong seq, int conn = 1) =>
        new() { Op = HistoryEvent.Sent, Client = Alice, Conn = conn, Cmid = cmid, Conv = Conv, Seq = seq };

    // In these histories message seq n carries cmid n unless said otherwise.
    private static HistoryEvent Deliver(ulong seq, int conn, ulong? cmid = null) =>
        new() { Op = HistoryEvent.Deliver, Client = Bob, Conn = conn, Conv = Conv, Seq = seq, Cmid = cmid ?? seq, Sender = Alice };

    private static HistoryEvent Inbox(ulong seq) =>
        new() { Op = HistoryEvent.ReadInbox, Client = BobFinal, Conn = 1, Conv = Conv, Seq = seq, Cmid = seq, Sender = Alice };

    private static HistoryEvent Stored(ulong seq, ulong? cmid = null) =>
        new() { Op = HistoryEvent.ReadConversation, Client = BobFinal, Conv = Conv, Seq = seq, Cmid = cmid ?? seq, Sender = Alice };

    private static List<HistoryEvent> Without(List<HistoryEvent> history, Predicate<HistoryEvent> match)
    {
        history.RemoveAll(match);
        return history;
    }

    [Fact]
    public void Clean_history_passes_with_its_retry_and_redelivery_counted()
    {
        var report = HistoryChecker.Check(CleanHistory());

        Assert.True(report.Passed, string.Join(", ", report.Counts()));
        Assert.Equal(3, report.Acked);
        Assert.Equal(3, report.Stored);
        Assert.Equal(1, report.Retried);
        Assert.Equal(1, report.Redelivered);
    }

    [Fact]
    public void Acked_message_missing_from_the_final_read_is_lost()
    {
        // seq 3 was acked (SENT), but the conversation ends at 2 and nobody received 3.
        var history = Without(CleanHistory(), e => e.Op is HistoryEvent.ReadConversation or HistoryEvent.Deliver or HistoryEvent.ReadInbox && e.Seq == 3);

        var report = HistoryChecker.Check(history);

        Assert.False(report.Passed);
        Assert.Equal(1, report.Lost);
        Assert.Equal(1, report.Gaps); // seq 3 was acked, so the conversation must reach it
        Assert.Equal(0, report.Duplicates);
        Assert.Equal(0, report.IncompleteInboxes);
    }

    [Fact]
    public void Acked_seq_holding_another_message_is_lost()
    {
        var history = Without(CleanHistory(), e => e.Op == HistoryEvent.ReadConversation && e.Seq == 2);
        history.Add(Stored(2, cmid: 99));

        var report = HistoryChecker.Check(history);

        Assert.Equal(1, report.Lost);
        Assert.Equal(1, report.OrderViolations); // bob was delivered seq 2 with cmid 2, the log says 99
    }

    [Fact]
    public void Missing_seq_in_the_middle_is_a_gap()
    {
        // Nobody acked or saw seq 2 … except the log skips it: 1, 3.
        var history = Without(CleanHistory(), e => e.Seq == 2 && e.Op is HistoryEvent.ReadConversation or HistoryEvent.Deliver or HistoryEvent.ReadInbox or HistoryEvent.Sent);
        history.RemoveAll(e => e.Cmid == 2);

        var report = HistoryChecker.Check(history);

        Assert.False(report.Passed);
        Assert.Equal(1, report.Gaps);
        Assert.Equal(0, report.Lost);
    }

    [Fact]
    public void Message_stored_twice_is_a_duplicate()
    {
        // cmid 3 stored at seq 3 and again at seq 4 (the broker forgot the idempotency mark across the restart).
        var history = CleanHistory();
        history.Add(Stored(4, cmid: 3));
        history.Add(new HistoryEvent { Op = HistoryEvent.ReadInbox, Client = BobFinal, Conv = Conv, Seq = 4, Cmid = 3, Sender = Alice });
        history.Add(Deliver(4, conn: 2, cmid: 3));

        var report = HistoryChecker.Check(history);

        Assert.False(report.Passed);
        Assert.Equal(1, report.Duplicates);
        Assert.Equal(1, report.AppDuplicates); // bob's app got cmid 3 twice: (conv, seq) dedupe cannot catch it
        Assert.Equal(0, report.Gaps);
    }

    [Fact]
    public void Seq_stored_twice_is_a_duplicate()
    {
        var history = CleanHistory();
        history.Add(Stored(2, cmid: 2));

        Assert.Equal(1, HistoryChecker.Check(history).Duplicates);
    }

    [Fact]
    public void New_seq_below_one_already_delivered_is_an_order_violation()
    {
        // bob's first session gets 1, 3, then 2: 2 is new but below 3.
        var history = Without(CleanHistory(), e => e.Op == HistoryEvent.Deliver);
        history.Add(Deliver(1, conn: 1));
        history.Add(Deliver(3, conn: 1));
        history.Add(Deliver(2, conn: 1));

        var report = HistoryChecker.Check(history);

        Assert.False(report.Passed);
        Assert.Equal(1, report.OrderViolations);
        Assert.Equal(0, report.IncompleteInboxes);
    }

    [Fact]
    public void Repeat_inside_one_session_is_an_order_violation_but_after_a_reconnect_a_redelivery()
    {
        var history = CleanHistory();
        history.Add(Deliver(3, conn: 2)); // seq 3 came first in session 2: a repeat there

        var report = HistoryChecker.Check(history);

        Assert.Equal(1, report.OrderViolations);
        Assert.Equal(1, report.Redelivered);
    }

    [Fact]
    public void Retried_send_without_a_SENT_is_unresolved()
    {
        var history = Without(CleanHistory(), e => e.Op == HistoryEvent.Sent && e.Cmid == 3);

        var report = HistoryChecker.Check(history);

        Assert.False(report.Passed);
        Assert.Equal(1, report.UnresolvedRetries);
        Assert.Equal(2, report.Acked);
    }

    [Fact]
    public void Retried_send_answered_with_two_seqs_is_unresolved()
    {
        var history = CleanHistory();
        history.Add(Sent(3, 4, conn: 2));
        history.Add(Stored(4, cmid: 3));

        var report = HistoryChecker.Check(history);

        Assert.Equal(1, report.UnresolvedRetries);
        Assert.Equal(1, report.Duplicates);
    }

    [Fact]
    public void Send_without_any_outcome_is_indeterminate()
    {
        var history = CleanHistory();
        history.Add(Send(4, conn: 2));

        Assert.Equal(1, HistoryChecker.Check(history).Indeterminate);
    }

    [Fact]
    public void Refused_send_that_is_stored_anyway_is_counted()
    {
        var history = CleanHistory();
        history.Add(Send(4, conn: 2));
        history.Add(new HistoryEvent { Op = HistoryEvent.SendFailed, Client = Alice, Conn = 2, Cmid = 4, Reason = "NotAMember" });
        history.Add(Stored(4));
        history.Add(Deliver(4, conn: 2));
        history.Add(Inbox(4));

        var report = HistoryChecker.Check(history);

        Assert.Equal(1, report.FailedButStored);
        Assert.Equal(0, report.Indeterminate);
    }

    [Fact]
    public void Receiver_or_final_inbox_missing_a_message_is_incomplete()
    {
        var history = Without(CleanHistory(), e => e.Seq == 3 && e.Op is HistoryEvent.Deliver or HistoryEvent.ReadInbox);

        var report = HistoryChecker.Check(history);

        Assert.False(report.Passed);
        Assert.Equal(2, report.IncompleteInboxes); // bob/d1 and bob/final
        Assert.Equal(2, report.MissingFromInboxes);
        Assert.Equal(0, report.Lost);
    }

    [Fact]
    public void Overflowed_history_fails()
    {
        Assert.False(HistoryChecker.Check(CleanHistory(), overflowed: true).Passed);
    }

    [Fact]
    public void History_round_trips_through_its_file()
    {
        var path = Path.Combine(Path.GetTempPath(), "checker-test-" + Guid.NewGuid().ToString("N") + ".jsonl");
        try
        {
            using (var recorder = new HistoryRecorder(path, 1000))
            {
                foreach (var e in CleanHistory())
                {
                    recorder.Record(e);
                }

                recorder.Snapshot();
            }

            var report = HistoryChecker.Check(HistoryEvent.ReadFile(path));
            Assert.True(report.Passed);
            Assert.Equal(1, report.Redelivered);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
