using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace ChatBroker.Host.Tests;

/// <summary>
/// The arrows between our projects point one way (issue 14): read from every *.csproj in the checkout, the
/// graph has no cycle; no library points at Host, LoadTests or Benchmarks; the broker does not point at the
/// client; Protocol, Storage and Tokens reference nothing of ours and Cluster only Protocol. README's layout
/// section draws the same graph, and this checks that it does.
/// </summary>
public sealed partial class ProjectGraphTests
{
    private static readonly string[] Libraries = ["Protocol", "Storage", "Cluster", "Broker", "Client", "Tokens"];
    private static readonly string[] Executables = ["Host", "LoadTests", "Benchmarks"];

    [Fact]
    public void Every_project_is_found()
    {
        var graph = ReadGraph();
        foreach (var name in Libraries.Concat(Executables))
        {
            Assert.True(graph.ContainsKey(name), $"no ChatBroker.{name}.csproj in {RepositoryRoot}");
        }
    }

    [Fact]
    public void The_project_graph_has_no_cycle()
    {
        var graph = ReadGraph();
        var state = new Dictionary<string, bool>(); // false: on the current path, true: done
        foreach (var project in graph.Keys)
        {
            var cycle = FindCycle(graph, project, state, []);
            Assert.True(cycle is null, "cycle: " + string.Join(" -> ", cycle ?? []));
        }
    }

    [Fact]
    public void No_library_references_an_executable_or_a_test_project()
    {
        var graph = ReadGraph();
        foreach (var library in Libraries)
        {
            var wrong = graph[library].Where(to => !Libraries.Contains(to)).ToList();
            Assert.True(wrong.Count == 0, $"{library} references {string.Join(", ", wrong)}");
        }

        var onHost = graph.Where(p => p.Value.Contains("Host") && !p.Key.EndsWith(".Tests", StringComparison.Ordinal)).Select(p => p.Key).ToList();
        Assert.True(onHost.Count == 0, $"only test projects may reference Host (it is the executable): {string.Join(", ", onHost)}");
        // A tool may be referenced by its own test project (LoadTests.Tests checks the history checker), by nothing else.
        var onHarness = graph
            .Where(p => (p.Value.Contains("LoadTests") && p.Key != "LoadTests.Tests") || p.Value.Contains("Benchmarks"))
            .Select(p => p.Key).ToList();
        Assert.True(onHarness.Count == 0, $"nothing but its own tests references LoadTests or Benchmarks: {string.Join(", ", onHarness)}");
    }

    [Fact]
    public void The_lower_layers_reference_only_what_the_layout_allows()
    {
        var graph = ReadGraph();
        Assert.Empty(graph["Protocol"]);
        Assert.Empty(graph["Storage"]);
        Assert.Empty(graph["Tokens"]);
        Assert.Equal(["Protocol"], graph["Cluster"]);
        Assert.Equal(["Protocol"], graph["Client"]);
        Assert.DoesNotContain("Client", graph["Broker"]);
        Assert.DoesNotContain("Broker", graph["LoadTests"]);
        Assert.DoesNotContain("Host", graph["LoadTests"]);
    }

    [Fact]
    public void Readme_draws_the_graph_of_the_projects()
    {
        // README's layout section draws the graph as a Mermaid block between two markers, one "A --> B" line
        // per reference; the production projects' real references must be exactly those.
        var readme = File.ReadAllText(Path.Combine(RepositoryRoot, "README.md"));
        var start = readme.IndexOf("<!-- project graph -->", StringComparison.Ordinal);
        var end = readme.IndexOf("<!-- end project graph -->", StringComparison.Ordinal);
        Assert.True(start >= 0 && end > start, "README.md has no <!-- project graph --> ... <!-- end project graph --> section");
        var drawn = new SortedSet<string>(StringComparer.Ordinal);
        foreach (Match m in EdgeLine().Matches(readme[start..end]))
        {
            drawn.Add($"{m.Groups[1].Value} --> {m.Groups[2].Value}");
        }

        var actual = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var (project, references) in ReadGraph())
        {
            if (Libraries.Contains(project) || Executables.Contains(project))
            {
                actual.UnionWith(references.Select(to => $"{project} --> {to}"));
            }
        }

        Assert.Equal(actual, drawn);
    }

    private static List<string>? FindCycle(Dictionary<string, List<string>> graph, string project, Dictionary<string, bool> state, List<string> path)
    {
        if (state.TryGetValue(project, out var done))
        {
            return done ? null : [.. path[path.IndexOf(project)..], project];
        }

        state[project] = false;
        path.Add(project);
        foreach (var next in graph.GetValueOrDefault(project) ?? [])
        {
            if (FindCycle(graph, next, state, path) is { } cycle)
            {
                return cycle;
            }
        }

        path.RemoveAt(path.Count - 1);
        state[project] = true;
        return null;
    }

    /// <summary>Project (ChatBroker. prefix dropped) → the projects it references, from every *.csproj of the checkout.</summary>
    private static Dictionary<string, List<string>> ReadGraph()
    {
        var graph = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(RepositoryRoot, "*.csproj", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(RepositoryRoot, file);
            if (relative.Split(Path.DirectorySeparatorChar).Any(part => part is "bin" or "obj" or "artifacts" || part.StartsWith('.')))
            {
                continue;
            }

            var references = XDocument.Load(file).Descendants()
                .Where(e => e.Name.LocalName == "ProjectReference")
                .Select(e => ShortName(Path.GetFileNameWithoutExtension(e.Attribute("Include")!.Value.Replace('\\', '/').Split('/')[^1])))
                .Distinct()
                .Order(StringComparer.Ordinal)
                .ToList();
            graph.Add(ShortName(Path.GetFileNameWithoutExtension(file)), references);
        }

        return graph;
    }

    private static string ShortName(string projectName) =>
        projectName.StartsWith("ChatBroker.", StringComparison.Ordinal) ? projectName["ChatBroker.".Length..] : projectName;

    internal static string RepositoryRoot { get; } = FindRepositoryRoot();

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ChatBroker.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no ChatBroker.sln above {AppContext.BaseDirectory}");
    }

    [GeneratedRegex(@"^\s*(\w+)\s*-->\s*(\w+)\s*$", RegexOptions.Multiline)]
    private static partial Regex EdgeLine();
}
