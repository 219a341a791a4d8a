using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Text;
using ChatBroker.Broker.Configuration;
using ChatBroker.Client;
using ChatBroker.Protocol.Messages;
using ChatBroker.Tokens;

namespace ChatBroker.Host.Cli;

/// <summary>
/// <c>chatbroker send</c> and <c>chatbroker listen</c>: the operator's mosquitto_pub/sub, built on the
/// client SDK. On the broker's own machine they mint a token with the node's secret (read through the same
/// configuration as <c>serve</c>); elsewhere they take <c>--token</c> and <c>--server host:port</c>.
/// </summary>
internal static class MessagingCommands
{
    public static void Add(RootCommand root, Option<string?> configOption, Option<string[]> setOption)
    {
        var userOption = new Option<string>("--user", "-u") { Description = "Your user id.", Required = true };
        var serverOption = new Option<string?>("--server", "-s") { Description = "Broker address host:port (default: this node's tcp.listen)." };
        var tokenOption = new Option<string?>("--token", "-t") { Description = "Device token (default: minted with this node's secret)." };
        var tlsOption = new Option<bool>("--tls") { Description = "Connect with TLS (default server: this node's tls.listen)." };
        var caFileOption = new Option<string?>("--ca-file") { Description = "With --tls: PEM CA certificates to trust instead of the system's roots." };
        var serverNameOption = new Option<string?>("--server-name") { Description = "With --tls: the name the server certificate must carry (default: the --server host)." };

        var sendDevice = new Option<string>("--device", "-d") { Description = "Your device id.", DefaultValueFactory = _ => "cli" };
        var toOption = new Option<string?>("--to") { Description = "Recipient user id (a direct chat)." };
        var conversationOption = new Option<ulong?>("--conversation") { Description = "Existing conversation id (instead of --to)." };
        var countOption = new Option<int>("--count", "-n") { Description = "Send the text this many times (numbered).", DefaultValueFactory = _ => 1 };
        var textArgument = new Argument<string>("text") { Description = "Message text (UTF-8)." };
        var send = new Command("send", "Send a message and wait until the broker has stored it (prints conversation and seq).")
        {
            userOption, sendDevice, toOption, conversationOption, countOption, serverOption, tokenOption, tlsOption, caFileOption, serverNameOption, textArgument,
        };
        send.SetAction((result, token) => SendAsync(
            result.GetValue(configOption), result.GetValue(setOption), result.GetValue(userOption)!, result.GetValue(sendDevice)!,
            result.GetValue(toOption), result.GetValue(conversationOption), result.GetValue(countOption),
            result.GetValue(serverOption), result.GetValue(tokenOption), TlsFrom(result), result.GetValue(textArgument)!, token));
        root.Subcommands.Add(send);

        var listenDevice = new Option<string>("--device", "-d") { Description = "Your device id.", DefaultValueFactory = _ => "cli-listen" };
        var fromOption = new Option<ulong>("--from") { Description = "Inbox position to resume after (0 = everything retained).", DefaultValueFactory = _ => 0 };
        var listen = new Command("listen", "Print each message for the user as it arrives (backlog first), until Ctrl-C.")
        {
            userOption, listenDevice, fromOption, serverOption, tokenOption, tlsOption, caFileOption, serverNameOption,
        };
        listen.SetAction((result, token) => ListenAsync(
            result.GetValue(configOption), result.GetValue(setOption), result.GetValue(userOption)!, result.GetValue(listenDevice)!,
            result.GetValue(fromOption), result.GetValue(serverOption), result.GetValue(tokenOption), TlsFrom(result), token));
        root.Subcommands.Add(listen);

        ChatClientTlsOptions? TlsFrom(ParseResult result) => result.GetValue(tlsOption)
            ? new ChatClientTlsOptions { CaFile = result.GetValue(caFileOption), ServerName = result.GetValue(serverNameOption) }
            : null;
    }

