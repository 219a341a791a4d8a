using System.Diagnostics;
using System.Text.Json;
using ChatBroker.Cluster.Mesh.Wire;

namespace ChatBroker.Cluster.Tests.Mesh;

/// <summary>The mesh is plain gRPC: Debian's python3-grpcio calls it (installed by scripts/ensure-test-deps.sh).</summary>
public sealed class PythonGrpcClientTests
{
    private const string Python = "/usr/bin/python3";

    [Fact]
    public async Task A_python_grpcio_client_gets_acks_refusals_and_replies()
    {
        await using var b = await MeshTestNode.StartAsync("node-b");
        b.Sink.CurrentEpoch = 7;
        b.Sink.OwnerForStaleEpochs = "node-c";
        var descriptor = Path.GetTempFileName();
        try
        {
            await File.WriteAllBytesAsync(descriptor, MeshReflection.Descriptor.SerializedData.ToByteArray());
            var (exit, stdout, stderr) = await RunPythonAsync(Path.Combine(AppContext.BaseDirectory, "Mesh", "mesh_client.py"), b.Server.Endpoint.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), descriptor);
            Assert.True(exit == 0, $"mesh_client.py exited {exit}: {stderr}");

            using var json = JsonDocument.Parse(stdout);
            var acks = json.RootElement;
            Assert.Equal(2, acks.GetArrayLength());
            Assert.Equal(3UL, acks[0].GetProperty("acked_through").GetUInt64());
            Assert.Equal(7UL, acks[0].GetProperty("receiver_epoch").GetUInt64());
            Assert.Equal(0, acks[0].GetProperty("results").GetArrayLength());
            Assert.Equal(5UL, acks[1].GetProperty("acked_through").GetUInt64());
            var results = acks[1].GetProperty("results");
            Assert.Equal(2, results.GetArrayLength());
            Assert.Equal(4UL, results[0].GetProperty("id").GetUInt64());
            Assert.Equal((int)MeshStatus.StaleEpoch, results[0].GetProperty("status").GetInt32());
            Assert.Equal(7UL, results[0].GetProperty("epoch").GetUInt64());
            Assert.Equal("node-c", results[0].GetProperty("owner").GetString());
            Assert.Equal(5UL, results[1].GetProperty("id").GetUInt64());
            Assert.Equal("re:py-5", results[1].GetProperty("reply").GetString());
        }
        finally
        {
            File.Delete(descriptor);
        }

        var received = b.Sink.Snapshot();
        Assert.Equal(new ulong[] { 1, 2, 3, 5 }, received.Select(r => r.Id));
        Assert.All(received, r => Assert.Equal("python-node", r.Origin));
        Assert.Equal("py-5"u8.ToArray(), received[3].Payload);
    }

    private static async Task<(int Exit, string Stdout, string Stderr)> RunPythonAsync(params string[] args)
    {
        Assert.True(File.Exists(Python), $"{Python} is missing: run scripts/ensure-test-deps.sh (./test.sh does) to install python3-grpcio.");
        var check = await RunAsync(Python, "-c", "import grpc, google.protobuf");
        Assert.True(check.Exit == 0, $"python3-grpcio/python3-protobuf are not installed for {Python}: run scripts/ensure-test-deps.sh (./test.sh does). {check.Stderr}");
        return await RunAsync(Python, args);
    }

    private static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, params string[] args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in 60 s.");
        }

        return (process.ExitCode, await stdout, await stderr);
    }
}
