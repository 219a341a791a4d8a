using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Tokens;

namespace ChatBroker.Host.Tests.Cli;

/// <summary>`chatbroker token`: what it prints verifies with the node's secret; bad input exits 2.</summary>
public sealed class TokenCommandTests
{
    [Fact]
    public async Task Token_printed_by_the_cli_verifies_with_the_nodes_secret()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-test-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (exit, stdout, stderr) = await BrokerProcess.RunCliAsync(
                ["token", "--user", "alice", "--device", "phone", "--ttl", "2h", "--set", "node.data_dir=" + dataDir]);

            Assert.True(exit == 0, stderr);
            var secret = TokenSecret.LoadOrCreate(Path.Combine(dataDir, "token.secret"), out var created);
            Assert.False(created);
            Assert.Equal(TokenStatus.Valid, AccessToken.Verify(secret, stdout.Trim(), DateTimeOffset.UtcNow, out var claims));
            Assert.Equal("alice", claims.User);
            Assert.Equal("phone", claims.Device);
            Assert.InRange(claims.Expires - DateTimeOffset.UtcNow, TimeSpan.FromMinutes(110), TimeSpan.FromMinutes(121));
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }

    [Fact]
    public async Task Cli_token_with_a_bad_ttl_exits_2_and_says_why()
    {
        var (exit, _, stderr) = await BrokerProcess.RunCliAsync(["token", "--user", "alice", "--ttl", "forever"]);

        Assert.Equal(2, exit);
        Assert.Contains("--ttl", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--user", "#broker")]
    [InlineData("--device", "#delivered")]
    public async Task Cli_token_refuses_a_reserved_id_the_broker_would_refuse(string option, string id)
    {
        string[] args = option == "--user" ? ["token", "--user", id] : ["token", "--user", "alice", "--device", id];

        var (exit, stdout, stderr) = await BrokerProcess.RunCliAsync(args);

        Assert.Equal(2, exit);
        Assert.Empty(stdout.Trim());
        Assert.Contains("reserved", stderr, StringComparison.Ordinal);
    }
}
