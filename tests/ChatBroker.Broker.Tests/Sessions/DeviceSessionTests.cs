using ChatBroker.Broker.Configuration;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>
/// Whole sessions — read loop, protocol state, messaging core, store, outbox — driven through frames over
/// <see cref="InMemoryTransport"/>. The tests speak only the wire protocol, so they hold whatever the inside
/// of a session looks like.
/// </summary>
public sealed class DeviceSessionTests : IAsyncLifetime
{
    private SessionHarness _broker = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _broker.DisposeAsync();

    private void Configure(Action<BrokerOptions> configure)
    {
        // Settings are read when a session starts: tests that need others set them before the first connect.
        configure(_broker.Options);
    }

    [Fact]
    public async Task Connect_with_a_valid_token_is_answered_with_CONNACK_and_the_catch_up_seam()
    {
        var phone = _broker.Open();

        await phone.SendAsync(_broker.ConnectPacket("alice", "phone", keepaliveS: 30));

        var connack = await phone.ExpectAsync<Connack>();
        Assert.Equal(ReasonCode.Success, connack.Reason);
        Assert.Equal(30u, connack.KeepaliveS);
        Assert.Equal((uint)_broker.Options.Tcp.MaxFrameBytes, connack.MaxFrameSize);
        Assert.NotEmpty(connack.SessionId);
        Assert.Equal(0UL, (await phone.ExpectAsync<SyncDone>()).InboxSeq);
    }

    [Fact]
    public async Task Connect_with_a_bad_token_is_refused_with_its_reason_and_the_connection_closed()
    {
        var phone = _broker.Open();
        var connect = _broker.ConnectPacket("alice", "phone");
        connect.Token = connect.Token[..^4] + (connect.Token.EndsWith("AAAA", StringComparison.Ordinal) ? "BBBB" : "AAAA");

        await phone.SendAsync(connect);

        var connack = await phone.ExpectAsync<Connack>();
        Assert.Equal(ReasonCode.BadToken, connack.Reason);
        Assert.Empty(await phone.ReadToEndAsync());
        await phone.EndedAsync();
        Assert.False(_broker.Context.Registry.IsOnline("alice"));
    }

    [Fact]
    public async Task Connect_as_a_reserved_user_id_is_refused_even_with_a_valid_token()
    {
        var phone = _broker.Open();

        await phone.SendAsync(_broker.ConnectPacket("#broker", "phone"));

        Assert.Equal(ReasonCode.InvalidField, (await phone.ExpectAsync<Connack>()).Reason);
        await phone.EndedAsync();
        Assert.False(_broker.Context.Registry.IsOnline("#broker"));
    }

    [Theory]
    [InlineData("#broker")]
    [InlineData("#x")]
    public async Task Send_to_a_reserved_user_id_is_INVALID_FIELD_like_a_reserved_group_member(string to)
    {
        var alice = await ConnectAsync("alice", "phone");

        await alice.SendAsync(TestDevice.Text(7, to, "hi"));

        var error = await alice.ExpectAsync<Error>();
        Assert.Equal(ReasonCode.InvalidField, error.Reason);
        Assert.Equal(7UL, error.RequestId);
        await alice.EndedAsync();

        var bob = await ConnectAsync("bob", "phone");
        await bob.SendAsync(new GroupRequest { RequestId = 3, Create = new GroupCreate { Title = "t", MemberUserIds = { to } } });
        Assert.Equal(ReasonCode.InvalidField, (await bob.ExpectAsync<Error>()).Reason);
    }

    [Fact]
    public async Task Connect_with_another_users_token_is_refused_as_an_identity_mismatch()
    {
        var phone = _broker.Open();
        var connect = _broker.ConnectPacket("alice", "phone");
        connect.Token = _broker.ConnectPacket("bob", "phone").Token;

        await phone.SendAsync(connect);

        Assert.Equal(ReasonCode.IdentityMismatch, (await phone.ExpectAsync<Connack>()).Reason);
        Assert.Empty(await phone.ReadToEndAsync());
        await phone.EndedAsync();
    }

    [Fact]
    public async Task A_packet_before_CONNECT_is_refused_and_the_connection_closed()
    {
        var phone = _broker.Open();

        await phone.SendAsync(TestDevice.Text(1, "bob", "too early"));

        Assert.Equal(ReasonCode.ProtocolViolation, (await phone.ExpectAsync<Connack>()).Reason);
        await phone.EndedAsync();
    }

