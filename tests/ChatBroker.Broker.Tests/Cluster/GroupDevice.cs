using ChatBroker.Broker.Tests.Sessions;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Cluster;

/// <summary>
/// A device in the group tests: a <see cref="TestDevice"/> whose DELIVERs are kept aside while the test waits for
/// another answer (a group's SYSTEM message may arrive before the GROUP_RESULT that made it), and whose receipts
/// and presence frames are skipped.
/// </summary>
internal sealed class GroupDevice(TestDevice device, string user)
{
    private readonly Queue<Deliver> _delivers = new();

    public string User { get; } = user;

    public TestDevice Device { get; } = device;

    public static async Task<GroupDevice> ConnectAsync(ClusterTestNode node, string user, string device = "phone")
    {
        var connected = new GroupDevice(await node.ConnectAsync(user, device), user);
        await connected.ExpectAsync<SyncDone>();
        return connected;
    }

    public Task SendAsync(IMessage message) => Device.SendAsync(message);

    /// <summary>The next frame of type <typeparamref name="T"/>; DELIVERs before it are kept for <see cref="NextDeliverAsync"/>.</summary>
    public async Task<T> ExpectAsync<T>()
        where T : class, IMessage
    {
        while (true)
        {
            var message = await Device.ReceiveAsync();
            switch (message)
            {
                case T wanted:
                    return wanted;
                case Deliver deliver:
                    _delivers.Enqueue(deliver);
                    continue;
                case Receipt or Presence:
                    continue;
                default:
                    Assert.Fail($"{User} expected {typeof(T).Name}, got {message?.GetType().Name ?? "the end of the stream"}: {message}");
                    return null!;
            }
        }
    }

    public async Task<Deliver> NextDeliverAsync() => _delivers.TryDequeue(out var kept) ? kept : await ExpectAsync<Deliver>();

    /// <summary>The next DELIVERs of <paramref name="conversationId"/> until one has <paramref name="seq"/>; DELIVERs of
    /// other conversations in between fail the test.</summary>
    public async Task<List<Deliver>> DeliversThroughAsync(ulong conversationId, ulong seq)
    {
        var all = new List<Deliver>();
        while (true)
        {
            var deliver = await NextDeliverAsync();
            Assert.Equal(conversationId, deliver.ConversationId);
            all.Add(deliver);
            if (deliver.Seq == seq)
            {
                return all;
            }
        }
    }

    public async Task<GroupResult> GroupAsync(GroupRequest request)
    {
        await SendAsync(request);
        var result = await ExpectAsync<GroupResult>();
        Assert.Equal(request.RequestId, result.RequestId);
        return result;
    }

    public static Send ToGroup(ulong clientMsgId, ulong conversationId, string text) =>
        new() { ClientMsgId = clientMsgId, ConversationId = conversationId, Body = ByteString.CopyFromUtf8(text) };

    public static SystemEvent SystemEventOf(Deliver deliver)
    {
        Assert.Equal(ContentType.System, deliver.ContentType);
        return SystemEvent.Parser.ParseFrom(deliver.Body);
    }
}
