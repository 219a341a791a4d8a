using System.Security.Cryptography;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using ChatBroker.Tokens;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>Bad input over real TCP: each gets its documented reason code and a closed connection, and nobody else notices.</summary>
public sealed class ProtocolEdgeTests : IAsyncLifetime
{
    private TestBroker _broker = null!;

    public async Task InitializeAsync() => _broker = await TestBroker.StartAsync();

    public async Task DisposeAsync() => await _broker.DisposeAsync();

    private async Task<Connack> ConnectWithAsync(string token, string user = "alice", string device = "phone")
    {
        await using var raw = await _broker.ConnectRawAsync();
        var connack = await raw.LoginAsync(user, device, token);
        Assert.Empty(await raw.ReceiveUntilClosedAsync());
        return connack;
    }

    [Fact]
    public async Task Expired_token_gets_TOKEN_EXPIRED_and_close()
    {
        var token = AccessToken.Issue(_broker.Secret, "alice", "phone", TimeSpan.FromHours(1), DateTimeOffset.UtcNow.AddHours(-2));
        Assert.Equal(ReasonCode.TokenExpired, (await ConnectWithAsync(token)).Reason);
    }

    [Fact]
    public async Task Forged_token_from_another_secret_gets_BAD_TOKEN_and_close()
    {
        var forged = AccessToken.Issue(new TokenSecret(RandomNumberGenerator.GetBytes(32)), "alice", "phone", TimeSpan.FromHours(1), DateTimeOffset.UtcNow);
        var connack = await ConnectWithAsync(forged);
        Assert.Equal(ReasonCode.BadToken, connack.Reason);
        Assert.Contains("another secret", connack.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Garbage_token_gets_BAD_TOKEN_and_close()
    {
        Assert.Equal(ReasonCode.BadToken, (await ConnectWithAsync("not.a.token")).Reason);
    }

    [Fact]
    public async Task Token_of_another_user_gets_IDENTITY_MISMATCH()
    {
        Assert.Equal(ReasonCode.IdentityMismatch, (await ConnectWithAsync(_broker.Token("bob", "phone"))).Reason);
    }

    [Fact]
    public async Task A_packet_before_CONNECT_gets_PROTOCOL_VIOLATION_and_close()
    {
        await using var raw = await _broker.ConnectRawAsync();
        await raw.SendAsync(new Ping());

        var packets = await raw.ReceiveUntilClosedAsync();

        var connack = Assert.IsType<Connack>(Assert.Single(packets));
        Assert.Equal(ReasonCode.ProtocolViolation, connack.Reason);
    }

    [Fact]
    public async Task Oversize_frame_gets_FRAME_TOO_LARGE_and_close()
    {
        await using var raw = await _broker.LoginAsync("alice", "phone");
        // SEND declaring 1 MiB (over the 64 KiB default): 0x30, remaining length 0x80 0x80 0x40.
        await raw.SendRawAsync(new byte[] { 0x30, 0x80, 0x80, 0x40, 0x08, 0x01 });

        var packets = await raw.ReceiveUntilClosedAsync();

        var error = Assert.IsType<Error>(packets[^1]);
        Assert.Equal(ReasonCode.FrameTooLarge, error.Reason);
    }

    [Fact]
    public async Task Random_garbage_gets_a_protocol_reason_and_close()
    {
        var random = new Random(1234);
        for (var round = 0; round < 5; round++)
        {
            await using var raw = await _broker.ConnectRawAsync();
            var garbage = new byte[256];
            random.NextBytes(garbage);
            await raw.SendRawAsync(garbage);
            raw.ShutdownSend(); // garbage that looks like the start of a long frame is answered at end of stream

            var packets = await raw.ReceiveUntilClosedAsync();

            var connack = Assert.IsType<Connack>(Assert.Single(packets));
            Assert.InRange((int)connack.Reason, 16, 47); // the protocol-error range of docs/protocol.md
        }
    }

    [Fact]
    public async Task Second_login_of_a_device_takes_over_the_session()
    {
        await using var first = await _broker.LoginAsync("alice", "phone");
        await using var second = await _broker.LoginAsync("alice", "phone");

        var packets = await first.ReceiveUntilClosedAsync();

        var disconnect = Assert.IsType<Disconnect>(packets[^1]);
        Assert.Equal(ReasonCode.SessionTakenOver, disconnect.Reason);
        await second.SendAsync(new Ping());
        await second.ReceiveAsync<Pong>();
    }

    [Fact]
    public async Task Other_clients_are_unaffected_by_bad_ones()
    {
        await using var alice = await _broker.LoginAsync("alice", "phone");
        await using var bob = await _broker.LoginAsync("bob", "phone");
        var random = new Random(99);
        for (var i = 0; i < 20; i++)
        {
            await using (var bad = await _broker.ConnectRawAsync())
            {
                var garbage = new byte[64];
                random.NextBytes(garbage);
                await bad.SendRawAsync(garbage);
                await bad.ReceiveUntilClosedAsync();
            }

            await alice.SendAsync(new Send { ClientMsgId = (ulong)i + 1, ToUserId = "bob", Body = ByteString.CopyFromUtf8("hi " + i) });
            var sent = await alice.ReceiveAsync<Sent>();
            Assert.Equal((ulong)i + 1, sent.Seq);
            var deliver = await bob.ReceiveAsync<Deliver>();
            Assert.Equal("hi " + i, deliver.Body.ToStringUtf8());
        }
    }

    [Fact]
    public async Task Silent_device_is_disconnected_after_one_and_a_half_keepalives()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "session.min_keepalive=1s");
        await using var raw = await broker.LoginAsync("alice", "phone", keepaliveS: 1);

        var packets = await raw.ReceiveUntilClosedAsync(TimeSpan.FromSeconds(10));

        var disconnect = Assert.IsType<Disconnect>(packets[^1]);
        Assert.Equal(ReasonCode.KeepaliveTimeout, disconnect.Reason);
    }

