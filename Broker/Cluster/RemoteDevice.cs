using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Cluster;

/// <summary>
/// A device connected at another node, as the core sees it when this node acts for it (a forwarded SEND on the
/// conversation's owner, an ACK on the user's home): it has a user and a device id and nothing can be pushed to
/// it here; its own node delivers to it.
/// </summary>
internal sealed class RemoteDevice(string userId, string deviceId) : IDeviceLink
{
    public string UserId { get; } = userId;

    public string DeviceId { get; } = deviceId;

    public ulong Capabilities => 0;

    public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message)
    {
    }

    public void OnGroupLogAppended(DeliveryMessage message, bool write)
    {
    }

    public void OnReceipt(Receipt receipt)
    {
    }

    public void OnNotice(IMessage packet)
    {
    }

    public void Close(ReasonCode reason, string message)
    {
    }
}
