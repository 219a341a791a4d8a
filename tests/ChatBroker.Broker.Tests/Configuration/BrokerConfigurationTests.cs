using System.Collections;
using System.Net;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Configuration.Toml;

namespace ChatBroker.Broker.Tests.Configuration;

public sealed class BrokerConfigurationTests : IDisposable
{
    private static readonly IDictionary NoEnvironment = new Hashtable();
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "chatbroker-config-" + Guid.NewGuid().ToString("N"));

    public BrokerConfigurationTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string WriteToml(string text)
    {
        var path = Path.Combine(_dir, "broker.toml");
        File.WriteAllText(path, text);
        return path;
    }

    private static string RepositoryFile(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, name);
            if (File.Exists(candidate) && File.Exists(Path.Combine(dir.FullName, "ChatBroker.sln")))
            {
                return candidate;
            }
        }

        throw new FileNotFoundException($"{name} not found above {AppContext.BaseDirectory}");
    }

    private static BrokerConfigurationException LoadFails(string? file, string[]? overrides = null, IDictionary? env = null) =>
        Assert.Throws<BrokerConfigurationException>(() => BrokerConfiguration.Load(file, overrides, env ?? NoEnvironment));

    [Fact]
    public void No_file_gives_the_embedded_defaults_of_the_design()
    {
        var config = BrokerConfiguration.Load(null, [], NoEnvironment);
        var o = config.Options;

        Assert.Equal("./data", o.Node.DataDir);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 7883), o.Tcp.Listen);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 7880), o.Admin.Listen);
        Assert.Equal(65536, o.Tcp.MaxFrameBytes);
        Assert.Equal(DurabilityMode.Sync, o.Storage.Durability);
        Assert.Equal(RetentionPolicy.Days, o.Retention.Policy);
        Assert.Equal(30, o.Retention.Days);
    }

    [Fact]
    public void Shipped_broker_toml_is_valid_and_equals_the_defaults()
    {
        var shipped = BrokerConfiguration.Load(RepositoryFile("broker.toml"), [], NoEnvironment).Options;
        var defaults = new BrokerOptions();

        foreach (var setting in SettingsSchema.All)
        {
            Assert.True(setting.Get(defaults) == setting.Get(shipped), $"{setting.Key}: broker.toml has {setting.Get(shipped)}, default is {setting.Get(defaults)}");
        }
    }

    [Fact]
    public void Shipped_broker_toml_has_every_key_with_a_comment_above_it()
    {
        var path = RepositoryFile("broker.toml");
        var lines = File.ReadAllLines(path);
        var leaves = TomlDocument.Load(path).Flatten();

        foreach (var setting in SettingsSchema.All)
        {
            Assert.True(leaves.TryGetValue(setting.ConfigKey, out var leaf), $"broker.toml lacks {setting.Key}");
            var above = lines[leaf.KeyPosition.Line - 2].TrimStart();
            Assert.True(above.StartsWith('#'), $"{setting.Key} at line {leaf.KeyPosition.Line} has no comment above it");
        }
    }

    [Fact]
    public void Misspelt_key_is_an_error_naming_the_key_its_line_and_a_suggestion()
    {
        var file = WriteToml("[tcp]\nlisten = \"127.0.0.1:7883\"\nmax_frame_byte = 1024\n");

        var e = LoadFails(file);

        var error = Assert.Single(e.Errors);
        Assert.Equal($"{file}:3:1: unknown key 'tcp.max_frame_byte' (did you mean 'tcp.max_frame_bytes'?)", error);
    }

    [Fact]
    public void Unknown_section_is_an_error()
    {
        var file = WriteToml("[tpc]\nlisten = \"127.0.0.1:7883\"\n");

        var error = Assert.Single(LoadFails(file).Errors);
        Assert.StartsWith($"{file}:2:1: unknown key 'tpc.listen'", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Wrong_type_is_an_error_naming_key_and_value_position()
    {
        var file = WriteToml("[tcp]\nmax_frame_bytes = \"64k\"\n");

        var error = Assert.Single(LoadFails(file).Errors);
        Assert.Equal($"{file}:2:19: tcp.max_frame_bytes: expected an integer, got a string", error);
    }

    [Fact]
    public void Out_of_range_value_is_an_error()
    {
        var file = WriteToml("[tcp]\nmax_frame_bytes = 1\n");

        var error = Assert.Single(LoadFails(file).Errors);
        Assert.Equal($"{file}:2:19: tcp.max_frame_bytes: 1 is out of range (64 to 16777216)", error);
    }

    [Fact]
    public void Bad_duration_endpoint_and_choice_are_errors_and_all_are_reported_at_once()
    {
        var file = WriteToml("[tcp]\nlisten = \"localhost\"\nconnect_timeout = \"10 parsecs\"\n[storage]\ndurability = \"sometimes\"\n");

        var errors = LoadFails(file).Errors;

        Assert.Equal(3, errors.Count);
        Assert.Contains(errors, e => e.StartsWith($"{file}:2:10: tcp.listen: expected an address and port", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith($"{file}:3:19: tcp.connect_timeout:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e == $"{file}:5:14: storage.durability: expected one of \"sync\", \"async\", got \"sometimes\"");
    }

    [Fact]
    public void Value_where_a_table_is_expected_is_an_error()
    {
        var file = WriteToml("tcp = 5\n");

        var error = Assert.Single(LoadFails(file).Errors);
        Assert.Equal($"{file}:1:1: 'tcp' is a table of settings, not a value", error);
    }

    [Fact]
    public void Syntax_error_is_reported_with_file_line_and_column()
    {
        var file = WriteToml("[tcp]\nlisten = \"127.0.0.1:7883\n");

        var error = Assert.Single(LoadFails(file).Errors);
        Assert.StartsWith($"{file}:2:", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Asking_for_a_missing_file_is_an_error()
    {
        var error = Assert.Single(LoadFails(Path.Combine(_dir, "nope.toml")).Errors);
        Assert.Contains("configuration file not found", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Environment_overrides_file_and_command_line_overrides_environment()
    {
        var file = WriteToml("[tcp]\nmax_frame_bytes = 1000\nmax_connections = 10\n[log]\nlevel = \"debug\"\n");
        var env = new Hashtable
        {
            ["CHATBROKER__TCP__MAX_FRAME_BYTES"] = "2000",
            ["CHATBROKER__TCP__MAX_CONNECTIONS"] = "20",
            ["OTHER__TCP__MAX_CONNECTIONS"] = "99",
        };

        var config = BrokerConfiguration.Load(file, ["tcp.max_connections=30"], env);

        Assert.Equal(2000, config.Options.Tcp.MaxFrameBytes);
        Assert.Equal(30, config.Options.Tcp.MaxConnections);
        Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Debug, config.Options.Log.Level);
        Assert.Equal("environment variable CHATBROKER__TCP__MAX_FRAME_BYTES", config.OriginOf(SettingsSchema.Find("tcp:max_frame_bytes")!));
        Assert.Equal("--set tcp.max_connections", config.OriginOf(SettingsSchema.Find("tcp:max_connections")!));
        Assert.Equal($"{file}:5:9", config.OriginOf(SettingsSchema.Find("log:level")!));
    }

    [Fact]
    public void Unknown_environment_variable_in_our_prefix_is_an_error_naming_it()
    {
        var env = new Hashtable { ["CHATBROKER__TCP__LISTN"] = "127.0.0.1:1" };

        var error = Assert.Single(LoadFails(null, [], env).Errors);
        Assert.Equal("environment variable CHATBROKER__TCP__LISTN: unknown key 'tcp.listn' (did you mean 'tcp.listen'?)", error);
    }

    [Fact]
    public void Bad_environment_value_is_an_error_naming_the_variable()
    {
        var env = new Hashtable { ["CHATBROKER__ADMIN__ENABLED"] = "yes" };

        var error = Assert.Single(LoadFails(null, [], env).Errors);
        Assert.Equal("environment variable CHATBROKER__ADMIN__ENABLED: admin.enabled: expected true or false, got \"yes\"", error);
    }

    [Fact]
    public void Malformed_set_flag_is_an_error()
    {
        var error = Assert.Single(LoadFails(null, ["tcp.listen"]).Errors);
        Assert.StartsWith("--set tcp.listen: expected key=value", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Admin_and_tcp_on_the_same_address_is_an_error()
    {
        var error = Assert.Single(LoadFails(null, ["admin.listen=127.0.0.1:9000", "tcp.listen=127.0.0.1:9000"]).Errors);
        Assert.Contains("must differ", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Inline_secret_must_be_base64_of_32_bytes()
    {
        var error = Assert.Single(LoadFails(null, ["auth.secret=c2hvcnQ="]).Errors);
        Assert.Contains("auth.secret: must be base64 of at least 32 bytes", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("500ms", 500)]
    [InlineData("10s", 10_000)]
    [InlineData("1.5s", 1_500)]
    [InlineData("5m", 300_000)]
    [InlineData("2h", 7_200_000)]
    [InlineData("30d", 2_592_000_000)]
    public void Durations_parse(string text, long milliseconds)
    {
        Assert.True(SettingParsers.TryParseDuration(text, out var value, out _));
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), value);
        Assert.True(SettingParsers.TryParseDuration(SettingParsers.FormatDuration(value), out var again, out _));
        Assert.Equal(value, again);
    }

    [Theory]
    [InlineData("")]
    [InlineData("10")]
    [InlineData("s")]
    [InlineData("10 years")]
    [InlineData("-5s")]
    [InlineData("1e9d")]
    public void Bad_durations_do_not_parse(string text)
    {
        Assert.False(SettingParsers.TryParseDuration(text, out _, out var error));
        Assert.NotNull(error);
    }
}