    [Fact]
    public async Task A_connection_that_sends_no_CONNECT_is_closed_after_the_connect_timeout()
    {
        await using var broker = await TestBroker.StartAsync(null, "--set", "tcp.connect_timeout=300ms");
        await using var silent = await broker.ConnectRawAsync();
        var started = System.Diagnostics.Stopwatch.StartNew();

        var connack = Assert.IsType<Connack>(Assert.Single(await silent.ReceiveUntilClosedAsync(TimeSpan.FromSeconds(10))));

        Assert.Equal(ReasonCode.KeepaliveTimeout, connack.Reason);
        Assert.InRange(started.Elapsed, TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(5));
        await using var device = await broker.LoginAsync("alice", "phone"); // later connections still get their full time
        await device.SendAsync(new Ping());
        await device.ReceiveAsync<Pong>();
    }

    [Fact]
    public async Task Idle_and_half_connected_devices_are_told_the_broker_is_shutting_down()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var idle = await broker.LoginAsync("alice", "phone");
        await using var busy = await broker.LoginAsync("bob", "phone");
        await busy.SendAsync(new Ping());
        await busy.ReceiveAsync<Pong>();
        await using var handshaking = await broker.ConnectRawAsync(); // no CONNECT yet

        broker.Process.SendSignal(BrokerProcess.SigTerm);

        foreach (var device in new[] { idle, busy, handshaking })
        {
            var disconnect = Assert.IsType<Disconnect>((await device.ReceiveUntilClosedAsync())[^1]);
            Assert.Equal(ReasonCode.ServerShuttingDown, disconnect.Reason);
            Assert.True(disconnect.RetryAfterMs > 0);
        }

        Assert.Equal(0, await broker.Process.WaitForExitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task Device_ids_starting_with_hash_are_reserved()
    {
        await using var raw = await _broker.ConnectRawAsync();
        var connack = await raw.LoginAsync("alice", "#read", _broker.Token("alice"));
        Assert.Equal(ReasonCode.InvalidField, connack.Reason);
    }
}
