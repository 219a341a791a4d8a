using System.Buffers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace ChatBroker.Tokens;

/// <summary>Why a token was refused. Each maps to its own CONNACK reason so clients and operators can tell them apart.</summary>
public enum TokenStatus
{
    Valid,
    /// <summary>Not three base64url parts, bad JSON, a missing claim, or an unsupported algorithm.</summary>
    Malformed,
    /// <summary>Signed with a different secret (the header's key id is not this node's).</summary>
    WrongKey,
    /// <summary>Key id matches but the signature does not: header or claims were altered.</summary>
    BadSignature,
    /// <summary>Signature fine, but the expiry has passed.</summary>
    Expired,
}

/// <summary>The claims of a verified token.</summary>
/// <param name="IssuedAt">The <c>iat</c> claim; <see cref="DateTimeOffset.UnixEpoch"/> when the token has none (such a token
/// counts as issued before any revocation).</param>
public readonly record struct TokenClaims(string User, string? Device, DateTimeOffset Expires, DateTimeOffset IssuedAt = default);

/// <summary>
/// Device tokens are JSON Web Tokens signed with HMAC-SHA256 (RFC 7519 / RFC 7515 compact form), so an
/// application server in any language can mint them with a standard library:
/// <code>
///   header  {"alg":"HS256","typ":"JWT","kid":"&lt;key id&gt;"}
///   claims  {"sub":"&lt;user&gt;","dev":"&lt;device, optional&gt;","iat":&lt;unix s&gt;,"exp":&lt;unix s&gt;}
///   token   base64url(header) "." base64url(claims) "." base64url(HMAC-SHA256(secret, first two parts))
/// </code>
/// A token without <c>dev</c> admits any device of the user. <c>kid</c> is optional for verification; with it,
/// a token from another secret is reported as <see cref="TokenStatus.WrongKey"/> rather than as tampered.
/// </summary>
public static class AccessToken
{
    /// <summary>Longest token accepted; a longer one is rejected before any decoding work.</summary>
    public const int MaxLength = 4096;

    public static string Issue(TokenSecret secret, string user, string? device, TimeSpan ttl, DateTimeOffset now)
    {
        ArgumentException.ThrowIfNullOrEmpty(user);
        var header = JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, string>
        {
            ["alg"] = "HS256",
            ["typ"] = "JWT",
            ["kid"] = secret.KeyId,
        });
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("sub", user);
            if (!string.IsNullOrEmpty(device))
            {
                json.WriteString("dev", device);
            }

            json.WriteNumber("iat", now.ToUnixTimeSeconds());
            json.WriteNumber("exp", (now + ttl).ToUnixTimeSeconds());
            json.WriteEndObject();
        }

        var signingInput = Base64Url.Encode(header) + "." + Base64Url.Encode(buffer.WrittenSpan);
        var signature = HMACSHA256.HashData(secret.Key, Encoding.ASCII.GetBytes(signingInput));
        return signingInput + "." + Base64Url.Encode(signature);
    }

    public static TokenStatus Verify(TokenSecret secret, string token, DateTimeOffset now, out TokenClaims claims)
    {
        claims = default;
        if (string.IsNullOrEmpty(token) || token.Length > MaxLength)
        {
            return TokenStatus.Malformed;
        }

        var firstDot = token.IndexOf('.', StringComparison.Ordinal);
        var secondDot = firstDot < 0 ? -1 : token.IndexOf('.', firstDot + 1);
        if (firstDot <= 0 || secondDot <= firstDot + 1 || secondDot == token.Length - 1 ||
            token.IndexOf('.', secondDot + 1) >= 0)
        {
            return TokenStatus.Malformed;
        }

        if (!Base64Url.TryDecode(token.AsSpan(0, firstDot), out var header) ||
            !Base64Url.TryDecode(token.AsSpan(firstDot + 1, secondDot - firstDot - 1), out var payload) ||
            !Base64Url.TryDecode(token.AsSpan(secondDot + 1), out var signature))
        {
            return TokenStatus.Malformed;
        }

        string? alg;
        string? kid;
        string? user;
        string? device;
        long exp;
        long iat = 0;
        try
        {
            using var headerDoc = JsonDocument.Parse(header);
            alg = GetString(headerDoc.RootElement, "alg");
            kid = GetString(headerDoc.RootElement, "kid");
            using var payloadDoc = JsonDocument.Parse(payload);
            user = GetString(payloadDoc.RootElement, "sub");
            device = GetString(payloadDoc.RootElement, "dev");
            if (!payloadDoc.RootElement.TryGetProperty("exp", out var expElement) || !expElement.TryGetInt64(out exp))
            {
                return TokenStatus.Malformed;
            }

            if (payloadDoc.RootElement.TryGetProperty("iat", out var iatElement) && !iatElement.TryGetInt64(out iat))
            {
                return TokenStatus.Malformed;
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            return TokenStatus.Malformed;
        }

        if (alg != "HS256" || string.IsNullOrEmpty(user) || signature.Length != 32)
        {
            return TokenStatus.Malformed;
        }

        if (kid is not null && kid != secret.KeyId)
        {
            return TokenStatus.WrongKey;
        }

        Span<byte> expected = stackalloc byte[32];
        var signingInput = Encoding.ASCII.GetBytes(token, 0, secondDot);
        HMACSHA256.HashData(secret.Key, signingInput, expected);
        if (!CryptographicOperations.FixedTimeEquals(expected, signature))
        {
            return TokenStatus.BadSignature;
        }

        var expires = DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(exp, 0, 253_402_300_799));
        if (expires <= now)
        {
            return TokenStatus.Expired;
        }

        claims = new TokenClaims(user, string.IsNullOrEmpty(device) ? null : device, expires,
            DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(iat, 0, 253_402_300_799)));
        return TokenStatus.Valid;
    }

    private static string? GetString(JsonElement obj, string name) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var e) && e.ValueKind == JsonValueKind.String
            ? e.GetString()
            : null;
}

/// <summary>base64url without padding (RFC 4648 §5), as JWTs use it.</summary>
internal static class Base64Url
{
    public static string Encode(ReadOnlySpan<byte> data) => System.Buffers.Text.Base64Url.EncodeToString(data);

    public static bool TryDecode(ReadOnlySpan<char> text, out byte[] bytes)
    {
        bytes = [];
        if (!System.Buffers.Text.Base64Url.IsValid(text, out var length))
        {
            return false;
        }

        bytes = new byte[length];
        try
        {
            return System.Buffers.Text.Base64Url.TryDecodeFromChars(text, bytes, out var written) && written == length;
        }
        catch (FormatException)
        {
            // IsValid accepts some inputs with white space (e.g. one character then a line break) that the decoder
            // then throws on; found by the session fuzzer (issue 18). Such a token is malformed, not a crash.
            bytes = [];
            return false;
        }
    }
}
