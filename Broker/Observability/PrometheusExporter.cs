using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;

namespace ChatBroker.Broker.Observability;

/// <summary>
/// Exposes System.Diagnostics.Metrics instruments in the Prometheus text exposition format (version 0.0.4).
/// A <see cref="MeterListener"/> aggregates measurements as they happen (sums for counters, buckets for
/// histograms); observable instruments are polled on each scrape. Names follow Prometheus conventions:
/// dots become underscores, the unit becomes a suffix (s → _seconds, By → _bytes) and counters end in _total.
/// Untagged measurements — the hot path — take a lock-free add and allocate nothing.
/// </summary>
public sealed class PrometheusExporter : IDisposable
{
    private static readonly double[] SecondsBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
    private static readonly double[] DefaultBuckets = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000];

    private readonly MeterListener _listener;
    private readonly ConcurrentDictionary<Instrument, InstrumentState> _instruments = new();
    private readonly Lock _scrapeLock = new();

    /// <param name="meterNames">Meters to export; an entry ending in '*' matches a prefix.</param>
    public PrometheusExporter(params string[] meterNames)
    {
        _listener = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (Matches(instrument.Meter.Name, meterNames))
                {
                    var state = new InstrumentState(instrument);
                    _instruments[instrument] = state;
                    listener.EnableMeasurementEvents(instrument, state);
                }
            },
            MeasurementsCompleted = (instrument, state) => _instruments.TryRemove(instrument, out var removed),
        };
        _listener.SetMeasurementEventCallback<long>(static (_, value, tags, state) => ((InstrumentState)state!).Record(value, tags));
        _listener.SetMeasurementEventCallback<int>(static (_, value, tags, state) => ((InstrumentState)state!).Record(value, tags));
        _listener.SetMeasurementEventCallback<double>(static (_, value, tags, state) => ((InstrumentState)state!).Record(value, tags));
        _listener.SetMeasurementEventCallback<float>(static (_, value, tags, state) => ((InstrumentState)state!).Record(value, tags));
        _listener.SetMeasurementEventCallback<short>(static (_, value, tags, state) => ((InstrumentState)state!).Record(value, tags));
        _listener.SetMeasurementEventCallback<byte>(static (_, value, tags, state) => ((InstrumentState)state!).Record(value, tags));
        _listener.Start();
    }

    /// <summary>Polls observable instruments and renders every instrument's current state.</summary>
    public string Scrape()
    {
        var text = new StringBuilder(8192);
        lock (_scrapeLock)
        {
            _listener.RecordObservableInstruments();
            var ordered = _instruments.Values.ToList();
            ordered.Sort(static (a, b) => string.CompareOrdinal(a.Name, b.Name));
            foreach (var state in ordered)
            {
                state.WriteTo(text);
            }
        }

        return text.ToString();
    }

    public void Dispose() => _listener.Dispose();

    private static bool Matches(string meter, string[] patterns)
    {
        foreach (var p in patterns)
        {
            if (p.EndsWith('*') ? meter.StartsWith(p[..^1], StringComparison.Ordinal) : meter == p)
            {
                return true;
            }
        }

        return false;
    }

    internal static string PrometheusName(Instrument instrument)
    {
        var name = new StringBuilder(instrument.Name.Length + 16);
        foreach (var c in instrument.Name)
        {
            name.Append(char.IsAsciiLetterOrDigit(c) ? c : '_');
        }

        var suffix = instrument.Unit switch
        {
            "s" => "_seconds",
            "ms" => "_milliseconds",
            "By" => "_bytes",
            _ => "",
        };
        if (suffix.Length > 0 && !name.ToString().EndsWith(suffix, StringComparison.Ordinal))
        {
            name.Append(suffix);
        }

        if (IsCounter(instrument))
        {
            name.Append("_total");
        }

        return name.ToString();
    }

    private static bool IsCounter(Instrument i)
    {
        var type = i.GetType();
        return type.IsGenericType && (type.GetGenericTypeDefinition() == typeof(Counter<>) || type.GetGenericTypeDefinition() == typeof(ObservableCounter<>));
    }

    private enum Aggregation
    {
        Sum,
        LastValue,
        Histogram,
    }

    private sealed class InstrumentState
    {
        private readonly Instrument _instrument;
        private readonly Aggregation _aggregation;
        private readonly string _constantLabels;
        private readonly double[] _bounds;
        private readonly Series _untagged;
        private readonly ConcurrentDictionary<string, Series> _tagged = new(StringComparer.Ordinal);

        public InstrumentState(Instrument instrument)
        {
            _instrument = instrument;
            Name = PrometheusName(instrument);
            var type = instrument.GetType().IsGenericType ? instrument.GetType().GetGenericTypeDefinition() : null;
            _aggregation =
                type == typeof(Histogram<>) ? Aggregation.Histogram :
                instrument.IsObservable || type == typeof(Gauge<>) ? Aggregation.LastValue :
                Aggregation.Sum;
            _bounds = _aggregation == Aggregation.Histogram ? (instrument.Unit == "s" ? SecondsBuckets : DefaultBuckets) : [];
            var labels = new StringBuilder();
            if (instrument.Meter.Tags is not null)
            {
                foreach (var tag in instrument.Meter.Tags)
                {
                    AppendLabel(labels, tag.Key, tag.Value);
                }
            }

            _constantLabels = labels.ToString();
            _untagged = new Series(_constantLabels, _bounds.Length);
        }

        public string Name { get; }

        public void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var series = tags.Length == 0 ? _untagged : GetSeries(tags);
            switch (_aggregation)
            {
                case Aggregation.Sum:
                    series.Add(value);
                    break;
                case Aggregation.LastValue:
                    series.Set(value);
                    break;
                default:
                    series.Observe(value, _bounds);
                    break;
            }
        }

        private Series GetSeries(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            // Some tagged series are per message (the MQTT listener's messages in and out, by space): the tag sets seen
            // so far are matched first, without building their label string (that cost 26 % of the MQTT path's
            // allocation). The list is copied on write and holds at most MaxRecentTagSets; past that, the string path.
            var recent = _recent;
            foreach (var entry in recent)
            {
                if (entry.Matches(tags))
                {
                    return entry.Series;
                }
            }

            var series = GetSeriesByLabels(tags);
            if (recent.Length < MaxRecentTagSets)
            {
                var grown = new TagSet[recent.Length + 1];
                recent.CopyTo(grown, 0);
                grown[^1] = new TagSet(tags.ToArray(), series);
                Interlocked.CompareExchange(ref _recent, grown, recent); // lost to a concurrent add: the next call adds it
            }

            return series;
        }

        private const int MaxRecentTagSets = 32;
        private TagSet[] _recent = [];

        private sealed class TagSet(KeyValuePair<string, object?>[] tags, Series series)
        {
            public Series Series { get; } = series;

            public bool Matches(ReadOnlySpan<KeyValuePair<string, object?>> other)
            {
                if (other.Length != tags.Length)
                {
                    return false;
                }

                for (var i = 0; i < tags.Length; i++)
                {
                    if (!string.Equals(tags[i].Key, other[i].Key, StringComparison.Ordinal) || !Equals(tags[i].Value, other[i].Value))
                    {
                        return false;
                    }
                }

                return true;
            }
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
        private Series GetSeriesByLabels(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var labels = new StringBuilder(_constantLabels);
            foreach (var tag in tags)
            {
                AppendLabel(labels, tag.Key, tag.Value);
            }

            var key = labels.ToString();
            return _tagged.GetOrAdd(key, static (k, n) => new Series(k, n), _bounds.Length);
        }

        public void WriteTo(StringBuilder text)
        {
            if (!_untagged.HasValue && _tagged.IsEmpty)
            {
                return;
            }

            if (!string.IsNullOrEmpty(_instrument.Description))
            {
                text.Append("# HELP ").Append(Name).Append(' ')
                    .Append(_instrument.Description.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal))
                    .Append('\n');
            }

            var type = _aggregation switch
            {
                Aggregation.Histogram => "histogram",
                _ when IsCounter(_instrument) => "counter",
                _ => "gauge",
            };
            text.Append("# TYPE ").Append(Name).Append(' ').Append(type).Append('\n');
            if (_untagged.HasValue)
            {
                WriteSeries(text, _untagged);
            }

            foreach (var series in _tagged.Values)
            {
                WriteSeries(text, series);
            }
        }

        private void WriteSeries(StringBuilder text, Series series)
        {
            if (_aggregation != Aggregation.Histogram)
            {
                text.Append(Name);
                AppendLabelSet(text, series.Labels, null);
                text.Append(' ').Append(Format(series.Value)).Append('\n');
                return;
            }

            lock (series)
            {
                long cumulative = 0;
                for (var i = 0; i < _bounds.Length; i++)
                {
                    cumulative += series.Buckets[i];
                    text.Append(Name).Append("_bucket");
                    AppendLabelSet(text, series.Labels, Format(_bounds[i]));
                    text.Append(' ').Append(cumulative.ToString(CultureInfo.InvariantCulture)).Append('\n');
                }

                text.Append(Name).Append("_bucket");
                AppendLabelSet(text, series.Labels, "+Inf");
                text.Append(' ').Append(series.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
                text.Append(Name).Append("_sum");
                AppendLabelSet(text, series.Labels, null);
                text.Append(' ').Append(Format(series.Value)).Append('\n');
                text.Append(Name).Append("_count");
                AppendLabelSet(text, series.Labels, null);
                text.Append(' ').Append(series.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
            }
        }

        private static void AppendLabelSet(StringBuilder text, string labels, string? le)
        {
            if (labels.Length == 0 && le is null)
            {
                return;
            }

            text.Append('{').Append(labels);
            if (le is not null)
            {
                text.Append(labels.Length > 0 ? "," : "").Append("le=\"").Append(le).Append('"');
            }

            text.Append('}');
        }

        private static void AppendLabel(StringBuilder labels, string key, object? value)
        {
            if (labels.Length > 0)
            {
                labels.Append(',');
            }

            foreach (var c in key)
            {
                labels.Append(char.IsAsciiLetterOrDigit(c) ? c : '_');
            }

            labels.Append("=\"");
            var text = Convert.ToString(value, CultureInfo.InvariantCulture) ?? "";
            foreach (var c in text)
            {
                _ = c switch
                {
                    '\\' => labels.Append("\\\\"),
                    '"' => labels.Append("\\\""),
                    '\n' => labels.Append("\\n"),
                    _ => labels.Append(c),
                };
            }

            labels.Append('"');
        }

        private static string Format(double value) =>
            double.IsPositiveInfinity(value) ? "+Inf" :
            double.IsNegativeInfinity(value) ? "-Inf" :
            double.IsNaN(value) ? "NaN" :
            value.ToString("R", CultureInfo.InvariantCulture);
    }

    private sealed class Series(string labels, int bucketCount)
    {
        private double _value;
        private int _hasValue;

        public string Labels { get; } = labels;
        public long[] Buckets { get; } = new long[bucketCount];
        public long Count { get; private set; }
        public double Value => Volatile.Read(ref _value);
        public bool HasValue => Volatile.Read(ref _hasValue) != 0;

        public void Add(double delta)
        {
            double current, updated;
            do
            {
                current = Volatile.Read(ref _value);
                updated = current + delta;
            }
            while (Interlocked.CompareExchange(ref _value, updated, current) != current);
            Volatile.Write(ref _hasValue, 1);
        }

        public void Set(double value)
        {
            Volatile.Write(ref _value, value);
            Volatile.Write(ref _hasValue, 1);
        }

        public void Observe(double value, double[] bounds)
        {
            var index = bounds.Length;
            for (var i = 0; i < bounds.Length; i++)
            {
                if (value <= bounds[i])
                {
                    index = i;
                    break;
                }
            }

            lock (this)
            {
                if (index < bounds.Length)
                {
                    Buckets[index]++;
                }

                Count++;
                _value += value;
                _hasValue = 1;
            }
        }
    }
}
