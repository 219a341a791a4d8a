using BenchmarkDotNet.Running;

namespace ChatBroker.Benchmarks;

internal static class Program
{
    // dotnet run -c Release --project Benchmarks -- --filter '*Frame*' --job short
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