    [Fact]
    public async Task A_CONNECT_fed_one_byte_at_a_time_is_handled_once_whole()
    {
        var phone = _broker.Open();
        var bytes = RawFrames.Of(_broker.ConnectPacket("alice", "phone"));

        foreach (var b in bytes)
        {
            await phone.Transport.ClientOutput.WriteAsync(new[] { b });
        }

        Assert.Equal(ReasonCode.Success, (await phone.ExpectAsync<Connack>()).Reason);
    }

    [Fact]
    public async Task An_oversized_SEND_gets_a_non_fatal_code_and_the_session_stays_up()
    {
        // One rule: every code IsFatal calls fatal closes the session, every code the session survives is not fatal.
        var alice = await ConnectAsync("alice", "phone");
        var send = TestDevice.Text(7, "bob", "");
        send.Body = Google.Protobuf.ByteString.CopyFrom(new byte[(int)_broker.Options.Tcp.MaxFrameBytes - 100]);

        await alice.SendAsync(send);

        var error = await alice.ExpectAsync<Error>();
        Assert.Equal(7UL, error.RequestId);
        Assert.False(ReasonCodes.IsFatal(error.Reason), $"{error.Reason} is fatal by IsFatal but the session stays up");
        await alice.SendAsync(TestDevice.Text(8, "bob", "small"));
        Assert.Equal(8UL, (await alice.ExpectAsync<Sent>()).ClientMsgId);
    }

    [Fact]
    public async Task A_closing_error_echoes_the_request_id_and_packet_type_of_the_request()
    {
        var alice = await ConnectAsync("alice", "phone");

        await alice.SendAsync(new GroupRequest { RequestId = 9 }); // no op: MISSING_FIELD, fatal

        var error = await alice.ExpectAsync<Error>();
        Assert.Equal(ReasonCode.MissingField, error.Reason);
        Assert.Equal(9UL, error.RequestId);
        Assert.Equal(PacketType.GroupRequest, error.InReplyTo);
    }

    [Theory]
    [InlineData(15u)] // SYSTEM: only the server writes it
    [InlineData(10u)]
    [InlineData(63u)]
    public async Task Send_with_a_reserved_content_type_is_refused_and_nothing_is_stored(uint contentType)
    {
        var alice = await ConnectAsync("alice", "phone");
        var send = TestDevice.Text(7, "bob", "Bob was removed");
        send.ContentType = (ContentType)contentType;

        await alice.SendAsync(send);

        var error = await alice.ExpectAsync<Error>();
        Assert.Equal(ReasonCode.BadRequest, error.Reason);
        Assert.Equal(7UL, error.RequestId);
        await alice.SendAsync(TestDevice.Text(8, "bob", "still open"));
        Assert.Equal(1UL, (await alice.ExpectAsync<Sent>()).Seq); // the refused one took no seq
    }

    [Fact]
    public async Task Send_is_answered_with_SENT_once_stored()
    {
        var alice = await ConnectAsync("alice", "phone");

        await alice.SendAsync(TestDevice.Text(7, "bob", "hello"));

        var sent = await alice.ExpectAsync<Sent>();
        Assert.Equal(7UL, sent.ClientMsgId);
        Assert.Equal(1UL, sent.Seq);
        Assert.NotEqual(0UL, sent.ConversationId);
        Assert.Equal(1UL, _broker.Store.GetLastSeq(sent.ConversationId));
    }

    [Fact]
    public async Task A_retried_send_gets_the_same_SENT_and_is_delivered_once()
    {
        var alice = await ConnectAsync("alice", "phone");
        var bob = await ConnectAsync("bob", "phone");

        await alice.SendAsync(TestDevice.Text(7, "bob", "once"));
        var first = await alice.ExpectAsync<Sent>();
        await alice.SendAsync(TestDevice.Text(7, "bob", "once"));
        var again = await alice.ExpectAsync<Sent>();
        await alice.SendAsync(TestDevice.Text(8, "bob", "twice"));
        await alice.ExpectAsync<Sent>();

        Assert.Equal(first.Seq, again.Seq);
        Assert.Equal("once", (await bob.ExpectAsync<Deliver>()).Body.ToStringUtf8());
        Assert.Equal("twice", (await bob.ExpectAsync<Deliver>()).Body.ToStringUtf8());
    }

