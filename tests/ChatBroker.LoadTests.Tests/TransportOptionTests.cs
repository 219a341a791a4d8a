namespace ChatBroker.LoadTests.Tests;

/// <summary>pairs --transport: one transport, or a list run in turn against one broker.</summary>
public sealed class TransportOptionTests
{
    [Theory]
    [InlineData("tcp", new[] { ClientTransport.Tcp })]
    [InlineData("ws", new[] { ClientTransport.Ws })]
    [InlineData("tcp,tls,ws", new[] { ClientTransport.Tcp, ClientTransport.Tls, ClientTransport.Ws })]
    [InlineData(" tls , tcp ", new[] { ClientTransport.Tls, ClientTransport.Tcp })]
    public void Transports_are_parsed_in_order(string text, ClientTransport[] expected)
    {
        Assert.True(ClientTransports.TryParse(text, out var transports, out _));
        Assert.Equal(expected, transports);
        Assert.Empty(Program.Build().Parse(["pairs", "--transport", text]).Errors);
    }

    [Fact]
    public void An_unknown_transport_is_refused_naming_it()
    {
        var errors = Program.Build().Parse(["pairs", "--transport", "tcp,quic"]).Errors;
        Assert.Contains(errors, e => e.Message.Contains("\"quic\" is not tcp, tls or ws", StringComparison.Ordinal));
    }
}
