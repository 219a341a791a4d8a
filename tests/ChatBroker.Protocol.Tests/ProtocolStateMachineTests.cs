using ChatBroker.Protocol.Messages;

namespace ChatBroker.Protocol.Tests;

public class ProtocolStateMachineTests
{
    [Fact]
    public void Server_accepts_only_connect_first()
    {
        foreach (var type in PacketTypes.All)
        {
            var machine = new ProtocolStateMachine(ProtocolRole.Server);
            var result = machine.OnReceived(type);
            Assert.Equal(type == PacketType.Connect ? ReasonCode.Success : ReasonCode.ProtocolViolation, result);
            Assert.Equal(type == PacketType.Connect ? ConnectionState.Connected : ConnectionState.Closed, machine.State);
        }
    }

    [Fact]
    public void Send_before_connect_is_a_ProtocolViolation()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Server);
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Send));
        Assert.Equal(ConnectionState.Closed, machine.State);
    }

    [Fact]
    public void Second_connect_is_a_ProtocolViolation()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Server);
        Assert.Equal(ReasonCode.Success, machine.OnReceived(PacketType.Connect));
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Connect));
        Assert.Equal(ConnectionState.Closed, machine.State);
    }

    [Fact]
    public void Server_to_client_packets_sent_by_a_client_are_a_ProtocolViolation()
    {
        foreach (var type in PacketTypes.All)
        {
            var machine = new ProtocolStateMachine(ProtocolRole.Server);
            machine.OnReceived(PacketType.Connect);
            var clientMaySend = (PacketTypes.Direction(type) & PacketDirection.ClientToServer) != 0;
            var expected = clientMaySend && type != PacketType.Connect ? ReasonCode.Success : ReasonCode.ProtocolViolation;
            Assert.Equal(expected, machine.OnReceived(type));
        }
    }

    [Fact]
    public void Every_client_packet_is_allowed_after_connect()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Server);
        machine.OnReceived(PacketType.Connect);
        foreach (var type in new[] { PacketType.Send, PacketType.Ack, PacketType.Read, PacketType.Sync, PacketType.History, PacketType.GroupRequest, PacketType.PresenceSet, PacketType.PresenceSubscribe, PacketType.Typing, PacketType.KeysUpload, PacketType.FetchKeys, PacketType.Ping })
        {
            Assert.Equal(ReasonCode.Success, machine.OnReceived(type));
        }

        Assert.Equal(ConnectionState.Connected, machine.State);
    }

    [Fact]
    public void Nothing_is_allowed_after_disconnect()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Server);
        machine.OnReceived(PacketType.Connect);
        Assert.Equal(ReasonCode.Success, machine.OnReceived(PacketType.Disconnect));
        Assert.Equal(ConnectionState.Closed, machine.State);
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Ping));
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Disconnect));
    }

    [Fact]
    public void Nothing_is_allowed_after_close()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Server);
        machine.OnReceived(PacketType.Connect);
        machine.Close();
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Send));
    }

    [Fact]
    public void Client_accepts_only_connack_first_then_server_packets()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Client);
        Assert.Equal(ReasonCode.ProtocolViolation, new ProtocolStateMachine(ProtocolRole.Client).OnReceived(PacketType.Deliver));
        Assert.Equal(ReasonCode.Success, machine.OnReceived(PacketType.Connack));
        Assert.Equal(ReasonCode.Success, machine.OnReceived(PacketType.Deliver));
        Assert.Equal(ReasonCode.Success, machine.OnReceived(PacketType.Pong));
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Send));
    }

    [Fact]
    public void Client_rejects_a_second_connack()
    {
        var machine = new ProtocolStateMachine(ProtocolRole.Client);
        machine.OnReceived(PacketType.Connack);
        Assert.Equal(ReasonCode.ProtocolViolation, machine.OnReceived(PacketType.Connack));
    }
}
