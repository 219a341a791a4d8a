using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol;

/// <summary>Where a connection is in its life.</summary>
public enum ConnectionState
{
    /// <summary>Server: no CONNECT yet. Client: CONNECT sent, no CONNACK yet.</summary>
    AwaitingConnect,

    /// <summary>CONNECT (server) or CONNACK (client) seen: every packet type of the peer's direction is allowed.</summary>
    Connected,

    /// <summary>DISCONNECT seen or a fatal error: nothing more is accepted.</summary>
    Closed,
}

/// <summary>Which end of the connection a <see cref="ProtocolStateMachine"/> guards.</summary>
public enum ProtocolRole
{
    /// <summary>Checks client-to-server packets (the broker).</summary>
    Server,

    /// <summary>Checks server-to-client packets (a client SDK).</summary>
    Client,
}

/// <summary>
/// Says which inbound packets are allowed when. One per connection; not thread-safe (a connection's
/// frames are read by one loop).
/// </summary>
/// <remarks>
/// <code>
///              CONNECT (server) / CONNACK (client)            DISCONNECT, or Close()
///  AwaitingConnect ------------------------------&gt; Connected ----------------------&gt; Closed
///        |   any other packet: PROTOCOL_VIOLATION      | a second CONNECT/CONNACK, or a packet  ^
///        +---------------------------------------------+ of the wrong direction:               |
///                                                        PROTOCOL_VIOLATION -------------------+
/// </code>
/// Any violation moves the machine to Closed: the caller sends the reason code (CONNACK before the
/// session exists, ERROR after) and closes the connection.
/// </remarks>
public sealed class ProtocolStateMachine
{
    private readonly PacketDirection _inbound;

    public ProtocolStateMachine(ProtocolRole role)
    {
        Role = role;
        _inbound = role == ProtocolRole.Server ? PacketDirection.ClientToServer : PacketDirection.ServerToClient;
    }

    public ProtocolRole Role { get; }

    public ConnectionState State { get; private set; }

    /// <summary>
    /// Checks an inbound packet against the current state and advances the state.
    /// </summary>
    /// <returns><see cref="ReasonCode.Success"/>, or <see cref="ReasonCode.ProtocolViolation"/> (the machine is then Closed).</returns>
    public ReasonCode OnReceived(PacketType type)
    {
        if (State == ConnectionState.Closed || (PacketTypes.Direction(type) & _inbound) == 0)
        {
            return Violation();
        }

        var opening = Role == ProtocolRole.Server ? PacketType.Connect : PacketType.Connack;
        if (State == ConnectionState.AwaitingConnect)
        {
            if (type != opening)
            {
                return Violation();
            }

            State = ConnectionState.Connected;
            return ReasonCode.Success;
        }

        if (type == opening)
        {
            return Violation();
        }

        if (type == PacketType.Disconnect)
        {
            State = ConnectionState.Closed;
        }

        return ReasonCode.Success;
    }

    /// <summary>Marks the connection closed (e.g. after sending a failed CONNACK or a DISCONNECT).</summary>
    public void Close() => State = ConnectionState.Closed;

    private ReasonCode Violation()
    {
        State = ConnectionState.Closed;
        return ReasonCode.ProtocolViolation;
    }
}
