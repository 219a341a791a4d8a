using System.Text.Json;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol;
using Microsoft.AspNetCore.Http;

namespace ChatBroker.Host;

/// <summary>
/// The admin API for devices: <c>GET /devices?user=U</c> lists the user's devices this node knows of (online here,
/// with E2E keys, revoked), <c>POST /devices/revoke?user=U[&amp;device=D]</c> revokes one device or, without
/// <c>device</c>, every device of the user. Answers are JSON; a bad id is 400 with the reason.
/// </summary>
internal static class DeviceEndpoints
{
    public static IResult List(DeviceRevocations devices, string? user)
    {
        if (BadId(user, "user") is { } bad)
        {
            return bad;
        }

        var list = devices.List(user!);
        return Results.Bytes(JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object?>
        {
            ["user"] = user,
            ["devices"] = list.Select(d => new Dictionary<string, object?>
            {
                ["device"] = d.DeviceId,
                ["online"] = d.Online,
                ["keys"] = d.HasKeys,
                ["revoked_at_ms"] = d.RevokedAtMs,
            }).ToList(),
        }), "application/json");
    }

    public static async Task<IResult> RevokeAsync(DeviceRevocations devices, string? user, string? device, CancellationToken cancellationToken)
    {
        if ((BadId(user, "user") ?? (device is null ? null : BadId(device, "device"))) is { } bad)
        {
            return bad;
        }

        long at;
        try
        {
            at = await devices.RevokeAsync(user!, device, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is ChatBroker.Storage.StorageException or RouteUnavailableException)
        {
            return Results.Text($"revocation failed: {e.Message}\n", statusCode: StatusCodes.Status503ServiceUnavailable);
        }

        return Results.Bytes(JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object?>
        {
            ["user"] = user,
            ["device"] = device,
            ["revoked_at_ms"] = at,
        }), "application/json");
    }

    private static IResult? BadId(string? id, string name) =>
        id is null ? Results.Text($"missing query parameter {name}\n", statusCode: StatusCodes.Status400BadRequest)
        : ChatIds.Describe(id) is { } why ? Results.Text($"{name}: {why}\n", statusCode: StatusCodes.Status400BadRequest)
        : null;
}
