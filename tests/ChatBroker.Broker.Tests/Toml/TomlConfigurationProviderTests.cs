using ChatBroker.Broker.Configuration.Toml;
using Microsoft.Extensions.Configuration;

namespace ChatBroker.Broker.Tests.Toml;

public sealed class TomlConfigurationProviderTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("chatbroker-toml-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string Write(string text, string name = "broker.toml")
    {
        string path = Path.Combine(_directory, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Toml_values_are_available_as_configuration_keys()
    {
        string path = Write("[server]\nport = 7000\n[cluster]\nnodes = [{ name = \"a\" }, { name = \"b\" }]\n");

        IConfigurationRoot config = new ConfigurationBuilder().AddTomlFile(path, optional: false).Build();

        Assert.Equal("7000", config["server:port"]);
        Assert.Equal("7000", config["SERVER:PORT"]);
        Assert.Equal("b", config["cluster:nodes:1:name"]);
        Assert.Equal(7000, config.GetValue<int>("server:port"));
        Assert.Equal(["0", "1"], config.GetSection("cluster:nodes").GetChildren().Select(c => c.Key));
    }

    [Fact]
    public void Later_sources_override_the_file_and_untouched_keys_keep_file_values()
    {
        string path = Write("[server]\nport = 7000\nname = 'from-file'\n");

        IConfigurationRoot config = new ConfigurationBuilder()
            .AddTomlFile(path, optional: false)
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Server:Port"] = "7100" })
            .AddCommandLine(["--server:name=from-flag"])
            .Build();

        Assert.Equal("7100", config["server:port"]);
        Assert.Equal("from-flag", config["server:name"]);
    }

    [Fact]
    public void Environment_variables_added_later_override_the_file()
    {
        string path = Write("[server]\nport = 7000\n");
        string prefix = $"CBTOML{Guid.NewGuid():N}_";
        Environment.SetEnvironmentVariable(prefix + "server__port", "7200");
        try
        {
            IConfigurationRoot config = new ConfigurationBuilder()
                .AddTomlFile(path, optional: false)
                .AddEnvironmentVariables(prefix)
                .Build();

            Assert.Equal("7200", config["server:port"]);
        }
        finally
        {
            Environment.SetEnvironmentVariable(prefix + "server__port", null);
        }
    }

    [Fact]
    public void A_file_added_after_another_source_overrides_it()
    {
        string path = Write("port = 1\n");

        IConfigurationRoot config = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["port"] = "0" })
            .AddTomlFile(path, optional: false)
            .Build();

        Assert.Equal("1", config["port"]);
    }

    [Fact]
    public void Provider_keeps_leaves_with_the_same_keys_as_its_data()
    {
        string path = Write("[Server]\nPort = 7000\ntags = []\n");

        IConfigurationRoot config = new ConfigurationBuilder().AddTomlFile(path, optional: false).Build();
        var provider = Assert.IsType<TomlConfigurationProvider>(Assert.Single(config.Providers));

        Assert.Equal(path, provider.Path);
        Assert.Equal(["Server:Port"], provider.Leaves.Keys);
        TomlLeaf leaf = provider.Leaves["server:port"];
        Assert.Equal(new TomlLeaf("7000", TomlValueKind.Integer, new TomlPosition(path, 2, 1), new TomlPosition(path, 2, 8)), leaf);
        Assert.True(provider.TryGet("server:port", out string? value));
        Assert.Equal("7000", value);
        Assert.Equal(["Server:tags"], provider.EmptyContainers.Keys);
        Assert.Equal(["Port"], provider.GetChildKeys([], "server"));
    }

    [Fact]
    public void Missing_optional_file_contributes_nothing()
    {
        string path = Path.Combine(_directory, "absent.toml");

        IConfigurationRoot config = new ConfigurationBuilder()
            .AddTomlFile(path, optional: true)
            .AddInMemoryCollection(new Dictionary<string, string?> { ["a"] = "1" })
            .Build();

        Assert.Equal("1", config["a"]);
        var provider = Assert.IsType<TomlConfigurationProvider>(config.Providers.First());
        Assert.Empty(provider.Leaves);
        Assert.False(provider.TryGet("a", out _));
    }

    [Fact]
    public void Missing_required_file_throws_naming_the_path()
    {
        string path = Path.Combine(_directory, "absent.toml");

        var ex = Assert.Throws<FileNotFoundException>(() => new ConfigurationBuilder().AddTomlFile(path, optional: false).Build());

        Assert.Equal(path, ex.FileName);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Parse_errors_propagate_out_of_build_with_file_line_and_column()
    {
        string path = Write("[server]\nport = 07000\n");

        var ex = Assert.Throws<TomlParseException>(() => new ConfigurationBuilder().AddTomlFile(path, optional: true).Build());

        Assert.Equal(new TomlPosition(path, 2, 8), ex.Position);
        Assert.StartsWith($"{path}:2:8: leading zeros", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Keys_differing_only_by_case_are_an_error_not_a_silent_overwrite()
    {
        string path = Write("port = 1\nPORT = 2\n");

        var ex = Assert.Throws<TomlParseException>(() => new ConfigurationBuilder().AddTomlFile(path, optional: false).Build());

        Assert.Equal(new TomlPosition(path, 2, 1), ex.Position);
    }

    [Fact]
    public void Reload_after_the_file_changes_picks_up_new_values()
    {
        string path = Write("port = 1\n");
        IConfigurationRoot config = new ConfigurationBuilder().AddTomlFile(path, optional: false).Build();

        Write("port = 2\n");
        config.Reload();

        Assert.Equal("2", config["port"]);
    }
}
