using Deque.AxeCore.Commons;
using Deque.AxeCore.Playwright;
using ChatBroker.Web.Tests.Infrastructure;

namespace ChatBroker.Web.Tests;

/// <summary>The web chat checked with axe-core (WCAG 2.x A and AA rules) on its sign-in page and in a conversation.</summary>
[Collection(BrowserCollection.Name)]
public sealed class AccessibilityTests(BrowserFixture browser)
{
    private static readonly AxeRunOptions WcagAa = new()
    {
        RunOnly = new RunOnlyOptions { Type = "tag", Values = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
    };

    [Fact]
    public async Task The_sign_in_page_and_a_conversation_have_no_axe_violations()
    {
        var (broker, web) = await WebChatBroker.StartAsync();
        await using var _ = broker;
        await using var alice = await ChatPage.OpenAsync(browser.Browser, web);
        await using var bob = await ChatPage.OpenAsync(browser.Browser, web);

        AssertClean("sign-in page", await alice.Page.RunAxe(WcagAa));

        await alice.SignInAsync(broker.Token("alice", "web"));
        await bob.SignInAsync(broker.Token("bob", "web"));
        await alice.OpenDirectChatAsync("bob");
        await alice.SendAsync("Is this readable?");
        await bob.OpenConversationAsync("alice");
        await bob.SendAsync("With a screen reader too.");
        await alice.ExpectMessageAsync("With a screen reader too.");
        await alice.ExpectTicksAsync("Is this readable?", "read");

        AssertClean("conversation", await alice.Page.RunAxe(WcagAa));
    }

    private static void AssertClean(string where, AxeResult result)
    {
        var violations = result.Violations.Select(v =>
            $"{v.Id} ({v.Impact}): {v.Help} at {string.Join(", ", v.Nodes.Select(n => string.Join(" ", n.Target)))}");
        Assert.True(result.Violations.Length == 0, $"{where}: " + string.Join("\n", violations));
        Assert.True(result.Passes.Length >= 10, $"{where}: axe checked only {result.Passes.Length} rules"); // it did run
    }
}
