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

        // Decoded in place: a token is at most MaxLength characters, so its parts fit on the stack (3 KB at most).
        Span<byte> decoded = stackalloc byte[MaxLength / 4 * 3];
        if (!Base64Url.TryDecode(token.AsSpan(0, firstDot), decoded, out var headerLength) ||
            !Base64Url.TryDecode(token.AsSpan(firstDot + 1, secondDot - firstDot - 1), decoded[headerLength..], out var payloadLength) ||
            !Base64Url.TryDecode(token.AsSpan(secondDot + 1), decoded[(headerLength + payloadLength)..], out var signatureLength))
        {
            return TokenStatus.Malformed;
        }

        var header = decoded[..headerLength];
        var payload = decoded.Slice(headerLength, payloadLength);
        var signature = decoded.Slice(headerLength + payloadLength, signatureLength);
        string? alg = null;
        string? kid = null;
        string? user = null;
        string? device = null;
        long? exp = null;
        long iat = 0;
        try
        {
            // Top-level members only, the last of a repeated name counting (as JsonElement.TryGetProperty reads them).
            var reader = new Utf8JsonReader(header);
            if (!StartObject(ref reader))
            {
                return TokenStatus.Malformed;
            }

            while (NextMember(ref reader))
            {
                if (reader.ValueTextEquals("alg"u8))
                {
                    alg = ReadString(ref reader);
                }
                else if (reader.ValueTextEquals("kid"u8))
                {
                    kid = ReadString(ref reader);
                }
                else
                {
                    reader.Skip();
                }
            }

            reader = new Utf8JsonReader(payload);
            if (!StartObject(ref reader))
            {
                return TokenStatus.Malformed;
            }

            while (NextMember(ref reader))
            {
                if (reader.ValueTextEquals("sub"u8))
                {
                    user = ReadString(ref reader);
                }
                else if (reader.ValueTextEquals("dev"u8))
                {
                    device = ReadString(ref reader);
                }
                else if (reader.ValueTextEquals("exp"u8) || reader.ValueTextEquals("iat"u8))
                {
                    var isExp = reader.ValueTextEquals("exp"u8);
                    reader.Read();
                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out var value))
                    {
                        return TokenStatus.Malformed;
                    }

                    if (isExp)
                    {
                        exp = value;
                    }
                    else
                    {
                        iat = value;
                    }
                }
                else
                {
                    reader.Skip();
                }
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            return TokenStatus.Malformed;
        }

        if (alg != "HS256" || string.IsNullOrEmpty(user) || exp is null || signature.Length != 32)
        {
            return TokenStatus.Malformed;
        }

        if (kid is not null && kid != secret.KeyId)
        {
            return TokenStatus.WrongKey;
        }

        // The signing input is the token's first two parts as they are (base64url and a dot: ASCII).
        Span<byte> expected = stackalloc byte[32];
        Span<byte> signingInput = stackalloc byte[secondDot];
        Encoding.ASCII.GetBytes(token.AsSpan(0, secondDot), signingInput);
        var hmac = KeyedHmac.For(secret);
        hmac.AppendData(signingInput);
        hmac.GetHashAndReset(expected);
        if (!CryptographicOperations.FixedTimeEquals(expected, signature))
        {
            return TokenStatus.BadSignature;
        }

        var expires = DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(exp.Value, 0, 253_402_300_799));
        if (expires <= now)
        {
            return TokenStatus.Expired;
        }

        claims = new TokenClaims(user, string.IsNullOrEmpty(device) ? null : device, expires,
            DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(iat, 0, 253_402_300_799)));
        return TokenStatus.Valid;
    }

    // The document is one object (anything else, or anything after it, is malformed: JsonException).
    private static bool StartObject(ref Utf8JsonReader reader) => reader.Read() && reader.TokenType == JsonTokenType.StartObject;

    // On the next top-level member's name; false at the object's end, after checking nothing follows it.
    private static bool NextMember(ref Utf8JsonReader reader)
    {
        reader.Read();
        if (reader.TokenType == JsonTokenType.PropertyName)
        {
            return true;
        }

        if (reader.Read())
        {
            throw new JsonException("content after the object");
        }

        return false;
    }

    // The member's value when it is a string, else null (the value is read past either way).
    private static string? ReadString(ref Utf8JsonReader reader)
    {
        reader.Read();
        if (reader.TokenType == JsonTokenType.String)
        {
            return reader.GetString();
        }

        reader.Skip();
        return null;
    }

    /// <summary>
    /// An HMAC-SHA256 keyed with a secret, one per thread and reused (reset after each hash): a one-shot
    /// <see cref="HMACSHA256.HashData(ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte})"/> sets up OpenSSL's MAC
    /// and its key on every call, twice the time of the hash itself. Rebuilt when another secret comes (rotation).
    /// </summary>
    private static class KeyedHmac
    {
        [ThreadStatic]
        private static TokenSecret? t_secret;

        [ThreadStatic]
        private static IncrementalHash? t_hash;

        public static IncrementalHash For(TokenSecret secret)
        {
            if (!ReferenceEquals(t_secret, secret) || t_hash is null)
            {
                t_hash?.Dispose();
                t_hash = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, secret.Key);
                t_secret = secret;
            }

            return t_hash;
        }
    }
}

/// <summary>base64url without padding (RFC 4648 §5), as JWTs use it.</summary>
internal static class Base64Url
{
    public static string Encode(ReadOnlySpan<byte> data) => System.Buffers.Text.Base64Url.EncodeToString(data);

    /// <summary>Decodes <paramref name="text"/> into the start of <paramref name="destination"/>; false when it is not
    /// base64url or does not fit.</summary>
    public static bool TryDecode(ReadOnlySpan<char> text, Span<byte> destination, out int written)
    {
        written = 0;
        if (!System.Buffers.Text.Base64Url.IsValid(text, out var length) || length > destination.Length)
        {
            return false;
        }

        try
        {
            return System.Buffers.Text.Base64Url.TryDecodeFromChars(text, destination, out written) && written == length;
        }
        catch (FormatException)
        {
            // IsValid accepts some inputs with white space (e.g. one character then a line break) that the decoder
            // then throws on; found by the session fuzzer (issue 18). Such a token is malformed, not a crash.
            written = 0;
            return false;
        }
    }
}
