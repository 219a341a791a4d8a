using System.Diagnostics.Metrics;
using ChatBroker.Broker.Observability;

namespace ChatBroker.Broker.Tests.Observability;

public sealed class PrometheusExporterTests
{
    [Fact]
    public void Counters_gauges_and_histograms_render_in_prometheus_text_format()
    {
        var meterName = "ChatBroker.Test." + Guid.NewGuid().ToString("N");
        using var meter = new Meter(meterName, "1", [new KeyValuePair<string, object?>("node", "n1")]);
        using var exporter = new PrometheusExporter(meterName);
        var counter = meter.CreateCounter<long>("test.requests", "{request}", "Requests \"served\".");
        var updown = meter.CreateUpDownCounter<long>("test.open", "{connection}");
        var histogram = meter.CreateHistogram<double>("test.latency", "s");
        meter.CreateObservableGauge("test.memory", () => 42L, "By");

        counter.Add(2);
        counter.Add(3);
        counter.Add(1, new KeyValuePair<string, object?>("reason", "Slow\"Consumer"));
        updown.Add(5);
        updown.Add(-2);
        histogram.Record(0.0003);
        histogram.Record(0.02);
        histogram.Record(20);

        var text = exporter.Scrape();

        Assert.Contains("# TYPE test_requests_total counter\n", text, StringComparison.Ordinal);
        Assert.Contains("# HELP test_requests_total Requests \"served\".\n", text, StringComparison.Ordinal);
        Assert.Contains("test_requests_total{node=\"n1\"} 5\n", text, StringComparison.Ordinal);
        Assert.Contains("test_requests_total{node=\"n1\",reason=\"Slow\\\"Consumer\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE test_open gauge\n", text, StringComparison.Ordinal);
        Assert.Contains("test_open{node=\"n1\"} 3\n", text, StringComparison.Ordinal);
        Assert.Contains("test_memory_bytes{node=\"n1\"} 42\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE test_latency_seconds histogram\n", text, StringComparison.Ordinal);
        Assert.Contains("test_latency_seconds_bucket{node=\"n1\",le=\"0.0005\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("test_latency_seconds_bucket{node=\"n1\",le=\"0.025\"} 2\n", text, StringComparison.Ordinal);
        Assert.Contains("test_latency_seconds_bucket{node=\"n1\",le=\"+Inf\"} 3\n", text, StringComparison.Ordinal);
        Assert.Contains("test_latency_seconds_count{node=\"n1\"} 3\n", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Tagged_series_add_up_per_tag_set_past_the_cached_tag_sets()
    {
        var meterName = "ChatBroker.Test." + Guid.NewGuid().ToString("N");
        using var meter = new Meter(meterName);
        using var exporter = new PrometheusExporter(meterName);
        var counter = meter.CreateCounter<long>("test.messages");

        // The same tag sets again and again (the per-message path), values of mixed types, and more distinct tag sets
        // than the exporter matches without building their label string.
        for (var round = 0; round < 3; round++)
        {
            counter.Add(1, new KeyValuePair<string, object?>("space", "chat"));
            counter.Add(2, new KeyValuePair<string, object?>("space", "topic"));
            counter.Add(1, new KeyValuePair<string, object?>("space", "chat"), new KeyValuePair<string, object?>("qos", 1));
            for (var i = 0; i < 40; i++)
            {
                counter.Add(1, new KeyValuePair<string, object?>("n", i));
            }
        }

        var text = exporter.Scrape();

        Assert.Contains("test_messages_total{space=\"chat\"} 3\n", text, StringComparison.Ordinal);
        Assert.Contains("test_messages_total{space=\"topic\"} 6\n", text, StringComparison.Ordinal);
        Assert.Contains("test_messages_total{space=\"chat\",qos=\"1\"} 3\n", text, StringComparison.Ordinal);
        for (var i = 0; i < 40; i++)
        {
            Assert.Contains($"test_messages_total{{n=\"{i}\"}} 3\n", text, StringComparison.Ordinal);
        }
    }
}
