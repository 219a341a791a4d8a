using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Client.Tests;

public sealed class ChatClientTests : IDisposable
{
    private static readonly TimeSpan Timeout = FakeServer.Timeout;
    private readonly FakeServer _server = new();
    private int _tokenCalls;

    public void Dispose() => _server.Dispose();

    private ChatClient NewClient(Action<ChatClientOptions>? configure = null)
    {
        var options = new ChatClientOptions
        {
            EndPoint = _server.EndPoint,
            UserId = "alice",
            DeviceId = "phone",
            TokenProvider = _ =>
            {
                var n = Interlocked.Increment(ref _tokenCalls);
                return ValueTask.FromResult($"token-{n}");
            },
            Keepalive = TimeSpan.FromSeconds(60),
            Reconnect = new ReconnectPolicy(new Random(7)) { InitialDelay = TimeSpan.FromMilliseconds(5), MaxDelay = TimeSpan.FromMilliseconds(20) },
        };
        configure?.Invoke(options);
        return new ChatClient(options);
    }

    private async Task<(ChatClient Client, FakeConnection Connection, Connect Connect)> ConnectedAsync(Action<ChatClientOptions>? configure = null, uint keepaliveS = 0)
    {
        var client = NewClient(configure);
        var connecting = client.ConnectAsync();
        var (connection, connect) = await _server.AcceptSessionAsync(keepaliveS);
        await connecting.WaitAsync(Timeout);
        return (client, connection, connect);
    }

    private static async Task<ReceivedMessage> NextMessageAsync(ChatClient client)
    {
        using var cts = new CancellationTokenSource(Timeout);
        return await client.Messages.ReadAsync(cts.Token);
    }

    private static async Task<ConnectionEvent> NextEventAsync(ChatClient client, ChatConnectionState state)
    {
        using var cts = new CancellationTokenSource(Timeout);
        while (true)
        {
            var e = await client.ConnectionEvents.ReadAsync(cts.Token);
            if (e.State == state)
            {
                return e;
            }
        }
    }

    private static Sent SentFor(Send send, ulong seq) => new()
    {
        ClientMsgId = send.ClientMsgId,
        ConversationId = send.ConversationId == 0 ? 99 : send.ConversationId,
        Seq = seq,
        TimestampMs = 1_764_096_000_000 + seq,
    };

    [Fact]
    public async Task Connect_sends_identity_token_keepalive_capabilities_and_resume_cursor()
    {
        var (client, connection, connect) = await ConnectedAsync(o => o.ResumeInboxSeq = 41);
        await using (client)
        await using (connection)
        {
            Assert.Equal(ProtocolConstants.ProtocolVersion, connect.ProtocolVersion);
            Assert.Equal("alice", connect.UserId);
            Assert.Equal("phone", connect.DeviceId);
            Assert.Equal("token-1", connect.Token);
            Assert.Equal(60u, connect.KeepaliveS);
            Assert.Equal(41ul, connect.ResumeInboxSeq);
            Assert.Equal((ulong)Capability.Receipts, connect.Capabilities);
            Assert.Equal(ChatConnectionState.Connected, client.State);
            Assert.Equal(41ul, client.Cursor);
        }
    }

    [Theory]
    [InlineData(ReasonCode.BadToken)]
    [InlineData(ReasonCode.IdentityMismatch)]
    [InlineData(ReasonCode.UnsupportedVersion)]
    [InlineData(ReasonCode.DeviceRevoked)]
    public async Task Refused_connack_throws_with_the_reason_and_does_not_retry(ReasonCode reason)
    {
        await using var client = NewClient();
        var connecting = client.ConnectAsync();
        await using var connection = await _server.AcceptAsync();
        await connection.ReadAsync();
        await connection.WriteAsync(new Connack { Reason = reason, Message = "no" });

        var error = await Assert.ThrowsAsync<ChatClientException>(() => connecting.WaitAsync(Timeout));
        Assert.Equal(reason, error.Reason);
        Assert.Equal("no", error.ServerMessage);
        Assert.Equal(ChatConnectionState.Disconnected, client.State);
        Assert.Equal(1, _tokenCalls);
    }

