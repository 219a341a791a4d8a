using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Tokens;

namespace ChatBroker.Mqtt.Tests.Infrastructure;

/// <summary>A broker process with the MQTT listener on (port 0, anonymous clients allowed), and its MQTT address.</summary>
public sealed partial class MqttTestBroker : IAsyncDisposable
{
    private MqttTestBroker(TestBroker broker, IPEndPoint mqtt)
    {
        Broker = broker;
        Mqtt = mqtt;
    }

    public TestBroker Broker { get; }
    public IPEndPoint Mqtt { get; }
    public string Host => Mqtt.Address.ToString();
    public string Port => Mqtt.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);

    [GeneratedRegex(@"MQTT listening on (\S+)")]
    private static partial Regex MqttLine();

    public static async Task<MqttTestBroker> StartAsync(string? dataDir = null, params string[] extraArgs)
    {
        var broker = await TestBroker.StartAsync(dataDir, ["--set", "mqtt.listen=127.0.0.1:0", "--set", "mqtt.allow_anonymous=true", .. extraArgs]);
        var line = await broker.Process.WaitForLineAsync(MqttLine()).WaitAsync(TimeSpan.FromSeconds(30));
        return new MqttTestBroker(broker, IPEndPoint.Parse(line.Groups[1].Value));
    }

    public string Token(string user, string? device = null) => Broker.Token(user, device);

    /// <summary>A token that expired an hour ago.</summary>
    public string ExpiredToken(string user) =>
        AccessToken.Issue(Broker.Secret, user, null, TimeSpan.FromMinutes(1), DateTimeOffset.UtcNow.AddHours(-1));

    public ValueTask DisposeAsync() => Broker.DisposeAsync();
}

/// <summary>One broker shared by the tests of a class.</summary>
public sealed class MqttBrokerFixture : IAsyncLifetime
{
    public MqttTestBroker Broker { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Tools.RequireMqttClients();
        Broker = await MqttTestBroker.StartAsync();
    }

    public async Task DisposeAsync() => await Broker.DisposeAsync();
}

/// <summary>The real MQTT clients the tests drive: Debian's python3-paho-mqtt and mosquitto-clients.</summary>
public static class Tools
{
    public const string Python = "/usr/bin/python3";

    public static string Script(string name) => Path.Combine(AppContext.BaseDirectory, "conformance", name);

    /// <summary>Fails with what to run when the clients are missing (scripts/ensure-test-deps.sh installs them).</summary>
    public static void RequireMqttClients()
    {
        var (code, _, _) = RunAsync(Python, ["-c", "import paho.mqtt.client"], TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
        if (code != 0 || !File.Exists("/usr/bin/mosquitto_pub") || !File.Exists("/usr/bin/mosquitto_sub"))
        {
            throw new InvalidOperationException(
                "The MQTT conformance tests need python3-paho-mqtt and mosquitto-clients: run scripts/ensure-test-deps.sh (or apt-get install python3-paho-mqtt mosquitto-clients).");
        }
    }

    public static Process Start(string file, IEnumerable<string> args)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        return Process.Start(info)!;
    }

    /// <summary>Runs a process to completion (killed after <paramref name="timeout"/>).</summary>
    public static async Task<(int Code, string StdOut, string StdErr)> RunAsync(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        using var process = Start(file, args);
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            await process.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            return (-1, await stdout, await stderr + $"\n(killed after {timeout})");
        }

        return (process.ExitCode, await stdout, await stderr);
    }

    public static string Json(object value) => JsonSerializer.Serialize(value);

    public static string Lines(IEnumerable<string> lines)
    {
        var sb = new StringBuilder();
        foreach (var l in lines)
        {
            sb.Append(l).Append('\n');
        }

        return sb.ToString();
    }
}
