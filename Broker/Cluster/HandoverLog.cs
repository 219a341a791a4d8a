using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Cluster;

/// <summary>The range hand-over's log messages (51xx).</summary>
internal static partial class HandoverLog
{
    [LoggerMessage(5100, LogLevel.Information, "Hand-over of map epoch {Epoch}: node {Node} is {State}; moving its ranges (attempt {Attempt})")]
    public static partial void Started(ILogger logger, long epoch, string node, string state, int attempt);

    [LoggerMessage(5101, LogLevel.Information, "Hand-over of map epoch {Epoch} done in {Milliseconds} ms: {Outcome}")]
    public static partial void Completed(ILogger logger, long epoch, long milliseconds, string outcome);

    [LoggerMessage(5102, LogLevel.Warning, "Hand-over of map epoch {Epoch} failed: {Reason}")]
    public static partial void Failed(ILogger logger, long epoch, string reason);

    [LoggerMessage(5103, LogLevel.Warning, "Hand-over of node {Node} aborted: {Outcome}")]
    public static partial void Aborted(ILogger logger, string node, string outcome);

    [LoggerMessage(5104, LogLevel.Information, "Hand-over step {Step} of map epoch {Epoch} done here: {Records} records exported")]
    public static partial void StepDone(ILogger logger, uint step, long epoch, ulong records);
}
