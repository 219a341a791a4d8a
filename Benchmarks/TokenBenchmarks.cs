using System.Security.Cryptography;
using BenchmarkDotNet.Attributes;
using ChatBroker.Tokens;

namespace ChatBroker.Benchmarks;

/// <summary>
/// Verifying a device token, which every CONNECT does (a share of the broker's CPU per connect:
/// docs/performance.md, "connect rate"). A token as the broker issues it: header with kid, user, device, iat, exp.
/// </summary>
[MemoryDiagnoser]
public class TokenBenchmarks
{
    private readonly TokenSecret _secret = new(RandomNumberGenerator.GetBytes(32));
    private readonly DateTimeOffset _now = DateTimeOffset.UnixEpoch.AddSeconds(1_765_000_000);
    private string _token = "";

    [GlobalSetup]
    public void Setup() => _token = AccessToken.Issue(_secret, "user0000012345", "d1", TimeSpan.FromDays(30), _now);

    [Benchmark]
    public TokenStatus Verify() => AccessToken.Verify(_secret, _token, _now, out _);
}
