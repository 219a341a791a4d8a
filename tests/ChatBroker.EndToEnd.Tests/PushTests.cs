using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using ChatBroker.EndToEnd.Tests.Infrastructure;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ChatBroker.EndToEnd.Tests;

/// <summary>Push jobs for offline users: durable, retried with backoff, never carrying the message body.</summary>
public sealed class PushTests
{
    /// <summary>An operator's push gateway: records each POST; fails the first <c>failures</c> with 500.</summary>
    private sealed class FakeGateway : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private int _failuresLeft;

        private FakeGateway(WebApplication app, int failures)
        {
            _app = app;
            _failuresLeft = failures;
        }

        public ConcurrentQueue<string> Accepted { get; } = new();
        public int Attempts;
        public TaskCompletionSource<string> FirstAccepted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public string Url { get; private set; } = "";

        public static async Task<FakeGateway> StartAsync(int failures, int port = 0)
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, port));
            var app = builder.Build();
            var gateway = new FakeGateway(app, failures);
            app.MapPost("/push", async (HttpRequest request) =>
            {
                using var reader = new StreamReader(request.Body);
                var json = await reader.ReadToEndAsync();
                Interlocked.Increment(ref gateway.Attempts);
                if (Interlocked.Decrement(ref gateway._failuresLeft) >= 0)
                {
                    return Results.StatusCode(500);
                }

                gateway.Accepted.Enqueue(json);
                gateway.FirstAccepted.TrySetResult(json);
                return Results.Ok();
            });
            await app.StartAsync();
            var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            gateway.Url = address + "/push";
            return gateway;
        }

        public async ValueTask DisposeAsync() => await _app.DisposeAsync();
    }

    private static string[] WebhookArgs(string url) =>
    [
        "--set", "push.notifier=webhook", "--set", "push.webhook_url=" + url,
        "--set", "push.poll_interval=100ms", "--set", "push.max_backoff=1s",
    ];

    [Fact]
    public async Task A_message_for_an_offline_user_becomes_a_webhook_push_retried_until_accepted_without_the_body()
    {
        await using var gateway = await FakeGateway.StartAsync(failures: 2);
        await using var broker = await TestBroker.StartAsync(null, WebhookArgs(gateway.Url));
        await using var alice = await broker.LoginAsync("alice", "phone");

        await alice.SendAsync(new Send { ClientMsgId = 1, ToUserId = "bob", Body = ByteString.CopyFromUtf8("secret words") });
        var sent = await alice.ReceiveAsync<Sent>();
        var json = await gateway.FirstAccepted.Task.WaitAsync(TimeSpan.FromSeconds(30));

        using var doc = JsonDocument.Parse(json);
        Assert.Equal("bob", doc.RootElement.GetProperty("user_id").GetString());
        Assert.Equal(sent.ConversationId, doc.RootElement.GetProperty("conversation_id").GetUInt64());
        Assert.Equal(sent.Seq, doc.RootElement.GetProperty("seq").GetUInt64());
        Assert.Equal(3, doc.RootElement.GetProperty("attempt").GetInt32());
        Assert.DoesNotContain("secret", json, StringComparison.Ordinal);
        Assert.True(gateway.Attempts >= 3);
    }

    [Fact]
    public async Task No_push_is_made_for_a_user_who_is_online()
    {
        await using var gateway = await FakeGateway.StartAsync(failures: 0);
        await using var broker = await TestBroker.StartAsync(null, WebhookArgs(gateway.Url));
        await using var bob = await broker.LoginAsync("bob", "phone");
        await using var alice = await broker.LoginAsync("alice", "phone");

        await alice.SendAsync(new Send { ClientMsgId = 1, ToUserId = "bob", Body = ByteString.CopyFromUtf8("hi") });
        await bob.ReceiveAsync<Deliver>();
        // Then one for offline carol: when hers arrives, bob's would have arrived before it.
        await alice.SendAsync(new Send { ClientMsgId = 2, ToUserId = "carol", Body = ByteString.CopyFromUtf8("hi") });
        var json = await gateway.FirstAccepted.Task.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Contains("\"carol\"", json, StringComparison.Ordinal);
        Assert.Single(gateway.Accepted);
    }

    [Fact]
    public async Task A_push_job_survives_a_notifier_outage_and_a_broker_crash()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "chatbroker-push-" + Guid.NewGuid().ToString("N"));
        // Reserve a port for the gateway that is down at first.
        int port;
        using (var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        var url = $"http://127.0.0.1:{port}/push";
        try
        {
            await using (var broker = await TestBroker.StartAsync(dataDir, WebhookArgs(url)))
            {
                await using var alice = await broker.LoginAsync("alice", "phone");
                await alice.SendAsync(new Send { ClientMsgId = 1, ToUserId = "bob", Body = ByteString.CopyFromUtf8("hello") });
                await alice.ReceiveAsync<Sent>();
                await broker.Process.KillAsync();
            }

            await using var gateway = await FakeGateway.StartAsync(failures: 0, port);
            await using var restarted = await TestBroker.StartAsync(dataDir, WebhookArgs(url));
            var json = await gateway.FirstAccepted.Task.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Contains("\"bob\"", json, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
