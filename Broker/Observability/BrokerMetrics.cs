using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace ChatBroker.Broker.Observability;

/// <summary>
/// The broker's own instruments, on the meter "ChatBroker". Connection counts are plain counters updated
/// by the listener; process figures are observed at scrape time. Runtime figures (GC, thread pool, heap)
/// come from .NET's built-in "System.Runtime" meter, which <see cref="PrometheusExporter"/> also exports.
/// </summary>
public sealed class BrokerMetrics : IDisposable
{
    public const string MeterName = "ChatBroker";

    private readonly Meter _meter;
    private readonly long _startTimestamp = Stopwatch.GetTimestamp();

    public BrokerMetrics(string nodeName)
    {
        _meter = new Meter(MeterName, "1.0", [new KeyValuePair<string, object?>("node", nodeName)]);
        ConnectionsAccepted = _meter.CreateCounter<long>("chatbroker.connections.accepted", "{connection}", "TCP connections accepted.");
        ConnectionsRejected = _meter.CreateCounter<long>("chatbroker.connections.rejected", "{connection}", "TCP connections refused at accept time because tcp.max_connections was reached.");
        ConnectionsOpen = _meter.CreateUpDownCounter<long>("chatbroker.connections.open", "{connection}", "TCP connections currently open.");
        _meter.CreateObservableGauge("chatbroker.uptime", () => Stopwatch.GetElapsedTime(_startTimestamp).TotalSeconds, "s", "Seconds since the broker started.");
        _meter.CreateObservableGauge("process.memory.resident", static () => Environment.WorkingSet, "By", "Resident set size of the broker process.");
        _meter.CreateObservableGauge("process.memory.managed_heap", static () => GC.GetTotalMemory(false), "By", "Bytes currently thought to be allocated on the managed heap.");
        _meter.CreateObservableCounter("process.cpu.time", static () => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds, "s", "CPU time used by the broker process.");
        _meter.CreateObservableGauge("process.open_files", CountOpenFiles, "{file}", "Open file descriptors of the broker process.");
    }

    public Counter<long> ConnectionsAccepted { get; }
    public Counter<long> ConnectionsRejected { get; }
    public UpDownCounter<long> ConnectionsOpen { get; }

    public void Dispose() => _meter.Dispose();

    private static long CountOpenFiles()
    {
        try
        {
            return Directory.Exists("/proc/self/fd") ? Directory.GetFiles("/proc/self/fd").Length : 0;
        }
        catch (IOException)
        {
            return 0;
        }
    }
}
