using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Broker.Tests.Sessions;

/// <summary>Issue 18, doc defects: behaviours docs/protocol.md now states, pinned on the real session.</summary>
public sealed class DocumentedSessionBehaviourTests
{
    private static async Task<T> NextAsync<T>(TestDevice device)
        where T : class, IMessage
    {
        while (true)
        {
            var message = await device.ReceiveAsync() ?? throw new IOException($"the connection ended before a {typeof(T).Name}");
            if (message is T wanted)
            {
                return wanted;
            }
        }
    }

    [Fact]
    public async Task History_pages_backward_only_with_a_default_of_50_and_a_cap_of_200()
    {
        await using var harness = new SessionHarness();
        var alice = await harness.ConnectAsync("alice", "phone");
        ulong conversation = 0;
        for (ulong i = 1; i <= 260; i++)
        {
            await alice.SendAsync(TestDevice.Text(i, "bob", "m" + i));
            conversation = (await NextAsync<Sent>(alice)).ConversationId;
        }

        await alice.SendAsync(new History { RequestId = 1, ConversationId = conversation });
        var page = await NextAsync<HistoryPage>(alice);
        Assert.Equal(50, page.Messages.Count);
        Assert.Equal((211UL, 260UL, true), (page.Messages[0].Seq, page.Messages[^1].Seq, page.More));

        await alice.SendAsync(new History { RequestId = 2, ConversationId = conversation, BeforeSeq = 211, Limit = 1000 });
        page = await NextAsync<HistoryPage>(alice);
        Assert.Equal(200, page.Messages.Count);
        Assert.Equal((11UL, 210UL, true), (page.Messages[0].Seq, page.Messages[^1].Seq, page.More));

        await alice.SendAsync(new History { RequestId = 3, ConversationId = conversation, BeforeSeq = 11, Limit = 1000 });
        page = await NextAsync<HistoryPage>(alice);
        Assert.Equal((10, false), (page.Messages.Count, page.More));
    }

    [Fact]
    public async Task The_MEDIA_capability_changes_nothing_media_reaches_every_device()
    {
        await using var harness = new SessionHarness();
        var bob = await harness.ConnectAsync("bob", "phone"); // capabilities: RECEIPTS only, no MEDIA
        var alice = await harness.ConnectAsync("alice", "phone");
        await alice.SendAsync(new Send
        {
            ClientMsgId = 1,
            ToUserId = "bob",
            ContentType = ContentType.Image,
            Body = ByteString.CopyFromUtf8("caption"),
            Media = new MediaRef { MediaId = "m-1", MimeType = "image/jpeg", SizeBytes = 1234 },
        });
        await NextAsync<Sent>(alice);

        var deliver = await NextAsync<Deliver>(bob);
        Assert.Equal(("m-1", "image/jpeg", 1234UL), (deliver.Media.MediaId, deliver.Media.MimeType, deliver.Media.SizeBytes));
    }
}
