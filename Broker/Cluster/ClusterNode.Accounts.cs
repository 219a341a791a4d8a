using ChatBroker.Broker.Cluster.Wire;
using ChatBroker.Broker.Messaging;
using ChatBroker.Cluster.Mesh;
using ChatBroker.Protocol.Messages;
using ChatBroker.Storage;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// Accounts across nodes (issue 18): a revocation reaches every member, which stores it and closes its sessions of
/// the device (so whichever node holds the session, and whichever node a later CONNECT reaches, refuses it); a
/// SETTINGS is applied at the user's home, which keeps the user's presence.
/// </summary>
public sealed partial class ClusterNode : IRevocationRouter, ISettingsRouter
{
    private DeviceRevocations? _revocations;
    private UserSettingsService? _settings;

    /// <summary>Lets revocation and settings route through this node (called once, before the node serves devices).</summary>
    public void UseAccounts(DeviceRevocations revocations, UserSettingsService settings)
    {
        _revocations = revocations ?? throw new ArgumentNullException(nameof(revocations));
        _settings = settings ?? throw new ArgumentNullException(nameof(settings));
        revocations.UseRouter(this);
        settings.UseRouter(this);
    }

    public async Task BroadcastRevocationAsync(string userId, string deviceId, long revokedAtMs, CancellationToken cancellationToken)
    {
        var s = State;
        var payload = new DeviceRevocation { User = userId, Device = deviceId, RevokedAtMs = revokedAtMs }.ToByteArray();
        var asks = new List<Task<byte[]>>();
        var nodes = new List<string>();
        foreach (var link in s?.Links ?? [])
        {
            nodes.Add(link.NodeId);
            asks.Add(ReadFromAsync(s, link.NodeId, ClusterOpKind.DeviceRevocation, payload, cancellationToken));
        }

        List<string>? missed = null;
        for (var i = 0; i < asks.Count; i++)
        {
            try
            {
                var reply = AccountResult.Parser.ParseFrom(await asks[i].ConfigureAwait(false));
                if (reply.Reason != 0)
                {
                    (missed ??= []).Add($"{nodes[i]} ({(ReasonCode)reply.Reason})");
                }
            }
            catch (RouteUnavailableException)
            {
                (missed ??= []).Add(nodes[i]);
            }
        }

        if (missed is not null)
        {
            // Stored here and on the others; repeating the revocation is harmless and reaches these too.
            throw new RouteUnavailableException($"the revocation is stored here, but node(s) {string.Join(", ", missed)} did not confirm it; repeat it");
        }
    }

    public async Task<UserSettingsService.Outcome> ApplyAtHomeAsync(string userId, Settings request, CancellationToken cancellationToken)
    {
        var s = State;
        var payload = new SettingsRequest { User = userId, Settings = request.ToByteString() }.ToByteArray();
        var reply = AccountResult.Parser.ParseFrom(await ReadFromAsync(s, s?.HomeOf(userId), ClusterOpKind.SettingsRequest, payload, cancellationToken).ConfigureAwait(false));
        return reply.Reason == 0
            ? new(ReasonCode.Success, null, SettingsResult.Parser.ParseFrom(reply.Result))
            : new((ReasonCode)reply.Reason, reply.Message, null);
    }

    private Task? HandleAccountOperation(MeshInboundBatch batch, int index, MeshInboundMessage message, CancellationToken cancellationToken)
    {
        if (_revocations is null || _settings is null)
        {
            batch.Reject(index, (uint)ReasonCode.ServerUnavailable);
            return null;
        }

        switch ((ClusterOpKind)message.Kind)
        {
            case ClusterOpKind.DeviceRevocation:
            {
                var revocation = DeviceRevocation.Parser.ParseFrom(message.Payload.Span);
                RequireIds(revocation.User, revocation.Device == DeviceRevocations.AllDevices ? "-" : revocation.Device);
                return RevokeForPeerAsync(batch, index, revocation, cancellationToken);
            }

            default:
            {
                var request = SettingsRequest.Parser.ParseFrom(message.Payload.Span);
                RequireIds(request.User, "-");
                return SettingsForGatewayAsync(batch, index, request.User, Settings.Parser.ParseFrom(request.Settings), cancellationToken);
            }
        }
    }

    private async Task RevokeForPeerAsync(MeshInboundBatch batch, int index, DeviceRevocation revocation, CancellationToken cancellationToken)
    {
        AccountResult answer;
        try
        {
            await _revocations!.ApplyAsync(revocation.User, revocation.Device, revocation.RevokedAtMs, cancellationToken).ConfigureAwait(false);
            answer = new AccountResult { Answered = true };
        }
        catch (StorageException e)
        {
            answer = new AccountResult { Answered = true, Reason = (uint)ReasonCode.ServerUnavailable, Message = e.Message };
        }

        batch.Reply(index, answer.ToByteArray());
    }

    private async Task SettingsForGatewayAsync(MeshInboundBatch batch, int index, string userId, Settings request, CancellationToken cancellationToken)
    {
        AccountResult answer;
        try
        {
            var outcome = await _settings!.ApplyHereAsync(userId, request, cancellationToken).ConfigureAwait(false);
            answer = outcome.Error == ReasonCode.Success
                ? new AccountResult { Answered = true, Result = outcome.Result!.ToByteString() }
                : new AccountResult { Answered = true, Reason = (uint)outcome.Error, Message = outcome.Message ?? "" };
        }
        catch (StorageException)
        {
            answer = new AccountResult { Answered = true, Reason = (uint)ReasonCode.ServerUnavailable, Message = "settings could not be stored; retry" };
        }

        batch.Reply(index, answer.ToByteArray());
    }
}
