using Microsoft.Playwright;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace ChatBroker.Web.Tests.Infrastructure;

/// <summary>
/// One headless Chromium for the whole run: Debian's chromium-headless-shell (scripts/ensure-test-deps.sh installs
/// it), found by CHROMIUM_PATH or at its Debian path. Playwright's own browser download is never used (it would
/// fetch from a CDN). Chromium's background lookups (update checks, safe browsing) resolve to nothing: only
/// localhost and 127.0.0.1 resolve, and test.sh also runs this project with loopback-only networking.
/// </summary>
public sealed class BrowserFixture : IAsyncLifetime
{
    public const string DebianChromium = "/usr/lib/chromium/chromium-headless-shell";

    private IPlaywright? _playwright;

    public IBrowser Browser { get; private set; } = null!;

    public static string ExecutablePath =>
        Environment.GetEnvironmentVariable("CHROMIUM_PATH") is { Length: > 0 } path ? path : DebianChromium;

    public async Task InitializeAsync()
    {
        if (!File.Exists(ExecutablePath))
        {
            throw new InvalidOperationException(
                $"Chromium is not at {ExecutablePath}. Install Debian's with 'apt-get install -y --no-install-recommends chromium-headless-shell fonts-dejavu-core' " +
                "(scripts/ensure-test-deps.sh does) or set CHROMIUM_PATH.");
        }

        _playwright = await Playwright.CreateAsync();
        Browser = await _playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = ExecutablePath,
            Headless = true,
            Args = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"],
        });
    }

    public async Task DisposeAsync()
    {
        if (Browser is not null)
        {
            await Browser.CloseAsync();
        }

        _playwright?.Dispose();
    }
}

[CollectionDefinition(Name)]
public sealed class BrowserCollection : ICollectionFixture<BrowserFixture>
{
    public const string Name = "browser";
}
