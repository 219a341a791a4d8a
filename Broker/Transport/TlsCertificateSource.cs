using System.Net.Security;
using System.Runtime.InteropServices;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ChatBroker.Broker.Configuration;
using Microsoft.Extensions.Logging;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// The server certificate of the TLS and wss listeners, from the PEM files tls.certificate_file and tls.key_file,
/// reloaded on SIGHUP and when either file changes. A reload swaps the handshake options whole (one volatile
/// reference), so a handshake uses the old certificate or the new one, never a mix, and connections already
/// established keep the session they negotiated: nothing is dropped. A reload that fails (a file half written,
/// a key that does not match) keeps the previous certificate; the next change or SIGHUP tries again.
/// </summary>
public sealed class TlsCertificateSource : IDisposable
{
    /// <summary>The ALPN protocol id of the native protocol over TLS (docs/protocol.md, "TLS and WebSocket").</summary>
    public const string Alpn = "chatbroker/1";

    // Several change events arrive for one replacement (truncate, write, close; a cert and a key): they are
    // gathered into one reload this long after the last of them.
    private static readonly TimeSpan ChangeSettleDelay = TimeSpan.FromMilliseconds(100);

    private readonly TlsOptions _options;
    private readonly TransportInstruments _instruments;
    private readonly ILogger _logger;
    private readonly Lock _reloadLock = new();
    private readonly List<FileSystemWatcher> _watchers = [];
    private PosixSignalRegistration? _sighup;
    private bool _watching;
    private Timer? _settle;
    private Loaded _current;

    public TlsCertificateSource(TlsOptions options, TransportInstruments instruments, ILogger<TlsCertificateSource> logger)
    {
        _options = options;
        _instruments = instruments;
        _logger = logger;
        try
        {
            _current = Load(options);
        }
        catch (Exception e) when (IsLoadFailure(e))
        {
            throw new InvalidOperationException($"Cannot load the TLS certificate (tls.certificate_file {options.CertificateFile}, tls.key_file {options.KeyFile}): {e.Message}", e);
        }

        TransportLog.CertificateLoaded(_logger, _current.Certificate.Subject, _current.Certificate.Thumbprint, _current.Certificate.NotAfter.ToUniversalTime(), "start");
    }

    /// <summary>Raised after each reload that replaced the certificate.</summary>
    public event Action<X509Certificate2>? Reloaded;

    /// <summary>The certificate new handshakes get.</summary>
    public X509Certificate2 Certificate => Volatile.Read(ref _current).Certificate;

    /// <summary>Handshake options of the native protocol over TLS (ALPN <see cref="Alpn"/>); shared by every handshake.</summary>
    public SslServerAuthenticationOptions NativeOptions => Volatile.Read(ref _current).Native;

    /// <summary>Handshake options of wss (ALPN http/1.1, which the WebSocket upgrade needs).</summary>
    public SslServerAuthenticationOptions WebSocketOptions => Volatile.Read(ref _current).WebSocket;

