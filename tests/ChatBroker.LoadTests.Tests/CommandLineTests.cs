using ChatBroker.LoadTests.Checker;

namespace ChatBroker.LoadTests.Tests;

/// <summary>The harness's cluster options: what is accepted, and what is refused before anything starts.</summary>
public sealed class CommandLineTests
{
    private static IReadOnlyList<string> Errors(params string[] args) =>
        [.. Program.Build().Parse(args).Errors.Select(e => e.Message)];

    [Theory]
    [InlineData("pairs", "--cluster", "3")]
    [InlineData("fanout", "--cluster", "3", "--members", "300")]
    [InlineData("pairs")]
    [InlineData("check", "--cluster", "3", "--nemesis", "kill")]
    [InlineData("check", "--cluster", "3", "--nemesis", "etcd")]
    [InlineData("check", "--cluster", "3", "--nemesis", "join-leave", "--max-faults", "2")]
    [InlineData("check", "--nemesis", "kill")]
    public void Accepted(params string[] args) => Assert.Empty(Errors(args));

    [Fact]
    public void The_cluster_size_reaches_the_run_options()
    {
        var parse = Program.Build().Parse(["pairs", "--cluster", "3"]);
        Assert.Equal(3, parse.GetValue<int>("--cluster"));
        Assert.Equal(0, Program.Build().Parse(["pairs"]).GetValue<int>("--cluster"));
    }

    [Theory]
    [InlineData("--cluster must be 0", "pairs", "--cluster", "10")]
    [InlineData("--cluster must be 0", "pairs", "--cluster", "-1")]
    [InlineData("cannot be combined with --target", "pairs", "--cluster", "2", "--target", "127.0.0.1:7883")]
    [InlineData("cannot be combined with --targets", "check", "--cluster", "2", "--targets", "127.0.0.1:7883")]
    [InlineData("needs a cluster", "check", "--nemesis", "etcd")]
    [InlineData("needs --cluster 2 or more", "check", "--cluster", "1", "--nemesis", "join-leave")]
    [InlineData("needs processes the harness started", "check", "--targets", "127.0.0.1:7883", "--nemesis", "kill")]
    public void Refused(string reason, params string[] args) =>
        Assert.Contains(Errors(args), e => e.Contains(reason, StringComparison.Ordinal));

    [Fact]
    public void Each_nemesis_states_what_it_needs()
    {
        Assert.Null(CheckOptions.Validate("none", 0, false));
        Assert.Null(CheckOptions.Validate("kill", 0, true));
        Assert.Null(CheckOptions.Validate("kill", 3, false));
        Assert.Null(CheckOptions.Validate("pause", 3, false));
        Assert.Null(CheckOptions.Validate("etcd", 1, false));
        Assert.Null(CheckOptions.Validate("join-leave", 2, false));
        Assert.NotNull(CheckOptions.Validate("kill", 0, false));
        Assert.NotNull(CheckOptions.Validate("etcd", 0, true));
        Assert.NotNull(CheckOptions.Validate("join-leave", 1, false));
        Assert.Contains("--netns", CheckOptions.Validate("partition", 3, false));
        Assert.Null(CheckOptions.Validate("partition", 3, false, netns: true));
        Assert.NotNull(CheckOptions.Validate("partition", 1, false, netns: true));
        Assert.Null(CheckOptions.Validate("mix", 2, false));
        Assert.NotNull(CheckOptions.Validate("mix", 1, false));
        Assert.Contains("unknown nemesis", CheckOptions.Validate("flood", 3, false));
    }
}
