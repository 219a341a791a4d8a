using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol;

/// <summary>What a client should do when it receives a reason code (docs/protocol.md, "Reason codes").</summary>
public enum ClientAction
{
    /// <summary>Success: nothing to do.</summary>
    None,

    /// <summary>The session is over by design (e.g. taken over by the same device elsewhere): do not reconnect automatically.</summary>
    StayDisconnected,

    /// <summary>Reconnect with exponential backoff (and jitter), honouring retry_after_ms; resume from the cursor.</summary>
    ReconnectWithBackoff,

    /// <summary>A client bug: log and report it; reconnect with a long backoff only, the same bytes will fail again.</summary>
    FixClient,

    /// <summary>Get a fresh token from the app backend, then reconnect.</summary>
    Reauthenticate,

    /// <summary>Do not retry; tell the user (e.g. device revoked). For request errors: the request failed, the session is fine.</summary>
    GiveUp,

    /// <summary>Retry the same request after retry_after_ms (session stays up).</summary>
    RetryRequest,
}

/// <summary>Classification of <see cref="ReasonCode"/> values.</summary>
public static class ReasonCodes
{
    /// <summary>Whether the sender closes the connection after sending this code.</summary>
    public static bool IsFatal(ReasonCode code) => (int)code switch
    {
        0 => false,
        >= 1 and <= 63 => true,
        _ => code is ReasonCode.SlowConsumer or ReasonCode.TooManyDevices,
    };

    /// <summary>What a client should do on receiving <paramref name="code"/>.</summary>
    public static ClientAction RecommendedAction(ReasonCode code) => code switch
    {
        ReasonCode.Success or ReasonCode.NormalDisconnect => ClientAction.None,
        ReasonCode.SessionTakenOver => ClientAction.StayDisconnected,
        ReasonCode.ServerShuttingDown or ReasonCode.KeepaliveTimeout or ReasonCode.SlowConsumer
            or ReasonCode.ServerBusy or ReasonCode.ServerUnavailable or ReasonCode.TooManyDevices
            => ClientAction.ReconnectWithBackoff,
        ReasonCode.MalformedLength or ReasonCode.FrameTooLarge or ReasonCode.UnknownPacketType
            or ReasonCode.InvalidFlags or ReasonCode.MalformedBody or ReasonCode.MissingField
            or ReasonCode.InvalidField or ReasonCode.ProtocolViolation or ReasonCode.UnsupportedVersion
            or ReasonCode.TruncatedFrame => ClientAction.FixClient,
        ReasonCode.BadToken or ReasonCode.TokenExpired or ReasonCode.IdentityMismatch => ClientAction.Reauthenticate,
        ReasonCode.DeviceRevoked or ReasonCode.NotAMember or ReasonCode.NotGroupAdmin
            or ReasonCode.ConversationNotFound or ReasonCode.UserNotFound or ReasonCode.GroupFull
            or ReasonCode.KeysNotFound or ReasonCode.BadRequest or ReasonCode.TooManySubscriptions => ClientAction.GiveUp,
        ReasonCode.RateLimited => ClientAction.RetryRequest,
        _ => ClientAction.ReconnectWithBackoff,
    };
}
