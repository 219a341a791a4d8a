using System.Diagnostics;
using System.Runtime.InteropServices;

namespace ChatBroker.LoadTests;

/// <summary>
/// Sleeps with sub-millisecond precision for the fixed-rate pacer (`pairs --rate`): Thread.Sleep rounds to whole milliseconds,
/// which turns an even rate into a burst per millisecond. Uses nanosleep(2), and sets the calling thread's
/// timer slack to 1 µs (the default 50 µs would make each wake up to 50 µs late).
/// </summary>
internal static class PreciseSleep
{
    private const int PrSetTimerSlack = 29;

    /// <summary>Below this a wait is not worth a sleep (the wake-up costs about as much): the caller's loop
    /// re-checks the time instead, i.e. spins for at most this long.</summary>
    private static readonly TimeSpan MinSleep = TimeSpan.FromMicroseconds(20);

    public static void UseFineTimerSlack()
    {
        if (OperatingSystem.IsLinux())
        {
            _ = Prctl(PrSetTimerSlack, 1_000, 0, 0, 0);
        }
    }

    /// <summary>Sleeps until <paramref name="seconds"/> after <paramref name="start"/> (Stopwatch ticks); returns at once if that has passed.</summary>
    public static void Until(long start, double seconds)
    {
        var wait = TimeSpan.FromSeconds(seconds) - Stopwatch.GetElapsedTime(start);
        if (wait < MinSleep)
        {
            return;
        }

        if (!OperatingSystem.IsLinux())
        {
            Thread.Sleep(wait);
            return;
        }

        var ns = (long)(wait.TotalMicroseconds * 1_000);
        var request = new TimeSpec { Seconds = ns / 1_000_000_000, Nanoseconds = ns % 1_000_000_000 };
        _ = NanoSleep(in request, IntPtr.Zero); // EINTR: the loop re-checks the time anyway
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "nanosleep")]
    private static extern int NanoSleep(in TimeSpec request, IntPtr remaining);

    [DllImport("libc", EntryPoint = "prctl")]
    private static extern int Prctl(int option, ulong arg2, ulong arg3, ulong arg4, ulong arg5);
}
