using BenchmarkDotNet.Running;

namespace ChatBroker.Benchmarks;

internal static class Program
{
    public static async Task<int> Main(string[] args)
    {
        // Custom modes first; everything else is BenchmarkDotNet, e.g. --filter '*Frame*' --job short.
        if (args.Length > 0 && args[0] == "storage-append")
        {
            return await StorageAppendLoad.RunAsync(args[1..]).ConfigureAwait(false);
        }

        if (args.Length > 0 && args[0] == "mesh")
        {
            return await MeshForwardLoad.RunAsync(args[1..]).ConfigureAwait(false);
        }

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
