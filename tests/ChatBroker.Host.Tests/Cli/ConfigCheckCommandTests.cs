using ChatBroker.Host.Tests.Infrastructure;

namespace ChatBroker.Host.Tests.Cli;

/// <summary>`chatbroker config check`: errors with key and line:col, effective settings with their origins.</summary>
public sealed class ConfigCheckCommandTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "chatbroker-config-" + Guid.NewGuid().ToString("N"));

    public ConfigCheckCommandTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string WriteToml(string text)
    {
        var path = Path.Combine(_dir, "broker.toml");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public async Task Config_check_on_a_misspelt_key_exits_non_zero_and_names_key_and_line()
    {
        var file = WriteToml("[storage]\ndurability = \"sync\"\nmax_batch_mesages = 10\n");

        var (exit, _, stderr) = await BrokerProcess.RunCliAsync(["config", "check", file]);

        Assert.Equal(2, exit);
        Assert.Contains($"{file}:3:1: unknown key 'storage.max_batch_mesages' (did you mean 'storage.max_batch_messages'?)", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Config_check_prints_effective_settings_with_origins_and_masks_secrets()
    {
        var file = WriteToml("[tcp]\nmax_frame_bytes = 2048\n");
        var env = new Dictionary<string, string> { ["CHATBROKER__AUTH__SECRET"] = Convert.ToBase64String(new byte[32]) };

        var (exit, stdout, stderr) = await BrokerProcess.RunCliAsync(["config", "check", file], env);

        Assert.True(exit == 0, stderr);
        Assert.Contains($"max_frame_bytes = 2048    # {file}:2:19", stdout, StringComparison.Ordinal);
        Assert.Contains("secret = \"********\"    # environment variable CHATBROKER__AUTH__SECRET", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain(Convert.ToBase64String(new byte[32]), stdout, StringComparison.Ordinal);
        Assert.Contains("listen = \"127.0.0.1:7883\"    # default", stdout, StringComparison.Ordinal);
    }
}