    [Theory]
    [InlineData(ReasonCode.ServerBusy)]
    [InlineData(ReasonCode.ServerUnavailable)]
    [InlineData(ReasonCode.TooManyDevices)]
    [InlineData(ReasonCode.TokenExpired)]
    public async Task Transient_connack_refusal_is_retried_with_a_fresh_token_after_retry_after(ReasonCode reason)
    {
        await using var client = NewClient();
        var connecting = client.ConnectAsync();
        await using (var first = await _server.AcceptAsync())
        {
            await first.ReadAsync();
            await first.WriteAsync(new Connack { Reason = reason, RetryAfterMs = 30 });
        }

        var reconnecting = await NextEventAsync(client, ChatConnectionState.Reconnecting);
        Assert.Equal(1, reconnecting.Attempt);
        Assert.True(reconnecting.Delay >= TimeSpan.FromMilliseconds(30), $"delay {reconnecting.Delay} is shorter than retry_after_ms");

        var (second, connect) = await _server.AcceptSessionAsync();
        await using (second)
        {
            await connecting.WaitAsync(Timeout);
            Assert.Equal("token-2", connect.Token);
            Assert.Equal(ChatConnectionState.Connected, client.State);
        }
    }

    [Fact]
    public async Task Send_completes_when_SENT_arrives()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var sending = client.SendAsync(12, Encoding.UTF8.GetBytes("hello"));
            var (send, flags) = await connection.ExpectAsync<Send>();
            Assert.Equal(FrameFlags.None, flags);
            Assert.NotEqual(0ul, send.ClientMsgId);
            Assert.Equal(12ul, send.ConversationId);
            Assert.Equal("hello", send.Body.ToStringUtf8());
            Assert.Equal(ContentType.Text, send.ContentType);
            Assert.False(sending.IsCompleted);

