using System.Diagnostics;
using System.Globalization;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>
/// The child side of <see cref="ClientProcess"/> (`hold` command): mints its tokens first (not part of the
/// measured connect time), then on GO logs in its share of connections with a bounded number in flight,
/// holds them idle without reading, and on CLOSE disconnects them all.
/// </summary>
public static class ConnectionHolder
{
    public static async Task<int> RunAsync(BrokerLauncher broker, RunOptions options, string userPrefix, long first, long count, int concurrency)
    {
        var frames = new byte[count][];
        for (long i = 0; i < count; i++)
        {
            var user = userPrefix + (first + i).ToString(CultureInfo.InvariantCulture);
            frames[i] = Wire.Connect(user, "d1", broker.Token(user, "d1"), 0, 1800);
        }

        Console.WriteLine("READY");
        if (await Console.In.ReadLineAsync().ConfigureAwait(false) != "GO")
        {
            return 2;
        }

        var connections = new RawConnection?[count];
        long next = -1;
        long ok = 0;
        long failed = 0;
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        using var done = new CancellationTokenSource();
        var reporter = Task.Run(async () =>
        {
            while (!done.IsCancellationRequested)
            {
                Console.WriteLine("PROGRESS " + Volatile.Read(ref ok).ToString(CultureInfo.InvariantCulture));
                await Task.Delay(200, done.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }
        });
        // Blocking sockets on dedicated threads: cheaper per connection than async sockets (see RawConnection.Connect).
        var workers = new Thread[Math.Max(1, Math.Min(concurrency, count))];
        for (var w = 0; w < workers.Length; w++)
        {
            workers[w] = new Thread(() =>
            {
                long i;
                while ((i = Interlocked.Increment(ref next)) < count)
                {
                    try
                    {
                        var c = RawConnection.Connect(broker.TcpEndPoint, options.SourceAddress(broker.TcpEndPoint, first + i), 256);
                        c.Socket.ReceiveTimeout = 30_000;
                        var connack = c.Login(frames[i]);
                        if (connack.Reason == ReasonCode.Success)
                        {
                            connections[i] = c;
                            Interlocked.Increment(ref ok);
                        }
                        else
                        {
                            c.Dispose();
                            if (Interlocked.Increment(ref failed) <= 5)
                            {
                                Console.Error.WriteLine($"CONNACK {connack.Reason} {connack.Message}");
                            }
                        }
                    }
                    catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException or InvalidDataException)
                    {
                        if (Interlocked.Increment(ref failed) <= 5)
                        {
                            Console.Error.WriteLine($"connect failed: {e.Message}");
                        }
                    }

                    frames[i] = [];
                }
            }, 256 * 1024) { IsBackground = true };
            workers[w].Start();
        }

        foreach (var worker in workers)
        {
            worker.Join();
        }

        var ms = clock.Elapsed.TotalMilliseconds;
        await done.CancelAsync().ConfigureAwait(false);
        await reporter.ConfigureAwait(false);
        var cpuMs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"CONNECTED {ok} {failed} {ms:0.0} {cpuMs:0.0}"));

        while (await Console.In.ReadLineAsync().ConfigureAwait(false) is { } line && line != "CLOSE")
        {
        }

        foreach (var c in connections)
        {
            c?.Close();
        }

        Console.WriteLine("CLOSED");
        return 0;
    }
}
