using System.Diagnostics;
using System.Text.Json;

namespace ChatBroker.LoadTests.Checker;

/// <summary>
/// Appends events to the history file (JSON lines) and keeps them for the checker. Thread-safe: every client
/// records from its own loops. Bounded: past <see cref="MaxEvents"/> nothing more is kept and <see cref="Overflowed"/>
/// is set (the run then fails its check: a truncated history proves nothing); the scenario stops sending at
/// <see cref="NearlyFull"/> so the drain and the final reads still fit (they add about as many events as the run:
/// each acked message is read again from two inboxes and one conversation).
/// </summary>
public sealed class HistoryRecorder : IDisposable
{
    private readonly Lock _lock = new();
    private readonly StreamWriter? _file;
    private readonly List<HistoryEvent> _events = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public HistoryRecorder(string? path, int maxEvents)
    {
        Path = path;
        MaxEvents = maxEvents;
        if (path is not null)
        {
            _file = new StreamWriter(path, append: false) { AutoFlush = false };
        }
    }

    public string? Path { get; }

    public int MaxEvents { get; }

    public bool Overflowed { get; private set; }

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _events.Count;
            }
        }
    }

    /// <summary>Half used: time to stop producing new sends.</summary>
    public bool NearlyFull => Count >= MaxEvents / 2;

    public double Now => _clock.Elapsed.TotalMilliseconds;

    /// <summary>Stamps <paramref name="e"/> with the run's clock and records it.</summary>
    public void Record(HistoryEvent e)
    {
        e = e with { T = Math.Round(Now, 3) };
        lock (_lock)
        {
            if (_events.Count >= MaxEvents)
            {
                Overflowed = true;
                return;
            }

            _events.Add(e);
            _file?.WriteLine(JsonSerializer.Serialize(e, HistoryJson.Default.HistoryEvent));
        }
    }

    public List<HistoryEvent> Snapshot()
    {
        lock (_lock)
        {
            _file?.Flush();
            return [.. _events];
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _file?.Dispose();
        }
    }
}
