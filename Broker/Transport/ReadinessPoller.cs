using System.Runtime.InteropServices;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// The broker's own epoll loops, for <see cref="PolledSocketTransport"/>: an idle connection waits for its next
/// bytes as one one-shot epoll registration of its descriptor, holding no .NET receive state. .NET's own wait (a
/// zero-byte <c>ReceiveAsync</c>) keeps per socket a <c>SocketAsyncContext</c>, the socket's cached awaitable
/// event args, a receive operation and its callback: ≈ 640 of the ≈ 2,080 bytes an idle authenticated
/// connection held (heap dump at 15,000 connections, docs/performance.md "Issue 21").
/// <para>
/// Each loop is one thread blocked in <c>epoll_wait</c> on its own epoll instance; connections are spread over
/// the loops round robin. A registration's epoll data is (generation, slot) of this loop's table, never a
/// pointer: an event that arrives for a connection closed meanwhile (its slot freed, or reused under a new
/// generation) finds nothing and is dropped. Registrations are <c>EPOLLONESHOT</c>: one wait, one event; the
/// transport re-arms for its next wait. A closed descriptor leaves the epoll set by itself (no dup is ever made).
/// </para>
/// <para>
/// Only on Linux x64 (<see cref="IsSupported"/>: the packed <c>struct epoll_event</c> of that ABI); elsewhere the
/// broker uses <see cref="SocketTransport"/>. The table grows with the connections of a loop and is indexed, not
/// searched; its lock is taken once per event, connect and close (uncontended: one loop thread).
/// </para>
/// </summary>
internal sealed unsafe partial class ReadinessPoller
{
    private const int EpollCtlAdd = 1;
    private const int EpollCtlMod = 3;
    private const uint EpollIn = 0x001;
    private const uint EpollRdHup = 0x2000;
    private const uint EpollOneShot = 1u << 30;
    private const int EpollCloexec = 0x80000;
    private const int EIntr = 4;
    private const int EventsPerWait = 64;

    private static readonly Lock SharedLock = new();
    private static ReadinessPoller? _shared;

    private readonly Loop[] _loops;
    private int _next;

    private ReadinessPoller(int loops, bool inlineCompletions)
    {
        InlineCompletions = inlineCompletions;
        _loops = new Loop[loops];
        for (var i = 0; i < loops; i++)
        {
            _loops[i] = new Loop(this, i);
        }
    }

    /// <summary>Linux on x64: the epoll ABI this class is written for.</summary>
    public static bool IsSupported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    /// <summary>True: a readiness event completes the wait on the loop's thread (its continuation runs there, as
    /// .NET's socket event threads do with tcp.inline_completions); false: on the thread pool.</summary>
    public bool InlineCompletions { get; }

    /// <summary>The process's loops (one per core, at most 8), started on first use.</summary>
    public static ReadinessPoller Shared(bool inlineCompletions)
    {
        lock (SharedLock)
        {
            return _shared ??= new ReadinessPoller(Math.Clamp(Environment.ProcessorCount, 1, 8), inlineCompletions);
        }
    }

    /// <summary>The shared loops when <c>tcp.readiness_poller</c> is on and the platform has them, else null.</summary>
    public static ReadinessPoller? For(Configuration.TcpOptions tcp) =>
        tcp.ReadinessPoller && IsSupported ? Shared(tcp.InlineCompletions) : null;

    /// <summary>A loop for a new connection (round robin).</summary>

    public Loop Pick() => _loops[(int)((uint)Interlocked.Increment(ref _next) % (uint)_loops.Length)];

    [StructLayout(LayoutKind.Sequential, Pack = 1)]
    private struct EpollEvent
    {
        public uint Events;
        public ulong Data;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_create1(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_ctl(int epfd, int op, int fd, EpollEvent* ev);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_wait(int epfd, EpollEvent* events, int maxEvents, int timeout);

    /// <summary>One epoll instance, its thread, and the table of the connections registered with it.</summary>
    internal sealed class Loop
    {
        private readonly int _epoll;
        private readonly Lock _lock = new();
        private PolledSocketTransport?[] _slots = new PolledSocketTransport?[64];
        private int[] _generations = new int[64];
        private int[] _free = new int[64];
        private int _freeCount;
        private int _used;

        public Loop(ReadinessPoller owner, int index)
        {
            Owner = owner;
            _epoll = epoll_create1(EpollCloexec);
            if (_epoll < 0)
            {
                throw new InvalidOperationException($"epoll_create1 failed (errno {Marshal.GetLastPInvokeError()})");
            }

            new Thread(Run) { IsBackground = true, Name = $"ChatBroker readiness {index}" }.Start();
        }

        public ReadinessPoller Owner { get; }

        /// <summary>Takes a slot for <paramref name="transport"/>; the pair identifies it in events.</summary>
        public (int Slot, int Generation) Add(PolledSocketTransport transport)
        {
            lock (_lock)
            {
                int slot;
                if (_freeCount > 0)
                {
                    slot = _free[--_freeCount];
                }
                else
                {
                    if (_used == _slots.Length)
                    {
                        Array.Resize(ref _slots, _slots.Length * 2);
                        Array.Resize(ref _generations, _generations.Length * 2);
                        Array.Resize(ref _free, _free.Length * 2);
                    }

                    slot = _used++;
                }

                _slots[slot] = transport;
                return (slot, ++_generations[slot]);
            }
        }

        /// <summary>Frees the slot (the connection is closed); a late event for it is dropped.</summary>
        public void Remove(int slot, int generation)
        {
            lock (_lock)
            {
                if (_generations[slot] == generation && _slots[slot] is not null)
                {
                    _slots[slot] = null;
                    _free[_freeCount++] = slot;
                }
            }
        }

        /// <summary>One event when <paramref name="fd"/> is readable (or the peer closed). False when epoll refused.</summary>
        public bool Arm(int fd, int slot, int generation, bool added)
        {
            var ev = new EpollEvent { Events = EpollIn | EpollRdHup | EpollOneShot, Data = ((ulong)(uint)generation << 32) | (uint)slot };
            return epoll_ctl(_epoll, added ? EpollCtlMod : EpollCtlAdd, fd, &ev) == 0;
        }

        private void Run()
        {
            var events = stackalloc EpollEvent[EventsPerWait];
            while (true)
            {
                var n = epoll_wait(_epoll, events, EventsPerWait, -1);
                if (n < 0)
                {
                    if (Marshal.GetLastPInvokeError() == EIntr)
                    {
                        continue;
                    }

                    return; // the epoll instance is gone: nothing more can arrive
                }

                for (var i = 0; i < n; i++)
                {
                    var data = events[i].Data;
                    var slot = (int)(uint)data;
                    var generation = (int)(uint)(data >> 32);
                    PolledSocketTransport? transport;
                    lock (_lock)
                    {
                        transport = slot < _used && _generations[slot] == generation ? _slots[slot] : null;
                    }

                    try
                    {
                        transport?.OnReadable();
                    }
                    catch (Exception)
                    {
                        // A continuation run inline failed outside its own task (it never should): this loop must
                        // keep serving the other connections; the session ends through its own error handling.
                    }
                }
            }
        }
    }
}
