using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace ChatBroker.Client;

/// <summary>
/// TLS to the broker's tls.listen port (docs/protocol.md, "TLS and WebSocket"): TLS 1.2 or 1.3, ALPN
/// <see cref="DefaultApplicationProtocol"/>, the server certificate checked against the system's trusted roots or
/// against the CA certificates of <see cref="CaFile"/> only.
/// </summary>
public sealed class ChatClientTlsOptions
{
    /// <summary>The ALPN protocol id of the native protocol over TLS.</summary>
    public const string DefaultApplicationProtocol = "chatbroker/1";

    /// <summary>The name the certificate must carry (and SNI); null: <see cref="ChatClientOptions.Host"/>.</summary>
    public string? ServerName { get; set; }

    /// <summary>PEM file of CA certificates to trust instead of the system's roots (a private CA, a self-signed server); null: the system trust.</summary>
    public string? CaFile { get; set; }

    /// <summary>The ALPN protocol offered.</summary>
    public string ApplicationProtocol { get; set; } = DefaultApplicationProtocol;

    internal SslClientAuthenticationOptions ToAuthenticationOptions(string defaultServerName)
    {
        var options = new SslClientAuthenticationOptions
        {
            TargetHost = ServerName ?? defaultServerName,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ApplicationProtocols = [new SslApplicationProtocol(ApplicationProtocol)],
        };
        if (CaFile is not null)
        {
            var roots = new X509Certificate2Collection();
            roots.ImportFromPemFile(CaFile);
            if (roots.Count == 0)
            {
                throw new InvalidDataException($"{CaFile}: no certificate in it");
            }

            // Only these roots: the chain must end at one of them, whatever the machine trusts.
            var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
            policy.CustomTrustStore.AddRange(roots);
            options.CertificateChainPolicy = policy;
        }

        return options;
    }
}
