using System.Collections.Frozen;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Http;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// The web chat's static files, embedded in this assembly at build time (resources named <c>web/&lt;path&gt;</c>, see
/// ChatBroker.Broker.csproj) and served from memory by the WebSocket listener when <c>web.enabled</c>:
/// <list type="bullet">
///   <item><c>/</c>, <c>/app.js</c>, <c>/style.css</c>: clients/web;</item>
///   <item><c>/vendor/…</c>: protobufjs's light UMD build and long's, vendored in clients/web/vendor (no npm at build time);</item>
///   <item><c>/js/…</c>: the JavaScript client's ES modules, clients/js/src, as they are (no build step).</item>
/// </list>
/// Every file is revalidated by its ETag (a hash of its bytes), so a browser never runs a stale page after an upgrade.
/// </summary>
public sealed class WebChatFiles
{
    private const string Prefix = "web/";
    private readonly FrozenDictionary<string, WebChatFile> _files;

    private WebChatFiles(FrozenDictionary<string, WebChatFile> files) => _files = files;

    /// <summary>Request paths served, e.g. <c>/index.html</c>, <c>/js/index.js</c>.</summary>
    public IEnumerable<string> Paths => _files.Keys;

    /// <summary>The files embedded in the broker assembly.</summary>
    public static WebChatFiles Load()
    {
        var assembly = typeof(WebChatFiles).Assembly;
        var files = new Dictionary<string, WebChatFile>(StringComparer.Ordinal);
        foreach (var name in assembly.GetManifestResourceNames())
        {
            if (!name.StartsWith(Prefix, StringComparison.Ordinal))
            {
                continue;
            }

            using var stream = assembly.GetManifestResourceStream(name)!;
            var content = new byte[stream.Length];
            stream.ReadExactly(content);
            var path = "/" + name[Prefix.Length..].Replace('\\', '/');
            files[path] = new WebChatFile(content, ContentTypeOf(path), "\"" + Convert.ToHexStringLower(SHA256.HashData(content).AsSpan(0, 12)) + "\"");
        }

        return new WebChatFiles(files.ToFrozenDictionary(StringComparer.Ordinal));
    }

    public bool TryGet(PathString path, out WebChatFile file)
    {
        var value = path.Value;
        if (string.IsNullOrEmpty(value) || value == "/")
        {
            value = "/index.html";
        }

        return _files.TryGetValue(value, out file!);
    }

    /// <summary>Answers a GET or HEAD for the file at the request's path: 200, 304 (ETag), 404 or 405.</summary>
    public async Task ServeAsync(HttpContext context)
    {
        var request = context.Request;
        var response = context.Response;
        if (!HttpMethods.IsGet(request.Method) && !HttpMethods.IsHead(request.Method))
        {
            response.StatusCode = StatusCodes.Status405MethodNotAllowed;
            response.Headers.Allow = "GET, HEAD";
            return;
        }

        if (!TryGet(request.Path, out var file))
        {
            response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }

        var headers = response.Headers;
        headers.ETag = file.ETag;
        headers.CacheControl = "no-cache";
        headers.XContentTypeOptions = "nosniff";
        headers["Referrer-Policy"] = "no-referrer";
        headers.XFrameOptions = "DENY";
        if (request.Headers.IfNoneMatch == file.ETag)
        {
            response.StatusCode = StatusCodes.Status304NotModified;
            return;
        }

        response.ContentType = file.ContentType;
        response.ContentLength = file.Content.Length;
        if (HttpMethods.IsGet(request.Method))
        {
            await response.Body.WriteAsync(file.Content, context.RequestAborted).ConfigureAwait(false);
        }
    }

    private static string ContentTypeOf(string path) => Path.GetExtension(path) switch
    {
        ".html" => "text/html; charset=utf-8",
        ".js" => "text/javascript; charset=utf-8",
        ".css" => "text/css; charset=utf-8",
        ".svg" => "image/svg+xml",
        ".png" => "image/png",
        ".ico" => "image/x-icon",
        ".txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
}

/// <summary>One embedded file: its bytes, Content-Type and strong ETag.</summary>
public sealed record WebChatFile(byte[] Content, string ContentType, string ETag);
