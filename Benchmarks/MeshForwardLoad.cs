using System.Diagnostics;
using System.Globalization;
using System.Net;
using ChatBroker.Cluster.Mesh;

namespace ChatBroker.Benchmarks;

/// <summary>
/// Mesh forwarding throughput for one node pair in one process over loopback: a sender queues
/// messages as fast as the peer's queue admits them (closed loop, bounded by max_queue_bytes), the
/// receiver's sink counts them, acks flow back. Reports forwarded (acked) messages/s and p50/p99/max of
/// the batch ack latency (batch written to its ack read), and the bytes allocated per message by both
/// ends together (the process's GC counter) and the CPU time per message, after a warm-up.
///
///   dotnet run -c Release --project Benchmarks -- mesh [--duration 10] [--body-size 256] [--streams 1] [--warmup 2]
///
/// Both ends share the machine's cores, as two nodes on one host would; on separate hosts each end
/// has its own.
/// </summary>
internal static class MeshForwardLoad
{
    public static async Task<int> RunAsync(string[] args)
    {
        var duration = StorageAppendLoad.Option(args, "--duration", 10);
        var bodySize = StorageAppendLoad.Option(args, "--body-size", 256);
        var streams = Math.Max(1, StorageAppendLoad.Option(args, "--streams", 1));
        var warmup = StorageAppendLoad.Option(args, "--warmup", 2);
        var options = new MeshOptions();
        var sink = new CountingSink();
        await using var server = await MeshServer.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), new MeshReceiver("bench-b", sink, options)).ConfigureAwait(false);
        using var channel = MeshChannel.Create(server.Address, options);
        var latencies = new LatencyRecorder(1 << 22);
        var metrics = new MeshMetrics();
        var peers = new MeshPeer[streams];
        for (var s = 0; s < streams; s++)
        {
            peers[s] = new MeshPeer(channel, "bench-a", "bench-b", (uint)s, options, latencies, metrics);
            peers[s].Start();
        }

        Console.WriteLine($"mesh: one node pair over 127.0.0.1, {streams} stream(s), {bodySize}-byte messages, batches of up to {options.MaxBatchMessages}, queue bound {options.MaxQueueBytes / 1024} KiB per stream, {warmup} s warm-up + {duration} s, {Environment.ProcessorCount} cores");
        using var stop = new CancellationTokenSource();
        var body = new byte[bodySize];
        var senders = new Task[streams];
        for (var s = 0; s < streams; s++)
        {
            var peer = peers[s];
            senders[s] = Task.Run(() => SendLoopAsync(peer, body, stop.Token));
        }

        await Task.Delay(TimeSpan.FromSeconds(warmup)).ConfigureAwait(false);
        latencies.Start();
        var before = metrics.Snapshot();
        var allocatedBefore = GC.GetTotalAllocatedBytes();
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var started = Stopwatch.GetTimestamp();
        await Task.Delay(TimeSpan.FromSeconds(duration)).ConfigureAwait(false);
        var after = metrics.Snapshot();
        var allocated = GC.GetTotalAllocatedBytes() - allocatedBefore;
        var cpu = Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
        var elapsed = Stopwatch.GetElapsedTime(started).TotalSeconds;
        latencies.Stop();
        await stop.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(senders).ConfigureAwait(false);
        foreach (var peer in peers)
        {
            await peer.DisposeAsync().ConfigureAwait(false);
        }

        var acked = after.MessagesAcked - before.MessagesAcked;
        var batches = after.BatchesSent - before.BatchesSent;
        var messagesSent = after.MessagesSent - before.MessagesSent;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"forwarded {acked / elapsed:N0} msg/s ({acked:N0} acked in {elapsed:F1} s), {(after.BytesSent - before.BytesSent) / elapsed / 1e6:F1} MB/s of payload, {messagesSent / (double)Math.Max(1, batches):F1} messages per batch, {allocated / (double)Math.Max(1, acked):F0} bytes allocated per message (both ends)"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"batch ack latency: p50 {latencies.Percentile(50):F3} ms, p99 {latencies.Percentile(99):F3} ms, max {latencies.Percentile(100):F3} ms over {latencies.Count:N0} batches; backpressure waits {after.BackpressureWaits - before.BackpressureWaits:N0}, sink saw {sink.Messages:N0}"));
        // CPU per message depends far less on what else runs on the machine than msg/s does.
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"process CPU {cpu.TotalSeconds:F2} s in {elapsed:F1} s ({cpu.TotalSeconds / elapsed:F2} cores busy): {cpu.TotalMilliseconds * 1000 / Math.Max(1, acked):F2} µs of CPU per forwarded message, both ends"));
        return 0;
    }

    private static async Task SendLoopAsync(MeshPeer peer, byte[] body, CancellationToken stop)
    {
        try
        {
            while (!stop.IsCancellationRequested)
            {
                if (!peer.TrySend(1, 1, body, out _))
                {
                    await peer.SendAsync(1, 1, body, stop).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Counts messages; stands for a node that forwards them on without waiting.</summary>
    private sealed class CountingSink : IMeshSink
    {
        private long _messages;

        public long Messages => Volatile.Read(ref _messages);

        public ulong CurrentEpoch => 1;

        public ValueTask HandleAsync(MeshInboundBatch batch, CancellationToken cancellationToken)
        {
            Interlocked.Add(ref _messages, batch.Count);
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>Batch ack latencies in a preallocated array while measuring (acks arrive on one loop per stream).</summary>
    private sealed class LatencyRecorder(int capacity) : IMeshResultHandler
    {
        private readonly double[] _ms = new double[capacity];
        private int _count;
        private volatile bool _recording;

        public int Count => Math.Min(_count, _ms.Length);

        public void Start() => _recording = true;

        public void Stop() => _recording = false;

        public double Percentile(double p)
        {
            var n = Count;
            if (n == 0)
            {
                return double.NaN;
            }

            var sorted = _ms.AsSpan(0, n).ToArray();
            Array.Sort(sorted);
            return sorted[Math.Clamp((int)Math.Ceiling(p / 100 * n) - 1, 0, n - 1)];
        }

        public void OnResult(MeshPeer peer, in MeshResultView result)
        {
        }

        public void OnAcked(MeshPeer peer, ulong ackedThrough, ulong receiverEpoch)
        {
        }

        public void OnBatchAcked(MeshPeer peer, int messages, TimeSpan latency)
        {
            if (_recording)
            {
                var i = Interlocked.Increment(ref _count) - 1;
                if (i < _ms.Length)
                {
                    _ms[i] = latency.TotalMilliseconds;
                }
            }
        }
    }
}
