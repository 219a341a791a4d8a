using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.EndToEnd.Tests.Cluster;

/// <summary>The packets and request/answer exchanges the cluster test classes share (raw protocol, bounded waits).</summary>
internal static class ClusterPackets
{
    public const ulong AllCapabilities = (ulong)(Capability.Receipts | Capability.Typing | Capability.Presence);

    public static Send Text(ulong clientMsgId, string to, string text) =>
        new() { ClientMsgId = clientMsgId, ToUserId = to, Body = ByteString.CopyFromUtf8(text) };

    public static Send ToGroup(ulong clientMsgId, ulong conversationId, string text) =>
        new() { ClientMsgId = clientMsgId, ConversationId = conversationId, Body = ByteString.CopyFromUtf8(text) };

    public static GroupRequest Create(ulong requestId, IEnumerable<string> members, string title = "team")
    {
        var create = new GroupCreate { Title = title };
        create.MemberUserIds.Add(members);
        return new GroupRequest { RequestId = requestId, Create = create };
    }

    public static GroupRequest Members(ulong requestId, ulong conversationId, bool add, params string[] users)
    {
        var m = new GroupMembers { ConversationId = conversationId };
        m.UserIds.Add(users);
        return add ? new GroupRequest { RequestId = requestId, AddMembers = m } : new GroupRequest { RequestId = requestId, RemoveMembers = m };
    }

    /// <summary>Writes many packets in one go (pipelined), as a phone flushing its outbox would.</summary>
    public static async Task SendManyAsync(RawDevice device, IEnumerable<IMessage> packets)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        foreach (var packet in packets)
        {
            FrameWriter.Write(buffer, packet);
        }

        await device.SendRawAsync(buffer.WrittenMemory);
    }

    /// <summary>The GROUP_RESULT, ERROR or HISTORY_PAGE answering <paramref name="request"/>, skipping anything else but
    /// DELIVERs, which stay for the next receives (a SYSTEM message may come before the result).</summary>
    public static async Task<IMessage> ReplyAsync(RawDevice device, IMessage request)
    {
        await device.SendAsync(request);
        return await ReceiveKeepingDeliversAsync<IMessage>(device, m => m is GroupResult or Error or HistoryPage);
    }

    /// <summary>The next SENT; DELIVERs that come first (other members' messages) stay for the next receives.</summary>
    public static async Task<Sent> SentAsync(RawDevice device) => (Sent)await ReceiveKeepingDeliversAsync<IMessage>(device, m => m is Sent);

    private static async Task<T> ReceiveKeepingDeliversAsync<T>(RawDevice device, Func<IMessage, bool> wanted)
        where T : class, IMessage
    {
        List<IMessage>? kept = null;
        while (true)
        {
            var message = await device.ReceiveAnyAsync() ?? throw new IOException("connection closed");
            if (wanted(message))
            {
                if (kept is not null)
                {
                    device.Return(kept);
                }

                return (T)message;
            }

            if (message is Deliver)
            {
                (kept ??= []).Add(message);
            }
        }
    }

    public static async Task<GroupResult> OkAsync(RawDevice device, GroupRequest request)
    {
        var reply = await ReplyAsync(device, request);
        return reply as GroupResult ?? throw new InvalidOperationException($"expected GROUP_RESULT, got {reply}");
    }

    public static async Task<Error> RefusedAsync(RawDevice device, IMessage request)
    {
        var reply = await ReplyAsync(device, request);
        return reply as Error ?? throw new InvalidOperationException($"expected ERROR, got {reply}");
    }

    /// <summary>Everything the device receives up to the PONG answering a PING sent now: the node handled every
    /// packet the device sent before, and nothing else was queued for it (a barrier, no sleep).</summary>
    public static async Task<List<IMessage>> DrainAsync(RawDevice device)
    {
        await device.SendAsync(new Ping());
        var seen = new List<IMessage>();
        while (true)
        {
            var message = await device.ReceiveAnyAsync() ?? throw new IOException("connection closed before PONG");
            if (message is Pong)
            {
                return seen;
            }

            seen.Add(message);
        }
    }

    /// <summary>The next DELIVER (skipping receipts, SYNC_DONE and the like).</summary>
    public static Task<Deliver> NextDeliverAsync(RawDevice device) => device.ReceiveAsync<Deliver>();

    /// <summary>The next packet of type <typeparamref name="T"/> that passes <paramref name="match"/>.</summary>
    public static async Task<T> NextAsync<T>(RawDevice device, Func<T, bool> match)
        where T : class, IMessage
    {
        while (true)
        {
            var message = await device.ReceiveAsync<T>();
            if (match(message))
            {
                return message;
            }
        }
    }

    public static SystemEvent.Types.Kind KindOf(Deliver d)
    {
        Assert.Equal(ContentType.System, d.ContentType);
        return SystemEvent.Parser.ParseFrom(d.Body).Kind;
    }
}
