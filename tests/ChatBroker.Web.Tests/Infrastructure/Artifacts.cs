namespace ChatBroker.Web.Tests.Infrastructure;

/// <summary>
/// Where the browser tests keep their screenshots: CHATBROKER_TEST_ARTIFACTS, else artifacts/web-tests in the
/// checkout (ignored by git). Kept after the run, so a failure can be looked at.
/// </summary>
public static class Artifacts
{
    public static string Directory { get; } = Create();

    public static string PathFor(string name) => System.IO.Path.Combine(Directory, name);

    private static string Create()
    {
        var directory = Environment.GetEnvironmentVariable("CHATBROKER_TEST_ARTIFACTS") is { Length: > 0 } configured
            ? configured
            : System.IO.Path.Combine(RepositoryRoot(), "artifacts", "web-tests");
        System.IO.Directory.CreateDirectory(directory);
        return directory;
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "ChatBroker.sln")))
            {
                return dir.FullName;
            }
        }

        return System.IO.Path.GetTempPath();
    }
}