    [Fact]
    public async Task A_device_that_resumes_from_zero_gets_its_own_messages_and_one_with_a_position_does_not()
    {
        // Issue 18, defect 4: a reinstalled app keeps its device id and resumes from 0; it has nothing, so its
        // backlog holds what it sent too (with the client_msg_id, to match its outbox). A device that resumes
        // from a position has its own messages (it got SENT), and what it sends now is never echoed.
        var phone = await ConnectAsync("alice", "phone");
        await phone.SendAsync(TestDevice.Text(1, "bob", "one"));
        await phone.ExpectAsync<Sent>();
        await phone.SendAsync(TestDevice.Text(2, "bob", "two"));
        await phone.ExpectAsync<Sent>();

        var reinstalled = await _broker.ConnectAsync("alice", "phone", resumeInboxSeq: 0);
        var first = await reinstalled.ExpectAsync<Deliver>();
        var second = await reinstalled.ExpectAsync<Deliver>();
        Assert.Equal(("one", 1UL, 1UL), (first.Body.ToStringUtf8(), first.ClientMsgId, first.InboxSeq));
        Assert.Equal(("two", 2UL, 2UL), (second.Body.ToStringUtf8(), second.ClientMsgId, second.InboxSeq));
        Assert.Equal(2UL, (await reinstalled.ExpectAsync<SyncDone>()).InboxSeq);
        await reinstalled.SendAsync(TestDevice.Text(3, "bob", "three"));
        await reinstalled.ExpectAsync<Sent>();
        await reinstalled.SendAsync(new Ping());
        await reinstalled.ExpectAsync<Pong>(); // not a DELIVER of "three"

        var resumed = await _broker.ConnectAsync("alice", "phone", resumeInboxSeq: 2);
        Assert.Equal(3UL, (await resumed.ExpectAsync<SyncDone>()).InboxSeq);
    }

    [Fact]
    public async Task Send_is_delivered_to_the_recipients_session_and_the_senders_other_device()
    {
        var alicePhone = await ConnectAsync("alice", "phone");
        var aliceLaptop = await ConnectAsync("alice", "laptop");
        var bob = await ConnectAsync("bob", "phone");

        await alicePhone.SendAsync(TestDevice.Text(3, "bob", "hi bob"));
        var sent = await alicePhone.ExpectAsync<Sent>();

        var deliver = await bob.ExpectAsync<Deliver>();
        Assert.Equal(("alice", "phone", "hi bob"), (deliver.SenderUserId, deliver.SenderDeviceId, deliver.Body.ToStringUtf8()));
        Assert.Equal((sent.ConversationId, sent.Seq, 1UL), (deliver.ConversationId, deliver.Seq, deliver.InboxSeq));
        Assert.Equal(0UL, deliver.ClientMsgId); // the client's id goes only to the sender's own devices
        var copy = await aliceLaptop.ExpectAsync<Deliver>();
        Assert.Equal((sent.Seq, 3UL), (copy.Seq, copy.ClientMsgId));
    }

    [Fact]
    public async Task A_sends_SENT_and_DELIVER_leave_before_the_read_loop_waits_again()
    {
        // As the broker runs its store (durability async, a caller that finds the writer idle writes its own
        // append), the append completes on the read loop's thread, and the read loop sends the SENT and the
        // DELIVER itself at the end of the receive, before it waits for more: no pool thread is woken to send
        // them (which would send only after the read loop gave its thread back).
        await using var broker = new SessionHarness(storage: new StorageOptions
        {
            Durability = Durability.Async,
            CallerWritesAfterIdle = TimeSpan.Zero,
            SweepInterval = Timeout.InfiniteTimeSpan,
        });
        var alice = await broker.ConnectAsync("alice", "phone");
        await alice.ExpectAsync<SyncDone>();
        var bob = await broker.ConnectAsync("bob", "phone");
        await bob.ExpectAsync<SyncDone>();

        await alice.SendAsync(TestDevice.Text(1, "bob", "hi"));
        await alice.ExpectAsync<Sent>();
        await bob.ExpectAsync<Deliver>();
        await alice.Transport.WhenWaitingAsync(receives: 2); // CONNECT, SEND

        var (wait, receive, sent) = alice.Transport.LastCalls;
        var delivered = bob.Transport.LastCalls.Send;
        Assert.True(receive < sent && sent < wait, $"SENT at {sent}: not between the receive at {receive} and the next wait at {wait}");
        Assert.True(receive < delivered && delivered < wait, $"DELIVER at {delivered}: not between the receive at {receive} and the next wait at {wait}");
    }