    /// <summary>Starts reloading on SIGHUP and on changes to the files (idempotent).</summary>
    public void Watch()
    {
        lock (_reloadLock)
        {
            if (_watching)
            {
                return;
            }

            _watching = true;

            if (!OperatingSystem.IsWindows())
            {
                _sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, context =>
                {
                    context.Cancel = true; // SIGHUP's default action ends the process
                    TryReload("SIGHUP");
                });
            }

            // Only the directories of the two files, not recursive: a watch costs an inotify watch per directory.
            foreach (var directory in new HashSet<string>(StringComparer.Ordinal)
                     {
                         Path.GetDirectoryName(Path.GetFullPath(_options.CertificateFile))!,
                         Path.GetDirectoryName(Path.GetFullPath(_options.KeyFile))!,
                     })
            {
                // Every entry of the directory, not a name filter: a Kubernetes secret or certbot swaps a symlink.
                var watcher = new FileSystemWatcher(directory) { IncludeSubdirectories = false };
                watcher.Changed += OnFileEvent;
                watcher.Created += OnFileEvent;
                watcher.Renamed += OnFileEvent;
                try
                {
                    watcher.EnableRaisingEvents = true;
                }
                catch (IOException e)
                {
                    // The user's inotify instances are used up (fs.inotify.max_user_instances, 128 by default): the
                    // broker still starts (it failed to, before), and reloads on SIGHUP only.
                    watcher.Dispose();
                    TransportLog.CertificateWatchUnavailable(_logger, directory, e.Message);
                    continue;
                }

                _watchers.Add(watcher);
            }
        }
    }

    /// <summary>Loads the files again; returns false (and keeps the current certificate) when they cannot be used.</summary>
    public bool TryReload(string trigger)
    {
        lock (_reloadLock)
        {
            Loaded loaded;
            try
            {
                loaded = Load(_options);
            }
            catch (Exception e) when (IsLoadFailure(e))
            {
                _instruments.TlsReloads.Add(1, TransportInstruments.Result("failed"));
                TransportLog.CertificateReloadFailed(_logger, trigger, e.Message);
                return false;
            }

            if (loaded.Certificate.Thumbprint == _current.Certificate.Thumbprint)
            {
                // A touch, the second file of a pair, or a SIGHUP with nothing new: the certificate in use stays.
                loaded.Certificate.Dispose();
                _instruments.TlsReloads.Add(1, TransportInstruments.Result("unchanged"));
                TransportLog.CertificateUnchanged(_logger, trigger, _current.Certificate.Thumbprint);
                return true;
            }

            // The previous certificate is not disposed: handshakes that took its options may still be running.
            Volatile.Write(ref _current, loaded);
            _instruments.TlsReloads.Add(1, TransportInstruments.Result("ok"));
            TransportLog.CertificateLoaded(_logger, loaded.Certificate.Subject, loaded.Certificate.Thumbprint, loaded.Certificate.NotAfter.ToUniversalTime(), trigger);
        }

        Reloaded?.Invoke(Certificate);
        return true;
    }

    private void OnFileEvent(object sender, FileSystemEventArgs e)
    {
        lock (_reloadLock)
        {
            _settle ??= new Timer(static s => ((TlsCertificateSource)s!).TryReload("file change"), this, Timeout.Infinite, Timeout.Infinite);
            _settle.Change(ChangeSettleDelay, Timeout.InfiniteTimeSpan);
        }
    }

    private static bool IsLoadFailure(Exception e) =>
        e is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException;

    private static Loaded Load(TlsOptions options)
    {
        var certificate = X509Certificate2.CreateFromPemFile(options.CertificateFile, options.KeyFile);
        // Intermediates after the leaf go out in the handshake; offline: no chain download or OCSP fetch.
        var chain = new X509Certificate2Collection();
        chain.ImportFromPemFile(options.CertificateFile);
        var intermediates = new X509Certificate2Collection();
        for (var i = 1; i < chain.Count; i++)
        {
            intermediates.Add(chain[i]);
        }

        var context = SslStreamCertificateContext.Create(certificate, intermediates, offline: true);
        return new Loaded(certificate, Options(context, Alpn), Options(context, "http/1.1"));
    }

    private static SslServerAuthenticationOptions Options(SslStreamCertificateContext context, string alpn) => new()
    {
        ServerCertificateContext = context,
        EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        ApplicationProtocols = [new SslApplicationProtocol(alpn)],
        ClientCertificateRequired = false,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        AllowRenegotiation = false,
    };

    public void Dispose()
    {
        lock (_reloadLock)
        {
            _sighup?.Dispose();
            _sighup = null;
            foreach (var watcher in _watchers)
            {
                watcher.Dispose();
            }

            _watchers.Clear();
            _settle?.Dispose();
        }
    }

    private sealed record Loaded(X509Certificate2 Certificate, SslServerAuthenticationOptions Native, SslServerAuthenticationOptions WebSocket);
}