            await connection.WriteAsync(SentFor(send, 5));
            var sent = await sending.WaitAsync(Timeout);
            Assert.Equal(new SentResult(send.ClientMsgId, 12, 5, 1_764_096_000_005), sent);
            Assert.Equal(0, client.PendingSends);
        }
    }

    [Fact]
    public async Task Send_to_a_user_names_the_user_and_gets_the_conversation_from_SENT()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var sending = client.SendAsync("bob", "hi"u8.ToArray(), ContentType.Image);
            var (send, _) = await connection.ExpectAsync<Send>();
            Assert.Equal("bob", send.ToUserId);
            Assert.Equal(0ul, send.ConversationId);
            Assert.Equal(ContentType.Image, send.ContentType);
            await connection.WriteAsync(SentFor(send, 1));
            Assert.Equal(99ul, (await sending.WaitAsync(Timeout)).ConversationId);
        }
    }

    [Fact]
    public async Task Pipelined_sends_are_all_written_before_any_SENT_and_matched_by_client_msg_id()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            const int count = 200;
            var tasks = new Task<SentResult>[count];
            for (var i = 0; i < count; i++)
            {
                tasks[i] = client.SendAsync((ulong)(1 + (i % 3)), Encoding.UTF8.GetBytes($"m{i}"));
            }

            var sends = new List<Send>();
            for (var i = 0; i < count; i++)
            {
                sends.Add((await connection.ExpectAsync<Send>()).Message);
            }

            Assert.Equal(count, sends.Select(s => s.ClientMsgId).Distinct().Count());
            Assert.All(tasks, t => Assert.False(t.IsCompleted));

            // Answer in reverse order: each task must get its own SENT.
            var answers = new List<IMessage>();
            for (var i = count - 1; i >= 0; i--)
            {
                answers.Add(SentFor(sends[i], 1000 + (ulong)i));
            }

            await connection.WriteAsync([.. answers]);
            for (var i = 0; i < count; i++)
            {
                var sent = await tasks[i].WaitAsync(Timeout);
                var index = sends.FindIndex(s => s.ClientMsgId == sent.ClientMsgId);
                Assert.Equal($"m{i}", sends[index].Body.ToStringUtf8());
                Assert.Equal(1000 + (ulong)index, sent.Seq);
            }
        }
    }

    [Fact]
    public async Task Sends_beyond_MaxPendingSends_wait_for_a_slot()
    {
        var (client, connection, _) = await ConnectedAsync(o => o.MaxPendingSends = 2);
        await using (client)
        await using (connection)
        {
            var first = client.SendAsync(1, "a"u8.ToArray());
            var second = client.SendAsync(1, "b"u8.ToArray());
            var third = client.SendAsync(1, "c"u8.ToArray());
            var s1 = (await connection.ExpectAsync<Send>()).Message;
            var s2 = (await connection.ExpectAsync<Send>()).Message;
            Assert.Equal(3, client.PendingSends); // two on the wire, one waiting
            Assert.False(third.IsCompleted);

            await connection.WriteAsync(SentFor(s1, 1));
            var s3 = (await connection.ExpectAsync<Send>()).Message;
            Assert.Equal("c", s3.Body.ToStringUtf8());
            await connection.WriteAsync(SentFor(s2, 2), SentFor(s3, 3));
            await Task.WhenAll(first, second, third).WaitAsync(Timeout);
        }
    }

    [Fact]
    public async Task Sends_go_on_the_wire_in_call_order_even_when_they_wait_for_slots()
    {
        var (client, connection, _) = await ConnectedAsync(o => o.MaxPendingSends = 3);
        await using (client)
        await using (connection)
        {
            const int count = 60;
            var tasks = new Task<SentResult>[count];
            for (var i = 0; i < count; i++)
            {
                tasks[i] = client.SendAsync(1, Encoding.UTF8.GetBytes($"m{i}"));
            }

            ulong lastId = 0;
            for (var i = 0; i < count; i++)
            {
                var send = (await connection.ExpectAsync<Send>()).Message;
                Assert.Equal($"m{i}", send.Body.ToStringUtf8());
                Assert.True(send.ClientMsgId > lastId, "client_msg_id grows with call order");
                lastId = send.ClientMsgId;
                await connection.WriteAsync(SentFor(send, (ulong)i + 1));
            }

            for (var i = 0; i < count; i++)
            {
                Assert.Equal((ulong)i + 1, (await tasks[i].WaitAsync(Timeout)).Seq);
            }
        }
    }

    [Fact]
    public async Task A_send_waiting_for_a_slot_can_be_cancelled_and_never_goes_on_the_wire()
    {
        var (client, connection, _) = await ConnectedAsync(o => o.MaxPendingSends = 1);
        await using (client)
        await using (connection)
        {
            var first = client.SendAsync(1, "a"u8.ToArray());
            using var cts = new CancellationTokenSource();
            var cancelled = client.SendAsync(1, "b"u8.ToArray(), cancellationToken: cts.Token);
            var third = client.SendAsync(1, "c"u8.ToArray());
            var a = (await connection.ExpectAsync<Send>()).Message;
            await cts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.WaitAsync(Timeout));

            await connection.WriteAsync(SentFor(a, 1));
            var c = (await connection.ExpectAsync<Send>()).Message;
            Assert.Equal("c", c.Body.ToStringUtf8());
            await connection.WriteAsync(SentFor(c, 2));
            await Task.WhenAll(first, third).WaitAsync(Timeout);
        }
    }

    [Fact]
    public async Task After_a_drop_pending_sends_are_resent_with_the_same_id_and_DUP_and_CONNECT_resumes_from_the_last_received_inbox_seq()
    {
        var (client, first, _) = await ConnectedAsync();
        await using (client)
        {
            await first.WriteAsync(FakeConnection.Deliver(7, 1, 1), FakeConnection.Deliver(7, 2, 2), FakeConnection.Deliver(8, 1, 3));
            for (var i = 0; i < 3; i++)
            {
                await NextMessageAsync(client);
            }

            var sending = client.SendAsync(7, "pending"u8.ToArray());
            var (original, originalFlags) = await first.ExpectAsync<Send>();
            Assert.Equal(FrameFlags.None, originalFlags);
            await first.DisposeAsync(); // dropped before SENT

            var (second, connect) = await _server.AcceptSessionAsync();
            await using (second)
            {
                Assert.Equal(3ul, connect.ResumeInboxSeq);
                var (resent, flags) = await second.ExpectAsync<Send>();
                Assert.Equal(FrameFlags.Dup, flags);
                Assert.Equal(original, resent);
                Assert.False(sending.IsCompleted);

                await second.WriteAsync(SentFor(resent, 3));
                Assert.Equal(original.ClientMsgId, (await sending.WaitAsync(Timeout)).ClientMsgId);
            }
        }
    }

    [Fact]
    public async Task Messages_seen_before_a_reconnect_are_not_surfaced_again()
    {
        var (client, first, _) = await ConnectedAsync();
        await using (client)
        {
            await first.WriteAsync(FakeConnection.Deliver(7, 1, 1, "one"), FakeConnection.Deliver(7, 2, 2, "two"), FakeConnection.Deliver(7, 3, 3, "three"), new SyncDone { InboxSeq = 3 });
            await client.WaitForSyncAsync().WaitAsync(Timeout);
            for (var i = 0; i < 3; i++)
            {
                Assert.True((await NextMessageAsync(client)).IsBacklog);
            }

            await first.DisposeAsync();
            var (second, connect) = await _server.AcceptSessionAsync();
            await using (second)
            {
                Assert.Equal(3ul, connect.ResumeInboxSeq);
                // A sloppy server repeats inbox entries 2..3 (DUP), then the same (conversation, seq) under a new
                // inbox position, then one new message.
                await second.WriteAsync(FakeConnection.Deliver(7, 2, 2), FrameFlags.Dup);
                await second.WriteAsync(FakeConnection.Deliver(7, 3, 3), FrameFlags.Dup);
                await second.WriteAsync(FakeConnection.Deliver(7, 3, 4), FakeConnection.Deliver(7, 4, 5, "four"), new SyncDone { InboxSeq = 5 });
                await client.WaitForSyncAsync().WaitAsync(Timeout);

                var next = await NextMessageAsync(client);
                Assert.Equal((7ul, 4ul, 5ul, "four"), (next.ConversationId, next.Seq, next.InboxSeq, Encoding.UTF8.GetString(next.Body.Span)));
                Assert.True(next.IsBacklog);
                Assert.False(client.Messages.TryRead(out var extra), $"unexpected {extra}");
                Assert.Equal(5ul, client.Cursor);
            }
        }
    }

    [Fact]
    public async Task Received_message_carries_every_field_and_live_ones_follow_SYNC_DONE()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var deliver = FakeConnection.Deliver(9, 4, 10, "backlog");
            deliver.ContentType = ContentType.Sticker;
            deliver.ClientMsgId = 1234;
            deliver.SenderUserId = "alice";
            deliver.SenderDeviceId = "laptop";
            await connection.WriteAsync(deliver, new SyncDone { InboxSeq = 12 }, FakeConnection.Deliver(9, 5, 13, "live"));

            var backlog = await NextMessageAsync(client);
            Assert.Equal(new ReceivedMessage(9, 4, 10, "alice", "laptop", 1_764_096_000_004, ContentType.Sticker, backlog.Body, 1234, true), backlog);
            Assert.Equal("backlog", Encoding.UTF8.GetString(backlog.Body.Span));
            var live = await NextMessageAsync(client);
            Assert.False(live.IsBacklog);
            Assert.Equal(13ul, client.Cursor);
        }
    }

    [Fact]
    public async Task SYNC_DONE_moves_the_cursor_past_own_messages_that_are_not_echoed()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            await connection.WriteAsync(FakeConnection.Deliver(1, 1, 1), new SyncDone { InboxSeq = 4 });
            await client.WaitForSyncAsync().WaitAsync(Timeout);
            Assert.Equal(4ul, client.Cursor);
        }
    }

    [Fact]
    public async Task Auto_ack_sends_one_ACK_with_the_latest_inbox_seq_after_a_batch()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            await connection.WriteAsync(FakeConnection.Deliver(1, 1, 1), FakeConnection.Deliver(1, 2, 2), FakeConnection.Deliver(2, 1, 3));
            ulong last = 0;
            while (last < 3)
            {
                var (message, _) = await connection.ReadAsync();
                var ack = Assert.IsType<Ack>(message);
                Assert.True(ack.InboxSeq > last, "ACKs only move forward");
                last = ack.InboxSeq;
            }

            Assert.Equal(3ul, last);
        }
    }

    [Fact]
    public async Task Auto_ack_repeats_the_cursor_once_at_the_seam_of_each_connection()
    {
        var (client, connection, _) = await ConnectedAsync(o => o.ResumeInboxSeq = 7);
        await using (client)
        await using (connection)
        {
            await connection.WriteAsync(new SyncDone { InboxSeq = 7 });
            Assert.Equal(7ul, Assert.IsType<Ack>((await connection.ReadAsync()).Message).InboxSeq);
        }
    }

    [Fact]
    public async Task Without_auto_ack_nothing_is_acknowledged_until_the_app_says_so()
    {
        var (client, connection, _) = await ConnectedAsync(o => o.AutoAck = false);
        await using (client)
        await using (connection)
        {
            await connection.WriteAsync(FakeConnection.Deliver(1, 1, 1), FakeConnection.Deliver(1, 2, 2));
            await NextMessageAsync(client);
            await NextMessageAsync(client);
            await client.AckAsync(1);
            await client.ReadAsync(1, 2);
            Assert.Equal(1ul, Assert.IsType<Ack>((await connection.ReadAsync()).Message).InboxSeq);
            var read = Assert.IsType<Read>((await connection.ReadAsync()).Message);
            Assert.Equal((1ul, 2ul), (read.ConversationId, read.UpToSeq));
        }
    }

    [Fact]
    public async Task Idle_client_pings_and_keeps_the_connection_while_PONGs_come()
    {
        var (client, connection, connect) = await ConnectedAsync(o => o.Keepalive = TimeSpan.FromSeconds(2), keepaliveS: 2);
        await using (client)
        await using (connection)
        {
            Assert.Equal(2u, connect.KeepaliveS);
            for (var i = 0; i < 2; i++)
            {
                var (ping, _) = await connection.ReadAsync();
                Assert.IsType<Ping>(ping);
                await connection.WriteAsync(new Pong());
            }

            Assert.Equal(ChatConnectionState.Connected, client.State);
        }
    }

    [Fact]
    public async Task A_PING_without_answer_makes_the_client_reconnect()
    {
        var (client, first, _) = await ConnectedAsync(o => o.Keepalive = TimeSpan.FromSeconds(1), keepaliveS: 1);
        await using (client)
        await using (first)
        {
            Assert.IsType<Ping>((await first.ReadAsync()).Message);
            var disconnected = await NextEventAsync(client, ChatConnectionState.Disconnected);
            Assert.Equal(ReasonCode.KeepaliveTimeout, disconnected.Reason);
            var (second, _) = await _server.AcceptSessionAsync();
            await second.DisposeAsync();
        }
    }

    [Fact]
    public async Task Rate_limited_send_is_retried_after_retry_after_ms_with_the_same_id()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var sending = client.SendAsync(3, "x"u8.ToArray());
            var (send, _) = await connection.ExpectAsync<Send>();
            var watch = Stopwatch.StartNew();
            await connection.WriteAsync(new Error { Reason = ReasonCode.RateLimited, RequestId = send.ClientMsgId, InReplyTo = PacketType.Send, RetryAfterMs = 80 });

            var (again, flags) = await connection.ExpectAsync<Send>();
            Assert.True(watch.Elapsed >= TimeSpan.FromMilliseconds(75), $"retried after {watch.Elapsed}");
            Assert.Equal(send.ClientMsgId, again.ClientMsgId);
            Assert.Equal(FrameFlags.Dup, flags);
            Assert.False(sending.IsCompleted);

            await connection.WriteAsync(SentFor(again, 1));
            await sending.WaitAsync(Timeout);
        }
    }

    [Fact]
    public async Task While_rate_limited_new_sends_are_held_and_go_after_the_refused_one_in_order()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var x = client.SendAsync(3, "x"u8.ToArray());
            var a = client.SendAsync(3, "a"u8.ToArray());
            var sendX = (await connection.ExpectAsync<Send>()).Message;
            var sendA = (await connection.ExpectAsync<Send>()).Message;
            await connection.WriteAsync(
                new Error { Reason = ReasonCode.RateLimited, RequestId = sendA.ClientMsgId, InReplyTo = PacketType.Send, RetryAfterMs = 150 },
                SentFor(sendX, 1));
            await x.WaitAsync(Timeout); // frames are handled in order: the ERROR has been seen

            var d = client.SendAsync(3, "d"u8.ToArray());
            var (first, firstFlags) = await connection.ExpectAsync<Send>();
            var (second, secondFlags) = await connection.ExpectAsync<Send>();
            Assert.Equal(("a", FrameFlags.Dup), (first.Body.ToStringUtf8(), firstFlags));
            Assert.Equal(("d", FrameFlags.None), (second.Body.ToStringUtf8(), secondFlags));
            await connection.WriteAsync(SentFor(first, 2), SentFor(second, 3));
            Assert.Equal(2ul, (await a.WaitAsync(Timeout)).Seq);
            Assert.Equal(3ul, (await d.WaitAsync(Timeout)).Seq);
        }
    }

    [Theory]
    [InlineData(ReasonCode.NotAMember)]
    [InlineData(ReasonCode.BadRequest)]
    [InlineData(ReasonCode.UserNotFound)]
    public async Task Non_retryable_error_faults_the_send_and_keeps_the_session(ReasonCode reason)
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var failing = client.SendAsync(3, "x"u8.ToArray());
            var (send, _) = await connection.ExpectAsync<Send>();
            await connection.WriteAsync(new Error { Reason = reason, Message = "nope", RequestId = send.ClientMsgId, InReplyTo = PacketType.Send });

            var error = await Assert.ThrowsAsync<ChatClientException>(() => failing.WaitAsync(Timeout));
            Assert.Equal(reason, error.Reason);
            Assert.Equal(0, client.PendingSends);

            var next = client.SendAsync(4, "y"u8.ToArray());
            var (send2, _) = await connection.ExpectAsync<Send>();
            await connection.WriteAsync(SentFor(send2, 1));
            await next.WaitAsync(Timeout);
            Assert.Equal(ChatConnectionState.Connected, client.State);
        }
    }

    [Fact]
    public async Task Backoff_delays_grow_exponentially_with_full_jitter_and_are_reproducible_with_a_seed()
    {
        var policy = new ReconnectPolicy(new Random(42));
        var replay = new Random(42);
        var ceilings = new[] { 250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000 };
        for (var attempt = 0; attempt < ceilings.Length; attempt++)
        {
            Assert.Equal(TimeSpan.FromMilliseconds(ceilings[attempt]), policy.Ceiling(attempt));
            var delay = policy.NextDelay(attempt);
            Assert.Equal(Math.Floor(ceilings[attempt] * replay.NextDouble()), delay.TotalMilliseconds);
            Assert.InRange(delay.TotalMilliseconds, 0, ceilings[attempt]);
        }

        Assert.Equal(TimeSpan.FromSeconds(5), policy.NextDelay(0, retryAfter: TimeSpan.FromSeconds(5)));

        var delays = Enumerable.Range(0, 20).Select(_ => new ReconnectPolicy(new Random(1)).NextDelay(10)).Distinct().Count();
        Assert.Equal(1, delays);
        var jittered = new ReconnectPolicy(new Random(1));
        Assert.True(Enumerable.Range(0, 20).Select(_ => jittered.NextDelay(10)).Distinct().Count() > 10);
    }

    [Fact]
    public async Task Reconnect_attempts_use_the_seeded_policy_delays()
    {
        await using var client = NewClient(o => o.Reconnect = new ReconnectPolicy(new Random(3)) { InitialDelay = TimeSpan.FromMilliseconds(4), MaxDelay = TimeSpan.FromMilliseconds(40) });
        var expected = new ReconnectPolicy(new Random(3)) { InitialDelay = TimeSpan.FromMilliseconds(4), MaxDelay = TimeSpan.FromMilliseconds(40) };
        var connecting = client.ConnectAsync();
        for (var attempt = 0; attempt < 4; attempt++)
        {
            await using var refused = await _server.AcceptAsync();
            await refused.ReadAsync();
            await refused.WriteAsync(new Connack { Reason = ReasonCode.ServerUnavailable });
            var e = await NextEventAsync(client, ChatConnectionState.Reconnecting);
            Assert.Equal(attempt + 1, e.Attempt);
            Assert.Equal(expected.NextDelay(attempt), e.Delay);
        }

        var (connection, _) = await _server.AcceptSessionAsync();
        await using (connection)
        {
            await connecting.WaitAsync(Timeout);
        }
    }

    [Fact]
    public async Task History_requests_are_correlated_by_request_id_and_an_ERROR_faults_only_its_request()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var older = client.HistoryAsync(5, beforeSeq: 100, limit: 2);
            var newest = client.HistoryAsync(5);
            var denied = client.HistoryAsync(6);
            var h1 = (await connection.ExpectAsync<History>()).Message;
            var h2 = (await connection.ExpectAsync<History>()).Message;
            var h3 = (await connection.ExpectAsync<History>()).Message;
            Assert.Equal((5ul, 100ul, 2u), (h1.ConversationId, h1.BeforeSeq, h1.Limit));
            Assert.Equal(3, new[] { h1.RequestId, h2.RequestId, h3.RequestId }.Distinct().Count());

            var page2 = new HistoryPage { RequestId = h2.RequestId, ConversationId = 5, More = false };
            page2.Messages.Add(FakeConnection.Deliver(5, 200, 0, "newest"));
            var page1 = new HistoryPage { RequestId = h1.RequestId, ConversationId = 5, More = true };
            page1.Messages.Add(FakeConnection.Deliver(5, 98, 0, "a"));
            page1.Messages.Add(FakeConnection.Deliver(5, 99, 0, "b"));
            await connection.WriteAsync(page2, new Error { Reason = ReasonCode.NotAMember, RequestId = h3.RequestId, InReplyTo = PacketType.History }, page1);

            var r1 = await older.WaitAsync(Timeout);
            Assert.True(r1.More);
            Assert.Equal([98ul, 99ul], r1.Messages.Select(m => m.Seq));
            var r2 = await newest.WaitAsync(Timeout);
            Assert.Equal("newest", Encoding.UTF8.GetString(Assert.Single(r2.Messages).Body.Span));
            Assert.Equal(ReasonCode.NotAMember, (await Assert.ThrowsAsync<ChatClientException>(() => denied.WaitAsync(Timeout))).Reason);
        }
    }

    [Fact]
    public async Task An_unanswered_history_request_is_sent_again_after_a_reconnect()
    {
        var (client, first, _) = await ConnectedAsync();
        await using (client)
        {
            var history = client.HistoryAsync(5, limit: 10);
            var request = (await first.ExpectAsync<History>()).Message;
            await first.DisposeAsync();

            var (second, _) = await _server.AcceptSessionAsync();
            await using (second)
            {
                var again = (await second.ExpectAsync<History>()).Message;
                Assert.Equal(request, again);
                await second.WriteAsync(new HistoryPage { RequestId = again.RequestId, ConversationId = 5 });
                Assert.Empty((await history.WaitAsync(Timeout)).Messages);
            }
        }
    }

    [Fact]
    public async Task Disconnected_event_reports_the_servers_reason_then_reconnecting_and_connected_follow()
    {
        var (client, first, _) = await ConnectedAsync();
        await using (client)
        {
            await first.WriteAsync(new Disconnect { Reason = ReasonCode.SlowConsumer, Message = "too slow" });
            await first.DisposeAsync();
            var disconnected = await NextEventAsync(client, ChatConnectionState.Disconnected);
            Assert.Equal((ReasonCode.SlowConsumer, "too slow"), (disconnected.Reason, disconnected.Message));
            Assert.Equal(1, (await NextEventAsync(client, ChatConnectionState.Reconnecting)).Attempt);
            var (second, _) = await _server.AcceptSessionAsync();
            await using (second)
            {
                await NextEventAsync(client, ChatConnectionState.Connected);
                Assert.Equal(ChatConnectionState.Connected, client.State);
            }
        }
    }

    [Fact]
    public async Task Session_taken_over_closes_the_client_fails_pending_sends_and_does_not_reconnect()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            var sending = client.SendAsync(1, "x"u8.ToArray());
            await connection.ExpectAsync<Send>();
            await connection.WriteAsync(new Disconnect { Reason = ReasonCode.SessionTakenOver, Message = "elsewhere" });

            var closed = await NextEventAsync(client, ChatConnectionState.Closed);
            Assert.Equal(ReasonCode.SessionTakenOver, closed.Reason);
            Assert.Equal(ReasonCode.SessionTakenOver, (await Assert.ThrowsAsync<ChatClientException>(() => sending.WaitAsync(Timeout))).Reason);
            Assert.Equal(ChatConnectionState.Closed, client.State);
            await Assert.ThrowsAsync<ChatClientException>(() => client.SendAsync(1, "y"u8.ToArray()));
            await client.Messages.Completion.WaitAsync(Timeout);
            await Assert.ThrowsAsync<InvalidOperationException>(() => client.ConnectAsync());
        }
    }

    [Fact]
    public async Task Server_shutting_down_is_followed_by_a_reconnect_no_sooner_than_retry_after()
    {
        var (client, first, _) = await ConnectedAsync();
        await using (client)
        {
            await first.WriteAsync(new Disconnect { Reason = ReasonCode.ServerShuttingDown, RetryAfterMs = 50 });
            await first.DisposeAsync();
            var disconnected = await NextEventAsync(client, ChatConnectionState.Disconnected);
            Assert.Equal(ReasonCode.ServerShuttingDown, disconnected.Reason);
            var reconnecting = await NextEventAsync(client, ChatConnectionState.Reconnecting);
            Assert.True(reconnecting.Delay >= TimeSpan.FromMilliseconds(50));
            var (second, _) = await _server.AcceptSessionAsync();
            await using (second)
            {
                await NextEventAsync(client, ChatConnectionState.Connected);
            }
        }
    }

    [Fact]
    public async Task Receipts_are_surfaced()
    {
        var (client, connection, _) = await ConnectedAsync();
        await using (client)
        await using (connection)
        {
            await connection.WriteAsync(new Receipt { ConversationId = 3, Kind = ReceiptKind.Read, UpToSeq = 9, ReaderUserId = "bob", TimestampMs = 5 });
            using var cts = new CancellationTokenSource(Timeout);
            var receipt = await client.Receipts.ReadAsync(cts.Token);
            Assert.Equal(new ReceivedReceipt(3, ReceiptKind.Read, 0, 9, "bob", 5), receipt);
        }
    }

    [Fact]
    public async Task DisconnectAsync_sends_DISCONNECT_and_ConnectAsync_resumes_with_pending_sends()
    {
        var (client, first, _) = await ConnectedAsync();
        await using (client)
        {
            await first.WriteAsync(FakeConnection.Deliver(1, 1, 6));
            await NextMessageAsync(client);
            var disconnecting = client.DisconnectAsync();
            var disconnect = (await first.ExpectAsync<Disconnect>()).Message;
            Assert.Equal(ReasonCode.NormalDisconnect, disconnect.Reason);
            await first.DisposeAsync();
            await disconnecting.WaitAsync(Timeout);
            Assert.Equal(ChatConnectionState.Disconnected, client.State);

            var offline = client.SendAsync(1, "queued while offline"u8.ToArray());
            var connecting = client.ConnectAsync();
            var (second, connect) = await _server.AcceptSessionAsync();
            await using (second)
            {
                await connecting.WaitAsync(Timeout);
                Assert.Equal(6ul, connect.ResumeInboxSeq);
                var (send, flags) = await second.ExpectAsync<Send>();
                Assert.Equal(FrameFlags.None, flags); // never written before: not a DUP
                await second.WriteAsync(SentFor(send, 2));
                await offline.WaitAsync(Timeout);
            }
        }
    }

    [Fact]
    public async Task A_full_message_buffer_stops_reading_until_the_app_catches_up()
    {
        var (client, connection, _) = await ConnectedAsync(o => o.MessageBufferSize = 2);
        await using (client)
        await using (connection)
        {
            for (ulong i = 1; i <= 5; i++)
            {
                await connection.WriteAsync(FakeConnection.Deliver(1, i, i));
            }

            // Two fit; the read loop waits on the third and has not moved the cursor past it.
            var first = await NextMessageAsync(client);
            Assert.Equal(1ul, first.Seq);
            var seqs = new List<ulong> { first.Seq };
            for (var i = 0; i < 4; i++)
            {
                seqs.Add((await NextMessageAsync(client)).Seq);
            }

            Assert.Equal([1ul, 2ul, 3ul, 4ul, 5ul], seqs);
        }
    }
}
