using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace ChatBroker.Web.Tests.Infrastructure;

/// <summary>
/// One person at the web chat: a browser context of its own (its own cookies, storage and connections) with one
/// page. Steps go through the page as a person would, by label and role; checks wait on the page (Playwright's
/// expectations retry until they hold or time out), never on sleeps.
/// </summary>
public sealed partial class ChatPage : IAsyncDisposable
{
    private static int _pages;
    private readonly IBrowserContext _context;
    private readonly string _name;
    private readonly List<string> _console = [];

    private ChatPage(IBrowserContext context, IPage page, IResponse? firstResponse, string name)
    {
        _context = context;
        _name = name;
        Page = page;
        FirstResponse = firstResponse;
        page.Console += (_, message) =>
        {
            lock (_console)
            {
                _console.Add($"{message.Type}: {message.Text}");
            }
        };
        page.PageError += (_, error) =>
        {
            lock (_console)
            {
                _console.Add("pageerror: " + error);
            }
        };
    }

    static ChatPage() => SetDefaultExpectTimeout(20_000);

    public IPage Page { get; }

    /// <summary>The response of the page load (its TLS details tell which certificate the browser got).</summary>
    public IResponse? FirstResponse { get; }

    /// <summary>Console messages and uncaught errors of the page, for failure messages.</summary>
    public string ConsoleText
    {
        get
        {
            lock (_console)
            {
                return string.Join('\n', _console);
            }
        }
    }

    /// <summary>Opens the page in a new context; its last state is kept as a screenshot named after the test (<paramref name="test"/>) when it is disposed.</summary>
    public static async Task<ChatPage> OpenAsync(IBrowser browser, Uri url, bool ignoreHttpsErrors = false, [CallerMemberName] string test = "")
    {
        if (!url.IsLoopback)
        {
            throw new ArgumentException("the browser tests load only 127.0.0.1/localhost pages", nameof(url));
        }

        var context = await browser.NewContextAsync(new BrowserNewContextOptions
        {
            IgnoreHTTPSErrors = ignoreHttpsErrors,
            ViewportSize = new ViewportSize { Width = 1000, Height = 640 },
            Locale = "en-GB",
            TimezoneId = "UTC",
        });
        var page = await context.NewPageAsync();
        var response = await page.GotoAsync(url.ToString());
        return new ChatPage(context, page, response, $"{test}-page{Interlocked.Increment(ref _pages)}");
    }

    public ILocator Connection => Page.Locator("#connection");
    public ILocator ConversationInfo => Page.Locator("#conversation-info");
    public ILocator Typing => Page.Locator("#typing");
    public ILocator Messages => Page.Locator("#messages > li");

    public ILocator Conversation(string title) => Page.Locator("#conversations > li", new PageLocatorOptions { HasText = title });

    public ILocator Message(string text) => Page.Locator("#messages > li", new PageLocatorOptions { Has = Page.Locator(".text", new PageLocatorOptions { HasTextRegex = new Regex("^" + Regex.Escape(text) + "$") }) });

    public async Task SignInAsync(string token)
    {
        await Page.GetByLabel("Device token", new PageGetByLabelOptions { Exact = true }).FillAsync(token);
        await Page.GetByRole(AriaRole.Button, new PageGetByRoleOptions { Name = "Sign in" }).ClickAsync();
        await Expect(Connection).ToHaveTextAsync(ConnectedText());
    }

    public async Task OpenDirectChatAsync(string user)
    {
        await Page.GetByLabel("Chat with user").FillAsync(user);
        await Page.GetByRole(AriaRole.Button, new PageGetByRoleOptions { Name = "Open chat" }).ClickAsync();
        await Expect(Page.Locator("#conversation-title")).ToHaveTextAsync(user);
    }

    public async Task CreateGroupAsync(string title, params string[] members)
    {
        await Page.GetByText("New group").ClickAsync();
        await Page.GetByLabel("Group name").FillAsync(title);
        await Page.GetByLabel("Members (user ids, comma-separated)").FillAsync(string.Join(", ", members));
        await Page.GetByRole(AriaRole.Button, new PageGetByRoleOptions { Name = "Create group" }).ClickAsync();
        await Expect(Page.Locator("#conversation-title")).ToHaveTextAsync(title);
    }

    public async Task OpenConversationAsync(string title)
    {
        await Conversation(title).GetByRole(AriaRole.Button).ClickAsync();
        await Expect(Page.Locator("#conversation-title")).ToHaveTextAsync(title);
    }

    /// <summary>Types as a person does (key by key, so the page sends TYPING) without sending.</summary>
    public Task TypeAsync(string text) =>
        Page.GetByLabel("Message", new PageGetByLabelOptions { Exact = true }).PressSequentiallyAsync(text);

    public async Task SendAsync(string text)
    {
        await Page.GetByLabel("Message", new PageGetByLabelOptions { Exact = true }).FillAsync(text);
        await Page.GetByRole(AriaRole.Button, new PageGetByRoleOptions { Name = "Send", Exact = true }).ClickAsync();
        await Expect(Message(text)).ToHaveCountAsync(1);
    }

    public Task ClickSendAsync() => Page.GetByRole(AriaRole.Button, new PageGetByRoleOptions { Name = "Send", Exact = true }).ClickAsync();

    /// <summary>Waits until the ticks of one of this person's messages say <paramref name="status"/> (pending, sent, delivered, read).</summary>
    public Task ExpectTicksAsync(string text, string status) =>
        Expect(Message(text).Locator(".ticks")).ToHaveAttributeAsync("data-status", status);

    public Task ExpectMessageAsync(string text) => Expect(Message(text)).ToHaveCountAsync(1);

    public Task ScreenshotAsync(string name) =>
        Page.ScreenshotAsync(new PageScreenshotOptions { Path = Artifacts.PathFor(name), FullPage = true });

    public async ValueTask DisposeAsync()
    {
        try
        {
            // The last state of every page, also (above all) of a failed test; its console beside it.
            await ScreenshotAsync(_name + "-last.png");
            await File.WriteAllTextAsync(Artifacts.PathFor(_name + "-console.txt"), ConsoleText);
        }
        catch (PlaywrightException)
        {
        }

        await _context.CloseAsync();
    }

    [GeneratedRegex("^Connected as ")]
    private static partial Regex ConnectedText();
}
