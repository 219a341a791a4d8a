using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Text.Json;

namespace ChatBroker.Host.Cli;

/// <summary>
/// <c>chatbroker device list --user U</c> and <c>chatbroker device revoke --user U [--device D]</c>: the operator's
/// view of a user's devices and revocation, through the running broker's admin API (<c>admin.listen</c> from the
/// same configuration as <c>serve</c>, or <c>--admin host:port</c>). Revoking without <c>--device</c> revokes every
/// device of the user. Exit codes: 0 done, 1 the broker refused or could not be reached, 2 usage.
/// </summary>
internal static class DeviceCommands
{
    public static void Add(RootCommand root, Option<string?> configOption, Option<string[]> setOption)
    {
        var userOption = new Option<string>("--user", "-u") { Description = "The user whose devices are meant.", Required = true };
        var deviceOption = new Option<string?>("--device", "-d") { Description = "One device; without it, every device of the user." };
        var adminOption = new Option<string?>("--admin") { Description = "The broker's admin endpoint host:port (default: admin.listen)." };

        var list = new Command("list", "List the user's devices the broker knows of: online, with E2E keys, revoked.") { userOption, adminOption };
        list.SetAction((result, token) => RunAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(adminOption),
            HttpMethod.Get, "/devices?user=" + Uri.EscapeDataString(result.GetValue(userOption)!), token));

        var revoke = new Command("revoke", "Revoke a device (or every device of the user): its sessions are closed with DEVICE_REVOKED and its current tokens refused from now on.")
        {
            userOption, deviceOption, adminOption,
        };
        revoke.SetAction((result, token) =>
        {
            var query = "/devices/revoke?user=" + Uri.EscapeDataString(result.GetValue(userOption)!);
            if (result.GetValue(deviceOption) is { } device)
            {
                query += "&device=" + Uri.EscapeDataString(device);
            }

            return RunAsync(result.GetValue(configOption), result.GetValue(setOption), result.GetValue(adminOption), HttpMethod.Post, query, token);
        });

        root.Subcommands.Add(new Command("device", "Devices of a user: list, revoke.") { list, revoke });
    }

    private static async Task<int> RunAsync(string? configFile, string[]? overrides, string? admin, HttpMethod method, string pathAndQuery, CancellationToken cancellationToken)
    {
        string authority;
        if (admin is not null)
        {
            authority = admin;
        }
        else
        {
            var configuration = Program.LoadConfiguration(configFile, overrides);
            if (configuration is null)
            {
                return Program.ExitUsage;
            }

            var listen = configuration.Options.Admin.Listen;
            var address = listen.Address.Equals(IPAddress.Any) ? IPAddress.Loopback : listen.Address.Equals(IPAddress.IPv6Any) ? IPAddress.IPv6Loopback : listen.Address;
            authority = new IPEndPoint(address, listen.Port).ToString();
        }

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        HttpResponseMessage response;
        try
        {
            response = await http.SendAsync(new HttpRequestMessage(method, "http://" + authority + pathAndQuery), cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            await Console.Error.WriteLineAsync($"chatbroker: cannot reach the admin endpoint at {authority}: {e.Message}").ConfigureAwait(false);
            return Program.ExitFailure;
        }

        var body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            await Console.Error.WriteAsync($"chatbroker: {(int)response.StatusCode} {body}").ConfigureAwait(false);
            return response.StatusCode == HttpStatusCode.BadRequest ? Program.ExitUsage : Program.ExitFailure;
        }

        using var json = JsonDocument.Parse(body);
        var root = json.RootElement;
        if (root.TryGetProperty("devices", out var devices))
        {
            Console.WriteLine($"{"DEVICE",-32} {"ONLINE",-6} {"KEYS",-5} REVOKED");
            foreach (var d in devices.EnumerateArray())
            {
                var revoked = d.GetProperty("revoked_at_ms") is { ValueKind: JsonValueKind.Number } at
                    ? DateTimeOffset.FromUnixTimeMilliseconds(at.GetInt64()).ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture)
                    : "-";
                Console.WriteLine($"{d.GetProperty("device").GetString(),-32} {(d.GetProperty("online").GetBoolean() ? "yes" : "no"),-6} {(d.GetProperty("keys").GetBoolean() ? "yes" : "no"),-5} {revoked}");
            }
        }
        else
        {
            var device = root.GetProperty("device").GetString() ?? "every device";
            var at = DateTimeOffset.FromUnixTimeMilliseconds(root.GetProperty("revoked_at_ms").GetInt64());
            Console.WriteLine($"revoked {device} of {root.GetProperty("user").GetString()} at {at.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture)}");
        }

        return Program.ExitOk;
    }
}
