namespace ChatBroker.Protocol;

/// <summary>Who may send a packet type.</summary>
[Flags]
public enum PacketDirection
{
    None = 0,
    ClientToServer = 1,
    ServerToClient = 2,
    Both = ClientToServer | ServerToClient,
}
