using System.Collections.Concurrent;
using ChatBroker.Broker.Messaging;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Core;

/// <summary>An in-memory device link: records what the core tells it.</summary>
internal sealed class FakeDevice(string user, string device, ulong capabilities = (ulong)Capability.Receipts) : IDeviceLink
{
    public string UserId { get; } = user;
    public string DeviceId { get; } = device;
    public ulong Capabilities { get; } = capabilities;
    public ConcurrentQueue<(ulong InboxSeq, DeliveryMessage Message)> Inbox { get; } = new();
    public ConcurrentQueue<Receipt> Receipts { get; } = new();
    public (ReasonCode Reason, string Message)? ClosedWith { get; private set; }

    public void OnInboxAppended(ulong inboxSeq, DeliveryMessage message) => Inbox.Enqueue((inboxSeq, message));

    public ConcurrentQueue<(DeliveryMessage Message, bool Write)> GroupLog { get; } = new();

    public void OnGroupLogAppended(DeliveryMessage message, bool write) => GroupLog.Enqueue((message, write));

    public void OnReceipt(Receipt receipt) => Receipts.Enqueue(receipt);

    public ConcurrentQueue<IMessage> Notices { get; } = new();

    /// <summary>Called with each notice as it arrives, before it is queued (to look at other state at that moment).</summary>
    public Action<IMessage>? OnNoticeArrived { get; set; }

    public void OnNotice(IMessage packet)
    {
        OnNoticeArrived?.Invoke(packet);
        Notices.Enqueue(packet);
    }

    public void Close(ReasonCode reason, string message) => ClosedWith = (reason, message);
}
