using ChatBroker.LoadTests.Checker;
using Xunit.Abstractions;

namespace ChatBroker.LoadTests.Tests;

/// <summary>The whole check against the real broker (a child process, durability sync): pairs and groups, kill -9 and restart.</summary>
public sealed class CheckScenarioTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Kill_9_and_restart_under_load_loses_duplicates_and_skips_nothing()
    {
        var log = new StringWriter();
        var history = Path.Combine(Path.GetTempPath(), "chatbroker-check-test-" + Guid.NewGuid().ToString("N") + ".jsonl");
        try
        {
            var outcome = await CheckScenario.RunAsync(
                new RunOptions { Pairs = 10, Duration = TimeSpan.FromSeconds(5), Durability = "sync", Window = 4, BodySize = 32 },
                new CheckOptions { Seed = 15, Groups = 2, GroupMembers = 4, Nemesis = "kill", NemesisInterval = TimeSpan.FromSeconds(2.5), HistoryPath = history, DrainTimeout = TimeSpan.FromSeconds(60) },
                log);
            CheckScenario.Print(outcome, log);
            output.WriteLine(log.ToString());

            var r = outcome.Report;
            Assert.True(outcome.Faults >= 1, "the nemesis never struck");
            Assert.True(r.Acked > 0);
            Assert.Equal(r.Acked + 2, r.Stored); // every acked message once, plus each group's GROUP_CREATED
            Assert.True(r.Retried > 0 || r.Redelivered > 0, "a kill under load should force a retry or a redelivery");
            Assert.Equal(0, r.Lost);
            Assert.Equal(0, r.Duplicates);
            Assert.Equal(0, r.AppDuplicates);
            Assert.Equal(0, r.Gaps);
            Assert.Equal(0, r.OrderViolations);
            Assert.Equal(0, r.UnresolvedRetries);
            Assert.Equal(0, r.IncompleteInboxes);
            Assert.True(r.Passed);
        }
        finally
        {
            File.Delete(history);
        }
    }
}
