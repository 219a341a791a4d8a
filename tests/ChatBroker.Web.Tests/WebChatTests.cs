using System.Text;
using System.Text.RegularExpressions;
using ChatBroker.Client;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Web.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace ChatBroker.Web.Tests;

/// <summary>The web chat (web.enabled) in a real browser against the real broker process, over ws://.</summary>
[Collection(BrowserCollection.Name)]
public sealed class WebChatTests(BrowserFixture browser)
{
    private static readonly TimeSpan Timeout = WebChatBroker.Timeout;

    private static ChatClient SdkClient(TestBroker broker, string user, string device) => new(new ChatClientOptions
    {
        EndPoint = broker.Process.TcpEndPoint,
        UserId = user,
        DeviceId = device,
        TokenProvider = _ => ValueTask.FromResult(broker.Token(user, device)),
        Reconnect = new ReconnectPolicy { InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(500) },
    });

    private static async Task<ReceivedMessage> NextAsync(ChatClient client) =>
        await client.Messages.ReadAsync().AsTask().WaitAsync(Timeout);

    [Fact]
    public async Task Two_browsers_chat_one_to_one_with_ticks_typing_and_presence()
    {
        var (broker, web) = await WebChatBroker.StartAsync();
        await using var _ = broker;
        await using var alice = await ChatPage.OpenAsync(browser.Browser, web);
        var bob = await ChatPage.OpenAsync(browser.Browser, web);
        try
        {
            await alice.SignInAsync(broker.Token("alice", "web"));
            await bob.SignInAsync(broker.Token("bob", "web"));

            // alice opens a chat with bob by user id; once it exists, she sees that bob is online.
            await alice.OpenDirectChatAsync("bob");
            await alice.SendAsync("Hi Bob, lunch at noon?");
            await Expect(alice.ConversationInfo).ToHaveTextAsync("online");

            // Sent, then delivered (bob's page acknowledged it), then read once bob opens the chat.
            await Expect(bob.Conversation("alice").Locator(".badge")).ToHaveAttributeAsync("aria-label", "1 unread");
            await alice.ExpectTicksAsync("Hi Bob, lunch at noon?", "delivered");
            await bob.OpenConversationAsync("alice");
            await bob.ExpectMessageAsync("Hi Bob, lunch at noon?");
            await alice.ExpectTicksAsync("Hi Bob, lunch at noon?", "read");

            // bob types: alice sees it; his message ends it, and alice has the chat open, so it is read at once.
            await bob.TypeAsync("Sure");
            await Expect(alice.Typing).ToHaveTextAsync("bob is typing…");
            await bob.TypeAsync(", see you there!");
            await bob.ClickSendAsync();
            await alice.ExpectMessageAsync("Sure, see you there!");
            await Expect(alice.Typing).ToHaveTextAsync("");
            await bob.ExpectTicksAsync("Sure, see you there!", "read");

            await alice.SendAsync("Great, see you!");
            await alice.ExpectTicksAsync("Great, see you!", "read");
            await Expect(alice.Messages).ToHaveCountAsync(3);
            await Expect(bob.Messages).ToHaveCountAsync(3);
            await alice.ScreenshotAsync("one-to-one-alice.png");
            await bob.ScreenshotAsync("one-to-one-bob.png");
        }
        finally
        {
            await bob.DisposeAsync();
        }

        // bob's browser went away: alice sees him offline, with when he was last seen.
        await Expect(alice.ConversationInfo).ToHaveTextAsync(new Regex("^(last seen|offline)"));
        await Expect(alice.Conversation("bob")).ToContainTextAsync(new Regex("last seen|offline"));

        // A reload signs in again from the tab's session and rebuilds the conversations from the inbox.
        await alice.Page.ReloadAsync();
        await Expect(alice.Connection).ToHaveTextAsync(new Regex("^Connected as alice"));
        await alice.OpenConversationAsync("bob");
        await Expect(alice.Messages.Locator(".text")).ToHaveTextAsync(["Hi Bob, lunch at noon?", "Sure, see you there!", "Great, see you!"]);
    }

    [Fact]
    public async Task A_group_chat_between_two_browsers_and_an_sdk_device()
    {
        var (broker, web) = await WebChatBroker.StartAsync();
        await using var _ = broker;
        await using var alice = await ChatPage.OpenAsync(browser.Browser, web);
        await using var bob = await ChatPage.OpenAsync(browser.Browser, web);
        await using var carol = SdkClient(broker, "carol", "phone");
        await carol.ConnectAsync();
        await alice.SignInAsync(broker.Token("alice", "web"));
        await bob.SignInAsync(broker.Token("bob", "web"));

        await alice.CreateGroupAsync("Weekend trip", "bob", "carol");
        await alice.ExpectMessageAsync("You created “Weekend trip” with bob, carol");
        await Expect(alice.ConversationInfo).ToContainTextAsync("bob (online)");
        await Expect(bob.Conversation("Weekend trip")).ToHaveCountAsync(1);
        await Expect(bob.Conversation("Weekend trip")).ToContainTextAsync("3 members");

        await alice.SendAsync("Who brings the tent?");
        var created = await NextAsync(carol); // the group's first message: GROUP_CREATED
        Assert.Equal(Protocol.Messages.ContentType.System, created.ContentType);
        var question = await NextAsync(carol);
        Assert.Equal("Who brings the tent?", Encoding.UTF8.GetString(question.Body.Span));
        Assert.Equal("alice", question.SenderUserId);

        await carol.SendAsync(question.ConversationId, Encoding.UTF8.GetBytes("I do!"));
        await alice.ExpectMessageAsync("I do!");
        await Expect(alice.Message("I do!").Locator(".sender")).ToHaveTextAsync("carol");

        await bob.OpenConversationAsync("Weekend trip");
        await bob.ExpectMessageAsync("Who brings the tent?");
        await bob.ExpectMessageAsync("I do!");
        await alice.ExpectTicksAsync("Who brings the tent?", "read");
        await bob.SendAsync("I bring the food");
        await alice.ExpectMessageAsync("I bring the food");
        var food = await NextAsync(carol);
        Assert.Equal("I bring the food", Encoding.UTF8.GetString(food.Body.Span));
        Assert.Equal("bob", food.SenderUserId);

        // Typing in a group names who types; the picture of this moment is docs/web-chat.png.
        await bob.TypeAsync("and the stove");
        await Expect(alice.Typing).ToHaveTextAsync("bob is typing…");
        await alice.ScreenshotAsync("group-alice.png");
    }

