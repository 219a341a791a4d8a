using System.Diagnostics;
using System.Net.Http;
using ChatBroker.Host.Tests.Infrastructure;

namespace ChatBroker.Host.Tests;

/// <summary>
/// The single file scripts/publish.sh builds (self-contained, linux-x64, native libraries inside): it starts
/// from an empty directory with no configuration and no .NET of the machine's, answers /healthz and exits 0
/// on SIGTERM. Published once for the class.
/// </summary>
public sealed class PublishedBinaryTests(PublishedBinaryTests.PublishedBinary published) : IClassFixture<PublishedBinaryTests.PublishedBinary>
{
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    [Fact]
    public void The_output_is_one_file()
    {
        var files = Directory.GetFiles(published.Directory)
            .Select(Path.GetFileName)
            .Where(name => !name!.EndsWith(".pdb", StringComparison.Ordinal))
            .ToList();
        Assert.Equal(["chatbroker"], files);
        Assert.Contains("chatbroker: ", published.ScriptOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Starts_from_an_empty_directory_answers_healthz_and_stops_on_sigterm()
    {
        var extractDir = Path.Combine(Path.GetTempPath(), "chatbroker-extract-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using var broker = await BrokerProcess.LaunchAsync(new BrokerLaunch
            {
                Executable = published.Binary,
                DefaultDataDir = true,
                Environment = new Dictionary<string, string>
                {
                    // Where the runtime extracts the bundled native libraries (default ~/.net), and no
                    // machine-wide .NET to fall back on.
                    ["DOTNET_BUNDLE_EXTRACT_BASE_DIR"] = extractDir,
                    ["DOTNET_ROOT"] = "/nonexistent",
                },
                ReadyTimeout = TimeSpan.FromSeconds(60),
            });

            Assert.Equal("ok\n", await Http.GetStringAsync($"http://{broker.AdminEndPoint}/healthz"));
            Assert.True(File.Exists(Path.Combine(broker.DataDir, "token.secret")), "no data directory in the working directory");

            // The process is the single file itself, not the machine's dotnet host, and RocksDB's library is the
            // one from the bundle whenever the bundle carries one.
            var maps = File.ReadAllLines($"/proc/{broker.Pid}/maps");
            Assert.Equal(published.Binary, new FileInfo($"/proc/{broker.Pid}/exe").LinkTarget);
            Assert.DoesNotContain(maps, line => line.Contains("/usr/share/dotnet/", StringComparison.Ordinal));
            var bundledRocksDb = Directory.Exists(extractDir)
                ? Directory.GetFiles(extractDir, "librocksdb.so", SearchOption.AllDirectories)
                : [];
            if (bundledRocksDb.Length > 0)
            {
                Assert.Contains(maps, line => line.EndsWith(bundledRocksDb[0], StringComparison.Ordinal));
            }

            broker.SendSignal(BrokerProcess.SigTerm);
            Assert.Equal(0, await broker.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }
        finally
        {
            if (Directory.Exists(extractDir))
            {
                Directory.Delete(extractDir, recursive: true);
            }
        }
    }

    /// <summary>Runs scripts/publish.sh once into a temporary directory, deleted afterwards.</summary>
    public sealed class PublishedBinary : IAsyncLifetime
    {
        public string Directory { get; } = Path.Combine(Path.GetTempPath(), "chatbroker-publish-" + Guid.NewGuid().ToString("N"));
        public string Binary => Path.Combine(Directory, "chatbroker");
        public string ScriptOutput { get; private set; } = "";

        public async Task InitializeAsync()
        {
            var script = Path.Combine(ProjectGraphTests.RepositoryRoot, "scripts", "publish.sh");
            var info = new ProcessStartInfo(script)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            info.ArgumentList.Add(Directory);
            using var process = Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(5));
            ScriptOutput = await stdout;
            Assert.True(process.ExitCode == 0, $"scripts/publish.sh failed ({process.ExitCode}):\n{ScriptOutput}\n{await stderr}");
            Assert.Equal(Directory, ScriptOutput.Split('\n')[0]);
        }

        public Task DisposeAsync()
        {
            if (System.IO.Directory.Exists(Directory))
            {
                System.IO.Directory.Delete(Directory, recursive: true);
            }

            return Task.CompletedTask;
        }
    }
}
