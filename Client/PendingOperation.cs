using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Client;

/// <summary>
/// A request that waits for its answer and is re-sent on every new connection until answered. Written only
/// by the writer loop (<see cref="Generation"/>, <see cref="Transmitted"/>), so those need no lock.
/// </summary>
internal abstract class PendingOperation(ulong id, IMessage message)
{
    public ulong Id { get; } = id;

    public IMessage Message { get; } = message;

    /// <summary>The connection generation it was last written on (0 = never).</summary>
    public int Generation { get; set; }

    /// <summary>Written at least once: a resend carries DUP.</summary>
    public bool Transmitted { get; set; }

    public abstract bool IsDone { get; }
}

internal sealed class PendingSend(Send send) : PendingOperation(send.ClientMsgId, send)
{
    private readonly TaskCompletionSource<SentResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task<SentResult> Task => _completion.Task;

    public override bool IsDone => _completion.Task.IsCompleted;

    public bool TryComplete(in SentResult result) => _completion.TrySetResult(result);

    public bool TryFail(Exception error) => _completion.TrySetException(error);

    public bool TryCancel(CancellationToken token) => _completion.TrySetCanceled(token);
}

internal sealed class PendingHistory(History request) : PendingOperation(request.RequestId, request)
{
    private readonly TaskCompletionSource<HistoryResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task<HistoryResult> Task => _completion.Task;

    public override bool IsDone => _completion.Task.IsCompleted;

    public bool TryComplete(HistoryResult result) => _completion.TrySetResult(result);

    public bool TryFail(Exception error) => _completion.TrySetException(error);

    public bool TryCancel(CancellationToken token) => _completion.TrySetCanceled(token);
}

internal sealed class PendingSettings(Settings request) : PendingOperation(request.RequestId, request)
{
    private readonly TaskCompletionSource<SettingsResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task<SettingsResult> Task => _completion.Task;

    public override bool IsDone => _completion.Task.IsCompleted;

    public bool TryComplete(SettingsResult result) => _completion.TrySetResult(result);

    public bool TryFail(Exception error) => _completion.TrySetException(error);

    public bool TryCancel(CancellationToken token) => _completion.TrySetCanceled(token);
}

internal enum OutboundKind
{
    Message,
    Pending,
    Ack,
    Disconnect,

    /// <summary>The send gate's delay is over: re-send what it held (see ChatClient.HoldSends).</summary>
    SendGate,
}

/// <summary>One entry of the client's outbound queue, drained by the current connection's writer loop.</summary>
internal readonly record struct Outbound(OutboundKind Kind, IMessage? Message, PendingOperation? Pending, bool Force, int Generation)
{
    public static Outbound Of(IMessage message) => new(OutboundKind.Message, message, null, false, 0);

    public static Outbound Of(PendingOperation pending, bool force = false) => new(OutboundKind.Pending, null, pending, force, 0);
}