    [Fact]
    public async Task The_page_reconnects_and_resumes_after_the_network_drops()
    {
        var (broker, web) = await WebChatBroker.StartAsync();
        await using var _ = broker;
        await using var relay = new TcpRelay(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, web.Port));
        await using var alice = await ChatPage.OpenAsync(browser.Browser, new Uri($"http://127.0.0.1:{relay.EndPoint.Port}/"));
        await using var bob = SdkClient(broker, "bob", "phone");
        await bob.ConnectAsync();
        await alice.SignInAsync(broker.Token("alice", "web"));
        await alice.OpenDirectChatAsync("bob");
        await alice.SendAsync("before the drop");
        var first = await NextAsync(bob);
        Assert.Equal("before the drop", Encoding.UTF8.GetString(first.Body.Span));

        relay.Cut();
        await Expect(alice.Page.Locator("body")).ToHaveAttributeAsync("data-connection", "reconnecting");
        await relay.Refused.WaitAsync(Timeout); // the page tried again and met the dead network

        // While alice is offline: bob's messages wait in her inbox, hers waits in the page.
        await bob.SendAsync("alice", Encoding.UTF8.GetBytes("while you were away 1"));
        await bob.SendAsync("alice", Encoding.UTF8.GetBytes("while you were away 2"));
        await alice.Page.GetByLabel("Message", new() { Exact = true }).FillAsync("written offline");
        await alice.ClickSendAsync();
        await alice.ExpectTicksAsync("written offline", "pending");
        await alice.ScreenshotAsync("offline-alice.png");

        relay.Restore();
        await Expect(alice.Page.Locator("body")).ToHaveAttributeAsync("data-connection", "connected");
        await Expect(alice.Page.Locator("body")).ToHaveAttributeAsync("data-connections", new Regex("^[2-9]"));
        await alice.ExpectMessageAsync("while you were away 1");
        await alice.ExpectMessageAsync("while you were away 2");
        await alice.ExpectTicksAsync("written offline", "delivered");
        await Expect(alice.Messages.Locator(".text")).ToHaveTextAsync(["before the drop", "while you were away 1", "while you were away 2", "written offline"]);

        var resent = await NextAsync(bob);
        Assert.Equal("written offline", Encoding.UTF8.GetString(resent.Body.Span));
        Assert.Equal(first.Seq + 3, resent.Seq);
        Assert.False(bob.Messages.TryRead(out var extra), $"bob got a duplicate: seq {extra?.Seq}");
        await alice.ScreenshotAsync("resumed-alice.png");
    }

    [Fact]
    public async Task A_message_whose_sent_was_lost_with_the_connection_is_shown_once_after_the_reconnect()
    {
        var (broker, web) = await WebChatBroker.StartAsync();
        await using var _ = broker;
        await using var relay = new TcpRelay(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, web.Port));
        await using var alice = await ChatPage.OpenAsync(browser.Browser, new Uri($"http://127.0.0.1:{relay.EndPoint.Port}/"));
        await using var bob = SdkClient(broker, "bob", "phone");
        await bob.ConnectAsync();
        await alice.SignInAsync(broker.Token("alice", "web"));
        await alice.OpenDirectChatAsync("bob");
        await alice.SendAsync("first");
        await alice.ExpectTicksAsync("first", "delivered");
        Assert.Equal("first", Encoding.UTF8.GetString((await NextAsync(bob)).Body.Span));

        // The broker stores the message and answers SENT, but nothing it sends reaches the page any more.
        relay.DropFromServer();
        await alice.SendAsync("its SENT is lost");
        Assert.Equal("its SENT is lost", Encoding.UTF8.GetString((await NextAsync(bob)).Body.Span));
        await alice.ExpectTicksAsync("its SENT is lost", "pending");

        // The connection drops; the page reconnects from inbox position 0, so the broker gives it its own stored
        // messages, this one too, while the page re-sends it (same client_msg_id): one message, not two.
        relay.Cut();
        await Expect(alice.Page.Locator("body")).ToHaveAttributeAsync("data-connection", "reconnecting");
        relay.Restore();
        await Expect(alice.Page.Locator("body")).ToHaveAttributeAsync("data-connection", "connected");
        await Expect(alice.Message("its SENT is lost").Locator(".ticks")).ToHaveAttributeAsync("data-status", new Regex("^(sent|delivered)$"));
        await alice.SendAsync("after");
        Assert.Equal("after", Encoding.UTF8.GetString((await NextAsync(bob)).Body.Span));
        await alice.ExpectTicksAsync("after", "delivered");
        await alice.ExpectTicksAsync("its SENT is lost", "delivered"); // bob's receipt covers it (up to seq)
        await Expect(alice.Messages.Locator(".text")).ToHaveTextAsync(["first", "its SENT is lost", "after"]);
        Assert.False(bob.Messages.TryRead(out var extra), $"bob got a duplicate: seq {extra?.Seq}");
    }
}