    [Fact]
    public async Task Ping_is_answered_with_PONG()
    {
        var alice = await ConnectAsync("alice", "phone");

        await alice.SendAsync(new Ping());

        await alice.ExpectAsync<Pong>();
    }

    [Fact]
    public async Task Messages_stored_while_offline_and_live_ones_sent_during_catch_up_arrive_once_each_in_order()
    {
        // Small buffers so that catching up stalls on the device's reading: the live messages below are
        // committed while the catch-up is still running, and meet it at the seam.
        Configure(o =>
        {
            o.Session.MaxOutboundBytes = 64 * 1024;
            o.Session.ResumeBatch = 16;
        });
        const int Offline = 150, Live = 50, BodyBytes = 1024;
        var alice = await ConnectAsync("alice", "phone");
        await SendAllAsync(alice, "bob", 1, Offline, BodyBytes);

        var bob = _broker.Open(clientBufferBytes: 4 * 1024);
        await bob.SendAsync(_broker.ConnectPacket("bob", "phone"));
        Assert.Equal(ReasonCode.Success, (await bob.ExpectAsync<Connack>()).Reason);
        // Bob reads nothing more yet: the backlog (150 KB) is far above what the pipe and the catch-up's high
        // watermark (4 KB + 32 KB) hold, so the catch-up is waiting for him while these are committed.
        await SendAllAsync(alice, "bob", Offline + 1, Live, BodyBytes);

        // Every message once, in order, and the seam (SYNC_DONE) after the live ones: they were committed
        // while catching up, so the catch-up took them.
        var inboxSeqs = new List<ulong>();
        while (inboxSeqs.Count < Offline + Live)
        {
            var deliver = await bob.ExpectAsync<Deliver>();
            inboxSeqs.Add(deliver.InboxSeq);
            Assert.Equal(deliver.InboxSeq, deliver.Seq); // one conversation: its seq and bob's inbox seq agree
        }

        Assert.Equal(Enumerable.Range(1, Offline + Live).Select(i => (ulong)i), inboxSeqs);
        Assert.Equal((ulong)(Offline + Live), (await bob.ExpectAsync<SyncDone>()).InboxSeq);

        // Nothing more follows: a PING's PONG is the next frame.
        await bob.SendAsync(new Ping());
        await bob.ExpectAsync<Pong>();
    }

    [Fact]
    public async Task A_device_that_stops_reading_is_disconnected_as_a_slow_consumer_with_bounded_memory()
    {
        const int MaxOutbound = 32 * 1024, ClientBuffer = 4 * 1024, Messages = 100, BodyBytes = 2048;
        Configure(o => o.Session.MaxOutboundBytes = MaxOutbound);
        var alice = await ConnectAsync("alice", "phone");
        var bob = await ConnectAsync("bob", "phone", clientBufferBytes: ClientBuffer);

        // 200 KB, one SEND after the other, for a device that reads nothing: the first DELIVERs fill its pipe,
        // the next ones its outbox, until the outbox passes its bound.
        for (var i = 1; i <= Messages; i++)
        {
            await alice.SendAsync(TestDevice.Bytes((ulong)i, "bob", BodyBytes));
            await alice.ExpectAsync<Sent>();
        }

        var frames = await bob.ReadToEndAsync();
        await bob.EndedAsync();

        var disconnect = Assert.IsType<Disconnect>(frames[^1]);
        Assert.Equal(ReasonCode.SlowConsumer, disconnect.Reason);
        var delivered = frames.OfType<Deliver>().Select(d => d.InboxSeq).ToList();
        Assert.InRange(delivered.Count, 1, Messages - 1);
        Assert.Equal(Enumerable.Range(1, delivered.Count).Select(i => (ulong)i), delivered); // a prefix, in order
        // Never more held for bob than his pipe, one send in flight and the outbox's bound.
        Assert.True(bob.BytesRead <= ClientBuffer + MaxOutbound + BodyBytes + 1024, $"{bob.BytesRead} bytes queued for a slow consumer");
        Assert.False(_broker.Context.Registry.IsOnline("bob"));

        // Alice's session is untouched.
        await alice.SendAsync(new Ping());
        await alice.ExpectAsync<Pong>();
    }

