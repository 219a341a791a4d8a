using ChatBroker.Broker.Observability;

namespace ChatBroker.Broker.Tests.Observability;

public sealed class OpenFilesTests
{
    [Fact]
    public void Open_files_counts_the_process_descriptors_as_proc_lists_them()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Equal(0, BrokerMetrics.CountOpenFiles());
            return;
        }

        // 300 more descriptors; other tests of this process open and close files meanwhile, hence the margins.
        var before = BrokerMetrics.CountOpenFiles();
        var listed = Directory.GetFiles("/proc/self/fd").Length - 1; // the listing's own descriptor
        var files = new List<FileStream>();
        try
        {
            for (var i = 0; i < 300; i++)
            {
                files.Add(new FileStream("/proc/self/stat", FileMode.Open, FileAccess.Read));
            }

            var after = BrokerMetrics.CountOpenFiles();
            Assert.InRange(before, listed - 50, listed + 50);
            Assert.InRange(after - before, 250, 350);
        }
        finally
        {
            foreach (var file in files)
            {
                file.Dispose();
            }
        }
    }
}
