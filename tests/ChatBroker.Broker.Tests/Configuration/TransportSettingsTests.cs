using System.Collections;
using System.Net;
using ChatBroker.Broker.Configuration;

namespace ChatBroker.Broker.Tests.Configuration;

public sealed class TransportSettingsTests
{
    private static readonly IDictionary NoEnvironment = new Hashtable();

    private static BrokerConfigurationException Refused(params string[] overrides) =>
        Assert.Throws<BrokerConfigurationException>(() => BrokerConfiguration.Load(null, overrides, NoEnvironment));

    [Fact]
    public void Tls_and_websocket_are_off_by_default()
    {
        var options = BrokerConfiguration.Load(null, [], NoEnvironment).Options;
        Assert.Null(options.Tls.Listen);
        Assert.Null(options.Ws.Listen);
        Assert.False(options.Ws.Tls);
    }

    [Fact]
    public void Listeners_and_origins_are_read()
    {
        var options = BrokerConfiguration.Load(null,
            ["tls.listen=127.0.0.1:7884", "tls.certificate_file=c.pem", "tls.key_file=k.pem", "ws.listen=127.0.0.1:7885", "ws.allowed_origins=https://a.example, http://localhost:8080"],
            NoEnvironment).Options;
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:7884"), options.Tls.Listen);
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:7885"), options.Ws.Listen);
        Assert.Equal(["https://a.example", "http://localhost:8080"], options.Ws.AllowedOriginList());
    }

    [Fact]
    public void Tls_without_a_certificate_is_an_error_naming_the_keys()
    {
        Assert.Contains(Refused("tls.listen=127.0.0.1:7884").Errors, e => e.Contains("tls.listen needs tls.certificate_file and tls.key_file", StringComparison.Ordinal));
        Assert.Contains(Refused("ws.listen=127.0.0.1:7885", "ws.tls=true").Errors, e => e.Contains("ws.tls needs", StringComparison.Ordinal));
    }

    [Fact]
    public void A_bad_address_or_origin_is_an_error_naming_the_key()
    {
        Assert.Contains(Refused("tls.listen=nowhere").Errors, e => e.Contains("tls.listen", StringComparison.Ordinal));
        Assert.Contains(Refused("ws.allowed_origins=https://a.example/path").Errors, e => e.Contains("ws.allowed_origins", StringComparison.Ordinal));
    }
}
