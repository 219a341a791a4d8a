using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;
using ChatBroker.Host.Tests.Infrastructure;

namespace ChatBroker.Host.Tests;

/// <summary>
/// The sd_notify protocol without systemd: the test binds the unix datagram socket a service manager would
/// (NOTIFY_SOCKET), starts the real broker process and reads what it says.
/// </summary>
public sealed class SystemdNotifyTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Ready_after_the_ports_are_bound_watchdog_while_ready_stopping_on_sigterm_and_journal_log_lines()
    {
        await using var manager = new NotifySocket();
        var launch = new BrokerLaunch
        {
            Environment = new Dictionary<string, string>
            {
                ["NOTIFY_SOCKET"] = manager.Path,
                ["WATCHDOG_USEC"] = "200000", // WatchdogSec=200ms: a ping every 100 ms
                ["JOURNAL_STREAM"] = "8:4242", // what systemd sets when the service's output goes to the journal
            },
        };
        await using var broker = await BrokerProcess.LaunchAsync(launch);

        var ready = await manager.NextAsync("READY=1").WaitAsync(Wait);
        var socketInodes = SocketInodesOf(broker.Pid);
        Assert.True(
            ready.ListeningPorts.TryGetValue(broker.TcpEndPoint.Port, out var tcpInode) && socketInodes.Contains(tcpInode),
            $"READY=1 came before the native listener (port {broker.TcpEndPoint.Port}) was bound");
        Assert.True(
            ready.ListeningPorts.TryGetValue(broker.AdminEndPoint.Port, out var adminInode) && socketInodes.Contains(adminInode),
            $"READY=1 came before the admin endpoint (port {broker.AdminEndPoint.Port}) was bound");

        // Pings continue while the node is ready: two more after READY.
        await manager.NextAsync("WATCHDOG=1").WaitAsync(Wait);
        await manager.NextAsync("WATCHDOG=1").WaitAsync(Wait);

        broker.SendSignal(BrokerProcess.SigTerm);
        await manager.NextAsync("STOPPING=1").WaitAsync(Wait);
        Assert.Equal(0, await broker.WaitForExitAsync(Wait));

        // The journal's format: the level as a syslog priority prefix, no timestamp of our own.
        await broker.WaitForLineAsync(new("^<6>ChatBroker\\.Host\\.ReadinessTracker\\[1003\\] Ready$")).WaitAsync(Wait);
        Assert.Contains("<6>ChatBroker.Host.SystemdWatchdog[1007] systemd watchdog: WATCHDOG=1 every 00:00:00.1000000 while ready", broker.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Without_NOTIFY_SOCKET_the_broker_logs_with_timestamps_and_no_watchdog()
    {
        await using var broker = await BrokerProcess.LaunchAsync(new BrokerLaunch
        {
            Environment = new Dictionary<string, string> { ["WATCHDOG_USEC"] = "200000" },
        });
        var ready = await broker.WaitForLineAsync(new("ReadinessTracker\\[1003\\] Ready$"));
        Assert.Matches("^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z info: ChatBroker\\.Host\\.ReadinessTracker\\[1003\\] Ready$", FindLine(broker.Output, ready.Value));
        Assert.DoesNotContain("watchdog", broker.Output, StringComparison.OrdinalIgnoreCase);
    }

    [Theory]
    [InlineData("30000000", null, 15_000_000L)]
    [InlineData("30000000", "4242", 15_000_000L)]
    [InlineData("30000000", "4243", null)] // meant for another process
    [InlineData("0", null, null)]
    [InlineData("", null, null)]
    [InlineData("-5", null, null)]
    [InlineData("30s", null, null)]
    [InlineData("1", null, 1_000L)] // never more often than every millisecond
    public void The_watchdog_pings_at_half_WATCHDOG_USEC_when_meant_for_this_process(string usec, string? pid, long? expectedMicroseconds)
    {
        var interval = Systemd.WatchdogInterval(usec, pid, 4242);
        Assert.Equal(expectedMicroseconds, interval is { } i ? (long)i.TotalMicroseconds : null);
    }

    private static string FindLine(string output, string text) =>
        output.Split('\n').First(l => l.Contains(text, StringComparison.Ordinal));

    /// <summary>The inodes of the sockets the process holds open (/proc/PID/fd links read "socket:[inode]").</summary>
    private static HashSet<long> SocketInodesOf(int pid)
    {
        var inodes = new HashSet<long>();
        foreach (var fd in Directory.GetFiles($"/proc/{pid}/fd"))
        {
            var target = new FileInfo(fd).LinkTarget;
            if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal))
            {
                inodes.Add(long.Parse(target.AsSpan(8, target.Length - 9), CultureInfo.InvariantCulture));
            }
        }

        return inodes;
    }

    /// <summary>One notification as received, with the TCP ports in LISTEN state at that moment (port → socket inode).</summary>
    private sealed record Notification(string Text, Dictionary<int, long> ListeningPorts);

    /// <summary>The service manager's end: a bound unix datagram socket and the notifications it received, in order.</summary>
    private sealed class NotifySocket : IAsyncDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        private readonly Channel<Notification> _received = Channel.CreateUnbounded<Notification>();
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _receiving;

        public NotifySocket()
        {
            // sun_path holds 108 bytes: a short name directly in the temp directory.
            Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "cbn-" + Guid.NewGuid().ToString("N")[..12] + ".sock");
            _socket.Bind(new UnixDomainSocketEndPoint(Path));
            _receiving = ReceiveAsync();
        }

        public string Path { get; }

        /// <summary>The next notification whose lines include <paramref name="state"/>; earlier ones are skipped.</summary>
        public async Task<Notification> NextAsync(string state)
        {
            while (true)
            {
                var notification = await _received.Reader.ReadAsync();
                if (notification.Text.Split('\n').Contains(state))
                {
                    return notification;
                }
            }
        }

        private async Task ReceiveAsync()
        {
            var buffer = new byte[4096];
            try
            {
                while (true)
                {
                    var n = await _socket.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                    // Read the listening sockets as soon as the datagram is in, before anything else runs here.
                    var ports = ListeningTcpPorts();
                    _received.Writer.TryWrite(new Notification(Encoding.UTF8.GetString(buffer, 0, n), ports));
                }
            }
            catch (OperationCanceledException)
            {
            }
            finally
            {
                _received.Writer.TryComplete();
            }
        }

        /// <summary>From /proc/net/tcp: local port → inode of every socket in state 0A (LISTEN).</summary>
        private static Dictionary<int, long> ListeningTcpPorts()
        {
            var ports = new Dictionary<int, long>();
            foreach (var line in File.ReadLines("/proc/net/tcp").Skip(1))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length > 9 && fields[3] == "0A")
                {
                    var port = int.Parse(fields[1].AsSpan(fields[1].IndexOf(':', StringComparison.Ordinal) + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                    ports[port] = long.Parse(fields[9], CultureInfo.InvariantCulture);
                }
            }

            return ports;
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await _receiving;
            _socket.Dispose();
            _stop.Dispose();
            File.Delete(Path);
        }
    }
}
