using System.Net.Http.Json;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Hosting;
using ChatBroker.Broker.Observability;
using ChatBroker.Storage;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Push;

/// <summary>Hands one push job to the operator's push system. Throws when it was not accepted.</summary>
public interface IPushNotifier
{
    Task NotifyAsync(PushJob job, CancellationToken cancellationToken);
}

/// <summary><c>push.notifier = "log"</c>: one log line per job (never the message body: the broker never has it in clear).</summary>
internal sealed class LogPushNotifier(ILogger<LogPushNotifier> logger) : IPushNotifier
{
    public Task NotifyAsync(PushJob job, CancellationToken cancellationToken)
    {
        Log.PushLogged(logger, job.Id, job.UserId, job.ConversationId, job.Seq);
        return Task.CompletedTask;
    }
}

/// <summary>
/// <c>push.notifier = "webhook"</c>: POSTs
/// <c>{"job_id":…,"user_id":"…","conversation_id":…,"seq":…,"created_ms":…,"attempt":…}</c> as JSON to
/// <c>push.webhook_url</c>. Any 2xx answer completes the job; anything else, or no answer within
/// <c>push.webhook_timeout</c>, is retried with backoff. No body, sender or content is sent.
/// </summary>
internal sealed class WebhookPushNotifier(HttpClient http, PushOptions options) : IPushNotifier
{
    public async Task NotifyAsync(PushJob job, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.WebhookTimeout);
        using var response = await http.PostAsJsonAsync(options.WebhookUrl, new WebhookPayload(
            job.Id, job.UserId, job.ConversationId, job.Seq, job.CreatedAtMs, job.Attempts + 1), timeout.Token).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            throw new HttpRequestException($"push webhook answered {(int)response.StatusCode} {response.ReasonPhrase}");
        }
    }

    private sealed record WebhookPayload(
        [property: System.Text.Json.Serialization.JsonPropertyName("job_id")] ulong JobId,
        [property: System.Text.Json.Serialization.JsonPropertyName("user_id")] string UserId,
        [property: System.Text.Json.Serialization.JsonPropertyName("conversation_id")] ulong ConversationId,
        [property: System.Text.Json.Serialization.JsonPropertyName("seq")] ulong Seq,
        [property: System.Text.Json.Serialization.JsonPropertyName("created_ms")] long CreatedMs,
        [property: System.Text.Json.Serialization.JsonPropertyName("attempt")] int Attempt);
}

/// <summary>
/// Drains durable push jobs into the notifier. Jobs are written in the same batch as the message they are
/// about, so a job exists whenever its message does; a job is deleted only after the notifier accepted it.
/// A failed job is rescheduled with exponential backoff (1 s doubling to <c>push.max_backoff</c>, with
/// jitter), so a notifier outage delays pushes but loses none, across restarts too.
/// </summary>
internal sealed class PushDispatcher(
    IChatStore store,
    IPushNotifier notifier,
    PushOptions options,
    BrokerMetrics metrics,
    TimeProvider clock,
    ILogger<PushDispatcher> logger) : BackgroundService
{
    private const int BatchSize = 256;
    private const int Parallelism = 16;
    private readonly SemaphoreSlim _wake = new(0, 1);

    /// <summary>New jobs were stored: look now rather than at the next poll.</summary>
    public void Wake()
    {
        try
        {
            if (_wake.CurrentCount == 0)
            {
                _wake.Release();
            }
        }
        catch (SemaphoreFullException)
        {
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            int handled;
            try
            {
                handled = await DispatchDueAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (StorageException e) when (e.Failure == StorageFailure.Closed)
            {
                return; // the store closed under a shutdown: nothing is left to dispatch
            }
            catch (StorageException e)
            {
                Log.PushDispatcherFailed(logger, e);
                handled = 0;
            }

            if (handled < BatchSize)
            {
                try
                {
                    await _wake.WaitAsync(options.PollInterval, stoppingToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>One pass over the due jobs; returns how many were due.</summary>
    internal async Task<int> DispatchDueAsync(CancellationToken cancellationToken)
    {
        var now = clock.GetUtcNow().ToUnixTimeMilliseconds();
        var jobs = store.ListDuePushJobs(now, BatchSize);
        await Parallel.ForEachAsync(jobs, new ParallelOptions { MaxDegreeOfParallelism = Parallelism, CancellationToken = cancellationToken },
            async (job, ct) =>
            {
                try
                {
                    await notifier.NotifyAsync(job, ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
                {
                    var delay = Backoff(job.Attempts);
                    Log.PushFailed(logger, job.Id, job.UserId, job.Attempts + 1, delay, e.Message);
                    metrics.PushJobs.Add(1, new KeyValuePair<string, object?>("outcome", "retry"));
                    await store.ReschedulePushJobAsync(job.Id, clock.GetUtcNow().Add(delay).ToUnixTimeMilliseconds(), ct).ConfigureAwait(false);
                    return;
                }

                await store.CompletePushJobAsync(job.Id, ct).ConfigureAwait(false);
                metrics.PushJobs.Add(1, new KeyValuePair<string, object?>("outcome", "sent"));
            }).ConfigureAwait(false);
        return jobs.Count;
    }

    internal TimeSpan Backoff(int attempts)
    {
        var seconds = Math.Min(options.MaxBackoff.TotalSeconds, Math.Pow(2, Math.Min(attempts, 30)));
        // ±20 % jitter, so jobs that failed together do not retry in lockstep.
        return TimeSpan.FromSeconds(seconds * (0.8 + (Random.Shared.NextDouble() * 0.4)));
    }

    public override void Dispose()
    {
        _wake.Dispose();
        base.Dispose();
    }
}
