using ChatBroker.Protocol.Messages;

namespace ChatBroker.Client;

/// <summary>The broker refused a connection or a request; <see cref="Reason"/> says why (docs/protocol.md §8).</summary>
public sealed class ChatClientException : Exception
{
    public ChatClientException()
    {
    }

    public ChatClientException(string message)
        : base(message)
    {
    }

    public ChatClientException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    public ChatClientException(ReasonCode reason, string? message, TimeSpan retryAfter = default)
        : base(string.IsNullOrEmpty(message) ? reason.ToString() : $"{reason}: {message}")
    {
        Reason = reason;
        ServerMessage = message;
        RetryAfter = retryAfter;
    }

    public ReasonCode Reason { get; }

    /// <summary>The broker's human-readable detail, if any.</summary>
    public string? ServerMessage { get; }

    /// <summary>The broker's retry_after_ms, if any.</summary>
    public TimeSpan RetryAfter { get; }
}
