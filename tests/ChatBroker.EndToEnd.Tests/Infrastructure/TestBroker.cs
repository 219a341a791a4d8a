using ChatBroker.Host.Tests.Infrastructure;
using ChatBroker.Tokens;

namespace ChatBroker.EndToEnd.Tests.Infrastructure;

/// <summary>A broker child process plus the ability to mint tokens with its secret.</summary>
public sealed class TestBroker : IAsyncDisposable
{
    private TestBroker(BrokerProcess process, TokenSecret secret)
    {
        Process = process;
        Secret = secret;
    }

    public BrokerProcess Process { get; }
    public TokenSecret Secret { get; }

    public static async Task<TestBroker> StartAsync(string? dataDir = null, params string[] extraArgs)
    {
        var process = await BrokerProcess.StartAsync(dataDir, extraArgs);
        var secret = TokenSecret.LoadOrCreate(Path.Combine(process.DataDir, "token.secret"), out _);
        return new TestBroker(process, secret);
    }

    public string Token(string user, string? device = null, TimeSpan? ttl = null) =>
        AccessToken.Issue(Secret, user, device, ttl ?? TimeSpan.FromHours(1), DateTimeOffset.UtcNow);

    public Task<RawDevice> ConnectRawAsync(int receiveBuffer = 0) => RawDevice.ConnectAsync(Process.TcpEndPoint, receiveBuffer);

    /// <summary>A raw device that has completed CONNECT successfully.</summary>
    public async Task<RawDevice> LoginAsync(string user, string device, ulong resumeInboxSeq = 0, uint keepaliveS = 0, int receiveBuffer = 0,
        ulong capabilities = (ulong)Protocol.Messages.Capability.Receipts)
    {
        var raw = await ConnectRawAsync(receiveBuffer);
        var connack = await raw.LoginAsync(user, device, Token(user, device), resumeInboxSeq, keepaliveS, capabilities);
        if (connack.Reason != Protocol.Messages.ReasonCode.Success)
        {
            throw new InvalidOperationException($"login of {user}/{device} failed: {connack.Reason} {connack.Message}");
        }

        return raw;
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}
