using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace ChatBroker.EndToEnd.Tests.Infrastructure;

/// <summary>Self-signed server certificates for 127.0.0.1 and localhost, written as PEM files the broker loads.</summary>
public sealed class TestCertificates : IDisposable
{
    public TestCertificates()
    {
        Directory = Path.Combine(Path.GetTempPath(), "chatbroker-tls-" + Guid.NewGuid().ToString("N"));
        System.IO.Directory.CreateDirectory(Directory);
    }

    public string Directory { get; }
    public string CertificateFile => Path.Combine(Directory, "server.crt");
    public string KeyFile => Path.Combine(Directory, "server.key");
    public string CaFile => Path.Combine(Directory, "ca.pem");

    /// <summary>A new self-signed certificate; written (atomically, by rename) as the server's files and added to the CA file.</summary>
    public X509Certificate2 Issue(string commonName)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        names.AddDnsName("localhost");
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        var now = DateTimeOffset.UtcNow;
        var certificate = request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));

        // Key first, then the certificate, each replaced by a rename: the broker never reads half a file, and a
        // reload that saw the new key with the old certificate fails (mismatch) and is retried by the next event.
        Replace(KeyFile, key.ExportPkcs8PrivateKeyPem());
        Replace(CertificateFile, certificate.ExportCertificatePem());
        File.AppendAllText(CaFile, certificate.ExportCertificatePem() + "\n");
        return certificate;
    }

    private void Replace(string path, string text)
    {
        var temporary = Path.Combine(Directory, "." + Guid.NewGuid().ToString("N"));
        File.WriteAllText(temporary, text);
        File.Move(temporary, path, overwrite: true);
    }

    public void Dispose()
    {
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
