using System.Globalization;
using System.Security.Cryptography;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using ChatBroker.Tokens;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>Issue 18: device revocation and token rotation over real TCP against the real broker process.</summary>
public sealed class SecurityTests
{
    private static async Task<(int Exit, string Out, string Err)> CliAsync(TestBroker broker, params string[] args) =>
        await BrokerProcess.RunCliAsync([.. args, "--admin", broker.Process.AdminEndPoint.ToString()]);

    [Fact]
    public async Task A_revoked_device_is_disconnected_at_once_and_its_tokens_are_refused_also_after_a_restart()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-revoke-" + Guid.NewGuid().ToString("N"));
        try
        {
            string phoneToken;
            DateTimeOffset revokedAt;
            await using (var broker = await TestBroker.StartAsync(dataDir))
            {
                phoneToken = broker.Token("alice", "phone");
                await using var phone = await broker.ConnectRawAsync();
                Assert.Equal(ReasonCode.Success, (await phone.LoginAsync("alice", "phone", phoneToken)).Reason);
                await using var laptop = await broker.LoginAsync("alice", "laptop");

                var (exit, stdout, stderr) = await CliAsync(broker, "device", "revoke", "--user", "alice", "--device", "phone");
                Assert.True(exit == 0, stderr);
                Assert.Contains("revoked phone of alice", stdout, StringComparison.Ordinal);

                // At once: the phone's session ends with DISCONNECT(DEVICE_REVOKED) without anything from the phone.
                var disconnect = await phone.ReceiveAsync<Disconnect>();
                Assert.Equal(ReasonCode.DeviceRevoked, disconnect.Reason);

                // The laptop is untouched.
                await laptop.SendAsync(new Ping());
                await laptop.ReceiveAsync<Pong>();

                // The phone's token no longer admits it.
                await using var again = await broker.ConnectRawAsync();
                Assert.Equal(ReasonCode.DeviceRevoked, (await again.LoginAsync("alice", "phone", phoneToken)).Reason);

                (exit, stdout, stderr) = await CliAsync(broker, "device", "list", "--user", "alice");
                Assert.True(exit == 0, stderr);
                var phoneLine = stdout.Split('\n').Single(l => l.StartsWith("phone ", StringComparison.Ordinal));
                Assert.Matches(@"phone\s+no\s+no\s+\d{4}-\d\d-\d\dT", phoneLine);
                Assert.Matches(@"laptop\s+yes\s+no\s+-", stdout);
                revokedAt = DateTimeOffset.ParseExact(phoneLine.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1], "yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);
            }

            await using var restarted = await TestBroker.StartAsync(dataDir);
            await using (var afterRestart = await restarted.ConnectRawAsync())
            {
                Assert.Equal(ReasonCode.DeviceRevoked, (await afterRestart.LoginAsync("alice", "phone", phoneToken)).Reason);
            }

            // A token issued after the revocation (the user signed in again) admits the device.
            var fresh = AccessToken.Issue(restarted.Secret, "alice", "phone", TimeSpan.FromHours(1), revokedAt.AddSeconds(1));
            await using var signedInAgain = await restarted.ConnectRawAsync();
            Assert.Equal(ReasonCode.Success, (await signedInAgain.LoginAsync("alice", "phone", fresh)).Reason);
        }
        finally
        {
            if (Directory.Exists(dataDir))
            {
                Directory.Delete(dataDir, recursive: true);
            }
        }
    }

    [Fact]
    public async Task Revoking_without_a_device_ends_every_session_of_the_user_and_a_token_for_any_device()
    {
        await using var broker = await TestBroker.StartAsync();
        await using var phone = await broker.LoginAsync("bob", "phone");
        await using var tablet = await broker.LoginAsync("bob", "tablet");
        await using var carol = await broker.LoginAsync("carol", "phone");
        var anyDeviceToken = broker.Token("bob"); // issued before the revocation: refused after it

        var (exit, _, stderr) = await CliAsync(broker, "device", "revoke", "--user", "bob");
        Assert.True(exit == 0, stderr);

        Assert.Equal(ReasonCode.DeviceRevoked, (await phone.ReceiveAsync<Disconnect>()).Reason);
        Assert.Equal(ReasonCode.DeviceRevoked, (await tablet.ReceiveAsync<Disconnect>()).Reason);
        await carol.SendAsync(new Ping());
        await carol.ReceiveAsync<Pong>();

        await using var anyDevice = await broker.ConnectRawAsync();
        Assert.Equal(ReasonCode.DeviceRevoked, (await anyDevice.LoginAsync("bob", "watch", anyDeviceToken)).Reason);
    }

    [Fact]
    public async Task The_admin_api_refuses_a_reserved_or_missing_user_id_with_a_reason()
    {
        await using var broker = await TestBroker.StartAsync();
        var (exit, _, stderr) = await CliAsync(broker, "device", "revoke", "--user", "#broker");
        Assert.Equal(2, exit);
        Assert.Contains("reserved", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task During_a_rotation_tokens_of_the_previous_secret_are_accepted_until_the_window_ends()
    {
        var currentKey = RandomNumberGenerator.GetBytes(32);
        var previousKey = RandomNumberGenerator.GetBytes(32);
        var current = new TokenSecret(currentKey);
        var previous = new TokenSecret(previousKey);
        var stranger = new TokenSecret(RandomNumberGenerator.GetBytes(32));
        var now = DateTimeOffset.UtcNow;
        string Token(TokenSecret secret) => AccessToken.Issue(secret, "alice", "phone", TimeSpan.FromHours(1), now);
        string[] Rotation(DateTimeOffset until) =>
        [
            "--set", "auth.secret=" + Convert.ToBase64String(currentKey),
            "--set", "auth.previous_secret=" + Convert.ToBase64String(previousKey),
            "--set", "auth.previous_secret_until=" + until.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
        ];

        await using (var broker = await TestBroker.StartAsync(null, Rotation(now.AddHours(1))))
        {
            foreach (var (secret, expected) in new[] { (previous, ReasonCode.Success), (current, ReasonCode.Success), (stranger, ReasonCode.BadToken) })
            {
                await using var device = await broker.ConnectRawAsync();
                Assert.Equal(expected, (await device.LoginAsync("alice", "phone", Token(secret))).Reason);
            }
        }

        await using (var broker = await TestBroker.StartAsync(null, Rotation(now.AddMinutes(-1))))
        {
            await using (var old = await broker.ConnectRawAsync())
            {
                var connack = await old.LoginAsync("alice", "phone", Token(previous));
                Assert.Equal(ReasonCode.BadToken, connack.Reason);
                Assert.Contains("previous secret", connack.Message, StringComparison.Ordinal);
            }

            await using var fresh = await broker.ConnectRawAsync();
            Assert.Equal(ReasonCode.Success, (await fresh.LoginAsync("alice", "phone", Token(current))).Reason);
        }
    }
}