    private static ChatClientOptions? ClientOptions(
        string? configFile, string[]? overrides, string user, string device, string? server, string? token, ChatClientTlsOptions? tls)
    {
        EndPoint endPoint;
        BrokerOptions? options = null;
        if (server is null || token is null)
        {
            try
            {
                options = BrokerConfiguration.Load(configFile, overrides).Options;
            }
            catch (BrokerConfigurationException e)
            {
                Console.Error.WriteLine("chatbroker: invalid configuration:");
                foreach (var error in e.Errors)
                {
                    Console.Error.WriteLine("  " + error);
                }

                return null;
            }
        }

        if (server is not null)
        {
            if (!SettingParsers.TryParseEndpoint(server, out var ip, out _))
            {
                var colon = server.LastIndexOf(':');
                if (colon <= 0 || !int.TryParse(server.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port))
                {
                    Console.Error.WriteLine($"chatbroker: --server: expected host:port, got \"{server}\"");
                    return null;
                }

                endPoint = new DnsEndPoint(server[..colon], port);
            }
            else
            {
                endPoint = ip;
            }
        }
        else
        {
            var listen = tls is null ? options!.Tcp.Listen : options!.Tls.Listen;
            if (listen is null)
            {
                Console.Error.WriteLine("chatbroker: --tls without --server: this node's tls.listen is not set");
                return null;
            }

            endPoint = listen.Address.Equals(IPAddress.Any) ? new IPEndPoint(IPAddress.Loopback, listen.Port)
                : listen.Address.Equals(IPAddress.IPv6Any) ? new IPEndPoint(IPAddress.IPv6Loopback, listen.Port)
                : listen;
        }

        if (token is null)
        {
            var auth = options!.Auth;
            var secretFile = auth.ResolveSecretFile(options.Node);
            if (auth.Secret.Length == 0 && !File.Exists(secretFile))
            {
                Console.Error.WriteLine($"chatbroker: no --token given and no node secret at {secretFile}: run this on the broker's machine (same --config), or pass --token");
                return null;
            }

            var secret = auth.Secret.Length > 0 ? TokenSecret.FromBase64(auth.Secret) : TokenSecret.LoadOrCreate(secretFile, out _);
            token = AccessToken.Issue(secret, user, device, TimeSpan.FromHours(1), DateTimeOffset.UtcNow);
        }

        return new ChatClientOptions
        {
            EndPoint = endPoint,
            UserId = user,
            DeviceId = device,
            TokenProvider = _ => ValueTask.FromResult(token),
            ClientInfo = "chatbroker-cli/" + BrokerHost.Version,
            Tls = tls,
        };
    }

    private static async Task<int> SendAsync(string? configFile, string[]? overrides, string user, string device,
        string? to, ulong? conversation, int count, string? server, string? token, ChatClientTlsOptions? tls, string text, CancellationToken cancellationToken)
    {
        if ((to is null) == (conversation is null))
        {
            Console.Error.WriteLine("chatbroker send: give exactly one of --to USER or --conversation ID");
            return Program.ExitUsage;
        }

        var options = ClientOptions(configFile, overrides, user, device, server, token, tls);
        if (options is null)
        {
            return Program.ExitUsage;
        }

        options.AutoReconnect = false;
        await using var client = new ChatClient(options);
        try
        {
            await client.ConnectAsync(cancellationToken).ConfigureAwait(false);
            var sends = new List<Task<SentResult>>(count);
            for (var i = 1; i <= count; i++)
            {
                var body = Encoding.UTF8.GetBytes(count == 1 ? text : $"{text} {i}");
                sends.Add(to is not null
                    ? client.SendAsync(to, body, ContentType.Text, cancellationToken)
                    : client.SendAsync(conversation!.Value, body, ContentType.Text, cancellationToken));
            }

            foreach (var sent in sends)
            {
                var r = await sent.ConfigureAwait(false);
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"sent conversation={r.ConversationId} seq={r.Seq} at {DateTimeOffset.FromUnixTimeMilliseconds((long)r.TimestampMs):O}"));
            }

            await client.DisconnectAsync(cancellationToken).ConfigureAwait(false);
            return Program.ExitOk;
        }
        catch (ChatClientException e)
        {
            Console.Error.WriteLine($"chatbroker send: {e.Message}");
            return Program.ExitFailure;
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException or TimeoutException)
        {
            Console.Error.WriteLine($"chatbroker send: cannot reach the broker at {options.EndPoint}: {e.Message}");
            return Program.ExitFailure;
        }
    }

    private static async Task<int> ListenAsync(string? configFile, string[]? overrides, string user, string device,
        ulong from, string? server, string? token, ChatClientTlsOptions? tls, CancellationToken cancellationToken)
    {
        var options = ClientOptions(configFile, overrides, user, device, server, token, tls);
        if (options is null)
        {
            return Program.ExitUsage;
        }

        options.ResumeInboxSeq = from;
        await using var client = new ChatClient(options);
        try
        {
            await client.ConnectAsync(cancellationToken).ConfigureAwait(false);
            Console.Error.WriteLine($"listening as {user}/{device} on {options.EndPoint}; Ctrl-C to stop");
            await foreach (var m in client.Messages.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                Console.Out.WriteLine(Format(m));
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (ChatClientException e)
        {
            Console.Error.WriteLine($"chatbroker listen: {e.Message}");
            return Program.ExitFailure;
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException or TimeoutException)
        {
            Console.Error.WriteLine($"chatbroker listen: cannot reach the broker at {options.EndPoint}: {e.Message}");
            return Program.ExitFailure;
        }

        return Program.ExitOk;
    }

    internal static string Format(ReceivedMessage m)
    {
        string body;
        try
        {
            body = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(m.Body.Span);
        }
        catch (DecoderFallbackException)
        {
            body = $"<{m.Body.Length} bytes, not UTF-8>";
        }

        var when = DateTimeOffset.FromUnixTimeMilliseconds((long)m.TimestampMs).ToString("O", CultureInfo.InvariantCulture);
        return string.Create(CultureInfo.InvariantCulture, $"{when} conversation={m.ConversationId} seq={m.Seq} from={m.SenderUserId}/{m.SenderDeviceId}: {body}");
    }
}
