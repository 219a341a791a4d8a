using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ChatBroker.Broker.Configuration;
using ChatBroker.Broker.Transport;
using Microsoft.Extensions.Logging.Abstractions;

namespace ChatBroker.Broker.Tests.Transport;

public sealed class TlsCertificateSourceTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("chatbroker-certs-").FullName;
    private readonly TlsOptions _options;

    public TlsCertificateSourceTests() =>
        _options = new TlsOptions { CertificateFile = Path.Combine(_directory, "c.pem"), KeyFile = Path.Combine(_directory, "k.pem") };

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static (X509Certificate2 Certificate, string CertificatePem, string KeyPem) Issue(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var certificate = new CertificateRequest("CN=" + name, key, HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        return (certificate, certificate.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem());
    }

    private void Write((X509Certificate2 Certificate, string CertificatePem, string KeyPem) issued)
    {
        File.WriteAllText(_options.CertificateFile, issued.CertificatePem);
        File.WriteAllText(_options.KeyFile, issued.KeyPem);
    }

    private TlsCertificateSource Open() => new(_options, new TransportInstruments("test"), NullLogger<TlsCertificateSource>.Instance);

    [Fact]
    public void A_reload_swaps_the_certificate_new_handshakes_get_and_raises_reloaded()
    {
        var first = Issue("first");
        Write(first);
        using var source = Open();
        var before = source.NativeOptions;
        X509Certificate2? announced = null;
        source.Reloaded += c => announced = c;

        var second = Issue("second");
        Write(second);

        Assert.True(source.TryReload("test"));
        Assert.Equal(second.Certificate.Thumbprint, source.Certificate.Thumbprint);
        Assert.Equal(second.Certificate.Thumbprint, announced?.Thumbprint);
        Assert.NotSame(before, source.NativeOptions);
        Assert.Equal(first.Certificate.Thumbprint, before.ServerCertificateContext!.TargetCertificate.Thumbprint); // in-flight handshakes keep theirs
        Assert.Equal(TlsCertificateSource.Alpn, source.NativeOptions.ApplicationProtocols![0].ToString());
        Assert.Equal("http/1.1", source.WebSocketOptions.ApplicationProtocols![0].ToString());
    }

    [Fact]
    public void A_key_that_does_not_match_keeps_the_previous_certificate()
    {
        var first = Issue("first");
        Write(first);
        using var source = Open();

        File.WriteAllText(_options.KeyFile, Issue("other").KeyPem); // the certificate is still the first one

        Assert.False(source.TryReload("test"));
        Assert.Equal(first.Certificate.Thumbprint, source.Certificate.Thumbprint);
    }

    [Fact]
    public void A_certificate_that_cannot_be_loaded_at_start_names_both_files()
    {
        File.WriteAllText(_options.CertificateFile, "not a certificate");
        File.WriteAllText(_options.KeyFile, "not a key");

        var e = Assert.Throws<InvalidOperationException>(Open);
        Assert.Contains(_options.CertificateFile, e.Message, StringComparison.Ordinal);
        Assert.Contains(_options.KeyFile, e.Message, StringComparison.Ordinal);
    }
}
