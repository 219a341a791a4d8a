using System.Runtime.InteropServices;

namespace ChatBroker.Broker.Hosting;

/// <summary>
/// The signals the broker handles (SIGHUP: reload the TLS certificate; SIGINT, SIGQUIT, SIGTERM: stop), unblocked at
/// the start of the process (and SIGHUP no longer ignored). A signal mask is inherited through fork and exec, so a broker started by a parent that
/// blocks one of them (a supervisor, a test host's thread, a shell wrapper) would never see it: the signal stays
/// pending, its handler never runs and its default action never happens either (seen in the fresh-clone CI runs of
/// 2026-12-07: SIGHUP reached a broker whose threads all blocked it). Called first thing in <c>Main</c>, so the threads
/// created after it inherit the unblocked mask; the main thread itself lives as long as the process.
/// </summary>
public static partial class SignalMask
{
    private const int SigUnblock = 1; // Linux
    private const int SigSetBytes = 128; // glibc's sigset_t

    private static readonly (int Number, string Name)[] Handled = [(1, "SIGHUP"), (2, "SIGINT"), (3, "SIGQUIT"), (15, "SIGTERM")];

    /// <summary>The handled signals that were blocked (or, SIGHUP, ignored) when the process started, undone
    /// since; empty when none or not on Linux.</summary>
    public static IReadOnlyList<string> UnblockedAtStart { get; private set; } = [];

    /// <summary>Unblocks the handled signals on this thread and gives SIGHUP back its default disposition when it was
    /// ignored; returns what it changed.</summary>
    public static unsafe IReadOnlyList<string> UnblockHandled()
    {
        if (!OperatingSystem.IsLinux())
        {
            return [];
        }

        var set = stackalloc byte[SigSetBytes];
        var old = stackalloc byte[SigSetBytes];
        if (sigemptyset(set) != 0)
        {
            return [];
        }

        foreach (var (number, _) in Handled)
        {
            _ = sigaddset(set, number);
        }

        if (pthread_sigmask(SigUnblock, set, old) != 0)
        {
            return [];
        }

        var blocked = new List<string>();
        foreach (var (number, name) in Handled)
        {
            if (sigismember(old, number) == 1)
            {
                blocked.Add(name);
            }
        }

        // An ignored disposition is inherited through exec too (nohup sets SIGHUP to ignored), and .NET leaves a signal
        // ignored at start ignored: the reload handler never runs (the fresh-clone CI runs of 2026-12-07, started under
        // nohup). SIGHUP gets its default back before the broker registers its handler, which never lets it end the
        // broker. (SIGTERM the runtime has taken over before Main: it works either way. SIGINT and SIGQUIT stay as the
        // parent set them: a background job's keyboard signals.)
        var previous = signal(1, SigDefault);
        if (previous == SigIgnore)
        {
            blocked.Add("SIGHUP (ignored)");
        }
        else if (previous != SigDefault && previous != SigError)
        {
            _ = signal(1, previous); // a handler already: leave it
        }

        UnblockedAtStart = blocked;
        return blocked;
    }

    private const nint SigDefault = 0;
    private const nint SigIgnore = 1;
    private const nint SigError = -1;

    [LibraryImport("libc")]
    private static partial nint signal(int signal, nint handler);

    [LibraryImport("libc")]
    private static unsafe partial int sigemptyset(byte* set);

    [LibraryImport("libc")]
    private static unsafe partial int sigaddset(byte* set, int signal);

    [LibraryImport("libc")]
    private static unsafe partial int sigismember(byte* set, int signal);

    [LibraryImport("libc")]
    private static unsafe partial int pthread_sigmask(int how, byte* set, byte* oldSet);
}
