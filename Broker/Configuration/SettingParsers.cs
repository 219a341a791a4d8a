using System.Globalization;
using System.Net;

namespace ChatBroker.Broker.Configuration;

/// <summary>
/// Parsers for the value forms broker.toml uses beyond TOML's own types: durations ("500ms", "10s", "5m",
/// "2h", "30d") and endpoints ("127.0.0.1:7883", "[::1]:7883"). Each returns an error sentence on failure.
/// </summary>
public static class SettingParsers
{
    public static bool TryParseDuration(string text, out TimeSpan value, out string? error)
    {
        value = default;
        error = null;
        var s = text.Trim();
        int unitStart = 0;
        while (unitStart < s.Length && (char.IsAsciiDigit(s[unitStart]) || s[unitStart] == '.'))
        {
            unitStart++;
        }

        if (unitStart == 0 || unitStart == s.Length ||
            !double.TryParse(s.AsSpan(0, unitStart), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number))
        {
            error = $"expected a duration such as \"500ms\", \"10s\", \"5m\", \"2h\" or \"30d\", got \"{text}\"";
            return false;
        }

        double? ms = s[unitStart..] switch
        {
            "ms" => number,
            "s" => number * 1000,
            "m" => number * 60_000,
            "h" => number * 3_600_000,
            "d" => number * 86_400_000,
            _ => null,
        };
        if (ms is null)
        {
            error = $"unknown duration unit \"{s[unitStart..]}\" in \"{text}\" (use ms, s, m, h or d)";
            return false;
        }

        if (ms.Value > TimeSpan.MaxValue.TotalMilliseconds / 2)
        {
            error = $"duration \"{text}\" is too long";
            return false;
        }

        value = TimeSpan.FromMilliseconds(ms.Value);
        return true;
    }

    public static string FormatDuration(TimeSpan value)
    {
        if (value.Ticks % TimeSpan.TicksPerDay == 0 && value.Ticks != 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{value.Ticks / TimeSpan.TicksPerDay}d");
        }

        if (value.Ticks % TimeSpan.TicksPerHour == 0 && value.Ticks != 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{value.Ticks / TimeSpan.TicksPerHour}h");
        }

        if (value.Ticks % TimeSpan.TicksPerMinute == 0 && value.Ticks != 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{value.Ticks / TimeSpan.TicksPerMinute}m");
        }

        if (value.Ticks % TimeSpan.TicksPerSecond == 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{value.Ticks / TimeSpan.TicksPerSecond}s");
        }

        return string.Create(CultureInfo.InvariantCulture, $"{value.TotalMilliseconds}ms");
    }

    public static bool TryParseEndpoint(string text, out IPEndPoint value, out string? error)
    {
        error = null;
        if (IPEndPoint.TryParse(text.Trim(), out var ep) && HasExplicitPort(text))
        {
            value = ep;
            return true;
        }

        if (text.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase) &&
            int.TryParse(text.AsSpan("localhost:".Length), NumberStyles.None, CultureInfo.InvariantCulture, out var port) &&
            port is > 0 and <= 65535)
        {
            value = new IPEndPoint(IPAddress.Loopback, port);
            return true;
        }

        value = new IPEndPoint(IPAddress.None, 0);
        error = $"expected an address and port such as \"127.0.0.1:7883\" or \"[::1]:7883\", got \"{text}\"";
        return false;
    }

    public static string FormatEndpoint(IPEndPoint endpoint) => endpoint.ToString();

    private static bool HasExplicitPort(string text)
    {
        var t = text.Trim();
        var colon = t.LastIndexOf(':');
        return colon > 0 && (t[0] != '[' || t[colon - 1] == ']');
    }
}