    [Fact]
    public async Task The_same_device_connecting_again_takes_over_and_the_old_session_is_told_why()
    {
        var alice = await ConnectAsync("alice", "phone");
        var oldPhone = await ConnectAsync("bob", "phone");

        var newPhone = await ConnectAsync("bob", "phone");

        var disconnect = await oldPhone.ExpectAsync<Disconnect>();
        Assert.Equal(ReasonCode.SessionTakenOver, disconnect.Reason);
        Assert.Empty(await oldPhone.ReadToEndAsync());
        await oldPhone.EndedAsync();

        await alice.SendAsync(TestDevice.Text(1, "bob", "to the new one"));
        await alice.ExpectAsync<Sent>();
        Assert.Equal("to the new one", (await newPhone.ExpectAsync<Deliver>()).Body.ToStringUtf8());
        Assert.True(_broker.Context.Registry.IsOnline("bob"));
    }

    [Fact]
    public async Task A_session_that_receives_nothing_for_one_and_a_half_keepalives_is_closed()
    {
        var bob = await ConnectAsync("bob", "phone", keepaliveS: 10);
        var quiet = await ConnectAsync("carol", "phone", keepaliveS: 60);

        // Within the window (10 s x 1.5) nothing is closed; past it, only the session whose window passed.
        Assert.Equal(0, _broker.Keepalive.CloseExpired(Environment.TickCount64 + 14_000));
        Assert.Equal(1, _broker.Keepalive.CloseExpired(Environment.TickCount64 + 15_001));

        Assert.Equal(ReasonCode.KeepaliveTimeout, (await bob.ExpectAsync<Disconnect>()).Reason);
        await bob.EndedAsync();
        await quiet.SendAsync(new Ping());
        await quiet.ExpectAsync<Pong>();
    }

    [Fact]
    public async Task An_idle_session_waits_for_data_without_a_receive_buffer()
    {
        var bob = await ConnectAsync("bob", "phone");

        await bob.SendAsync(new Ping());
        await bob.ExpectAsync<Pong>();
        var (waits, receives) = await bob.Transport.WhenWaitingAsync(receives: 2);

        // Every receive into a buffer came after a wait without one, and the loop is in such a wait now.
        Assert.Equal(receives + 1, waits);
        Assert.True(receives >= 2, "CONNECT and PING were each received");
    }

    [Fact]
    public async Task Shutdown_tells_every_session_and_ends_it()
    {
        var bob = await ConnectAsync("bob", "phone");
        var handshaking = _broker.Open();

        await _broker.DisposeAsync();

        var disconnect = await bob.ExpectAsync<Disconnect>();
        Assert.Equal(ReasonCode.ServerShuttingDown, disconnect.Reason);
        Assert.NotEqual(0u, disconnect.RetryAfterMs);
        await bob.EndedAsync();
        Assert.Equal(ReasonCode.ServerShuttingDown, (await handshaking.ExpectAsync<Disconnect>()).Reason);
        await handshaking.EndedAsync();
        _broker = new SessionHarness(); // the fixture's own dispose then has nothing to stop
    }

    // Pipelined: every SEND written at once, then every SENT read (each a commit of its own otherwise).
    private static async Task SendAllAsync(TestDevice from, string to, int firstId, int count, int bodyBytes)
    {
        for (var i = 0; i < count; i++)
        {
            FrameWriter.Write(from.Transport.ClientOutput, TestDevice.Bytes((ulong)(firstId + i), to, bodyBytes));
        }

        await from.Transport.ClientOutput.FlushAsync();
        for (var i = 0; i < count; i++)
        {
            Assert.Equal((ulong)(firstId + i), (await from.ExpectAsync<Sent>()).ClientMsgId);
        }
    }

    private async Task<TestDevice> ConnectAsync(string user, string device, uint keepaliveS = 0, long clientBufferBytes = 64 * 1024)
    {
        var connection = await _broker.ConnectAsync(user, device, keepaliveS: keepaliveS, clientBufferBytes: clientBufferBytes);
        await connection.ExpectAsync<SyncDone>();
        return connection;
    }
}
