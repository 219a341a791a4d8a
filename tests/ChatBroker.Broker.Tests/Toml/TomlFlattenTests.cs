using ChatBroker.Broker.Configuration.Toml;

namespace ChatBroker.Broker.Tests.Toml;

public class TomlFlattenTests
{
    private const string File = "broker.toml";

    private static IReadOnlyDictionary<string, TomlLeaf> Flatten(string text) => TomlDocument.Parse(text, File).Flatten();

    [Fact]
    public void Nested_tables_become_colon_joined_paths()
    {
        var leaves = Flatten("top = 1\n[server]\nport = 7000\n[server.tls]\ncert = 'c.pem'\nhsts.max_age = 60\n");
        Assert.Equal(["top", "server:port", "server:tls:cert", "server:tls:hsts:max_age"], leaves.Keys);
        Assert.Equal("c.pem", leaves["server:tls:cert"].Value);
    }

    [Fact]
    public void Array_items_become_index_segments_including_tables_inside_arrays()
    {
        var leaves = Flatten("[cluster]\nnodes = [ { name = \"a\", port = 1 }, { name = \"b\", tags = [\"x\", \"y\"] } ]\nweights = [1, 2]\n");
        Assert.Equal(
            ["cluster:nodes:0:name", "cluster:nodes:0:port", "cluster:nodes:1:name", "cluster:nodes:1:tags:0", "cluster:nodes:1:tags:1", "cluster:weights:0", "cluster:weights:1"],
            leaves.Keys);
        Assert.Equal("b", leaves["cluster:nodes:1:name"].Value);
        Assert.Equal("y", leaves["cluster:nodes:1:tags:1"].Value);
    }

    [Fact]
    public void Inline_tables_flatten_like_tables()
    {
        var leaves = Flatten("limits = { outbound = { bytes = 1024, messages = 10 } }\n");
        Assert.Equal(["limits:outbound:bytes", "limits:outbound:messages"], leaves.Keys);
    }

    [Fact]
    public void Scalars_are_formatted_as_invariant_configuration_strings()
    {
        var leaves = Flatten("i = 65_536\nneg = -12\nhex = 0xff\nf = 0.1\nbig = 1e300\nwhole = 2.0\npinf = inf\nninf = -inf\nn = nan\nt = true\nf2 = false\ns = \"raw \\\"text\\\"\"\n");
        Assert.Equal("65536", leaves["i"].Value);
        Assert.Equal("-12", leaves["neg"].Value);
        Assert.Equal("255", leaves["hex"].Value);
        Assert.Equal("0.1", leaves["f"].Value);
        Assert.Equal("1E+300", leaves["big"].Value);
        Assert.Equal("2", leaves["whole"].Value);
        Assert.Equal("Infinity", leaves["pinf"].Value);
        Assert.Equal("-Infinity", leaves["ninf"].Value);
        Assert.Equal("NaN", leaves["n"].Value);
        Assert.Equal("true", leaves["t"].Value);
        Assert.Equal("false", leaves["f2"].Value);
        Assert.Equal("raw \"text\"", leaves["s"].Value);
        Assert.Equal(0.1, double.Parse(leaves["f"].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void Leaves_carry_their_kind()
    {
        var leaves = Flatten("s = 'x'\ni = 1\nf = 1.5\nb = true\n");
        Assert.Equal(TomlValueKind.String, leaves["s"].Kind);
        Assert.Equal(TomlValueKind.Integer, leaves["i"].Kind);
        Assert.Equal(TomlValueKind.Float, leaves["f"].Kind);
        Assert.Equal(TomlValueKind.Boolean, leaves["b"].Kind);
    }

    [Fact]
    public void Leaves_carry_key_and_value_positions_and_array_items_carry_the_array_key_position()
    {
        var leaves = Flatten("[server]\n  port = 7000\nhosts = [\n  \"a\",\n  \"b\",\n]\n");
        Assert.Equal(new TomlPosition(File, 2, 3), leaves["server:port"].KeyPosition);
        Assert.Equal(new TomlPosition(File, 2, 10), leaves["server:port"].ValuePosition);
        Assert.Equal(new TomlPosition(File, 3, 1), leaves["server:hosts:1"].KeyPosition);
        Assert.Equal(new TomlPosition(File, 5, 3), leaves["server:hosts:1"].ValuePosition);
    }

    [Fact]
    public void Keys_keep_file_spelling_and_are_looked_up_case_insensitively()
    {
        var leaves = Flatten("[Server]\nMaxFrameBytes = 1\n");
        Assert.Equal("Server:MaxFrameBytes", Assert.Single(leaves.Keys));
        Assert.True(leaves.ContainsKey("server:maxframebytes"));
    }

    [Fact]
    public void Empty_arrays_and_tables_yield_no_leaf_but_are_listed_as_empty_containers()
    {
        TomlDocument document = TomlDocument.Parse("tags = []\n[empty]\n[x]\nnone = {}\nlist = [[], 1]\n", File);
        Assert.Equal(["x:list:1"], document.Flatten().Keys);

        var empty = document.EmptyContainers();
        Assert.Equal(["tags", "empty", "x:none", "x:list:0"], empty.Keys);
        Assert.Equal(new TomlPosition(File, 1, 1), empty["tags"]);
        Assert.Equal(new TomlPosition(File, 2, 2), empty["empty"]);
        Assert.True(empty.ContainsKey("X:NONE"));
    }

    [Fact]
    public void Flatten_of_an_empty_document_is_empty()
    {
        Assert.Empty(Flatten("# nothing\n"));
    }
}
