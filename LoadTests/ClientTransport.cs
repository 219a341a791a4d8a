using System.Net;

namespace ChatBroker.LoadTests;

/// <summary>How a harness connection reaches the broker: the native protocol on tcp.listen, on tls.listen, or in binary WebSocket messages on ws.listen.</summary>
public enum ClientTransport
{
    Tcp,
    Tls,
    Ws,
}

/// <summary>The listeners of a broker the harness started with TLS and WebSocket on (pairs --transport tls|ws).</summary>
public sealed record TransportEndPoints(IPEndPoint Tcp, IPEndPoint? Tls, IPEndPoint? Ws)
{
    public IPEndPoint For(ClientTransport transport) => transport switch
    {
        ClientTransport.Tls => Tls ?? throw new InvalidOperationException("the broker has no TLS listener"),
        ClientTransport.Ws => Ws ?? throw new InvalidOperationException("the broker has no WebSocket listener"),
        _ => Tcp,
    };
}

public static class ClientTransports
{
    /// <summary>Parses "tcp", "tls", "ws" or a comma-separated list of them ("tcp,tls,ws": one run, one broker, in turn).</summary>
    public static bool TryParse(string? text, out ClientTransport[] transports, out string? error)
    {
        var list = new List<ClientTransport>();
        foreach (var part in (text ?? "tcp").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            switch (part)
            {
                case "tcp": list.Add(ClientTransport.Tcp); break;
                case "tls": list.Add(ClientTransport.Tls); break;
                case "ws": list.Add(ClientTransport.Ws); break;
                default:
                    transports = [];
                    error = $"--transport: \"{part}\" is not tcp, tls or ws";
                    return false;
            }
        }

        transports = list.Count == 0 ? [ClientTransport.Tcp] : [.. list];
        error = null;
        return true;
    }

    public static string Name(this ClientTransport transport) => transport switch
    {
        ClientTransport.Tls => "tls",
        ClientTransport.Ws => "ws",
        _ => "tcp",
    };
}
