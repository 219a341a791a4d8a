using System.Security.Cryptography;
using System.Text;

namespace ChatBroker.Tokens.Tests;

public sealed class AccessTokenTests
{
    private static readonly DateTimeOffset Now = new(2026, 11, 25, 12, 0, 0, TimeSpan.Zero);
    private readonly TokenSecret _secret = new(RandomNumberGenerator.GetBytes(32));

    [Fact]
    public void Issued_token_verifies_with_its_claims()
    {
        var token = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);

        Assert.Equal(TokenStatus.Valid, AccessToken.Verify(_secret, token, Now.AddMinutes(59), out var claims));
        Assert.Equal("alice", claims.User);
        Assert.Equal("phone", claims.Device);
        Assert.Equal(Now.AddHours(1), claims.Expires);
    }

    [Fact]
    public void Token_without_device_admits_any_device()
    {
        var token = AccessToken.Issue(_secret, "alice", null, TimeSpan.FromHours(1), Now);

        Assert.Equal(TokenStatus.Valid, AccessToken.Verify(_secret, token, Now, out var claims));
        Assert.Null(claims.Device);
    }

    [Fact]
    public void Expired_token_is_rejected_as_expired()
    {
        var token = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);

        Assert.Equal(TokenStatus.Expired, AccessToken.Verify(_secret, token, Now.AddHours(1), out _));
    }

    [Fact]
    public void Token_signed_with_another_secret_is_rejected_as_wrong_key()
    {
        var other = new TokenSecret(RandomNumberGenerator.GetBytes(32));
        var token = AccessToken.Issue(other, "alice", "phone", TimeSpan.FromHours(1), Now);

        Assert.Equal(TokenStatus.WrongKey, AccessToken.Verify(_secret, token, Now, out _));
    }

    [Fact]
    public void Tampered_claims_are_rejected_as_bad_signature()
    {
        var token = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);
        var parts = token.Split('.');
        var claims = Encoding.UTF8.GetString(System.Buffers.Text.Base64Url.DecodeFromChars(parts[1]));
        var forged = System.Buffers.Text.Base64Url.EncodeToString(Encoding.UTF8.GetBytes(claims.Replace("alice", "mallory", StringComparison.Ordinal)));

        Assert.Equal(TokenStatus.BadSignature, AccessToken.Verify(_secret, $"{parts[0]}.{forged}.{parts[2]}", Now, out _));
    }

    [Fact]
    public void Tampered_signature_is_rejected_as_bad_signature()
    {
        var token = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);
        // Change a character in the middle of the signature: the last one carries padding bits, and
        // changing it can make the text invalid base64url (Malformed) rather than a wrong signature.
        var at = token.LastIndexOf('.') + 10;
        var flipped = token[at] == 'A' ? 'B' : 'A';

        Assert.Equal(TokenStatus.BadSignature, AccessToken.Verify(_secret, token[..at] + flipped + token[(at + 1)..], Now, out _));
    }

    [Fact]
    public void Token_without_key_id_from_another_secret_is_a_bad_signature()
    {
        // Application servers may omit kid; then the only evidence is the signature.
        var header = System.Buffers.Text.Base64Url.EncodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}"u8);
        var claims = System.Buffers.Text.Base64Url.EncodeToString("{\"sub\":\"alice\",\"exp\":4102444800}"u8);
        var signature = System.Buffers.Text.Base64Url.EncodeToString(HMACSHA256.HashData(RandomNumberGenerator.GetBytes(32), Encoding.ASCII.GetBytes(header + "." + claims)));

        Assert.Equal(TokenStatus.BadSignature, AccessToken.Verify(_secret, $"{header}.{claims}.{signature}", Now, out _));
    }

    [Fact]
    public void Hand_made_jwt_from_an_app_server_verifies()
    {
        var header = System.Buffers.Text.Base64Url.EncodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}"u8);
        var claims = System.Buffers.Text.Base64Url.EncodeToString("{\"sub\":\"bob\",\"dev\":\"tablet\",\"exp\":4102444800}"u8);
        var signature = System.Buffers.Text.Base64Url.EncodeToString(HMACSHA256.HashData(_secret.Key, Encoding.ASCII.GetBytes(header + "." + claims)));

        Assert.Equal(TokenStatus.Valid, AccessToken.Verify(_secret, $"{header}.{claims}.{signature}", Now, out var verified));
        Assert.Equal("bob", verified.User);
        Assert.Equal("tablet", verified.Device);
    }

    [Theory]
    [InlineData("")]
    [InlineData("not-a-token")]
    [InlineData("a.b")]
    [InlineData("a.b.c.d")]
    [InlineData("..")]
    [InlineData("a..c")]
    [InlineData("!!!.???.***")]
    [InlineData("e30.e30.AAAA")]
    public void Malformed_tokens_are_rejected_as_malformed(string token)
    {
        Assert.Equal(TokenStatus.Malformed, AccessToken.Verify(_secret, token, Now, out _));
    }

    [Theory]
    [InlineData("{\"alg\":\"none\"}", "{\"sub\":\"alice\",\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\"}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":\"soon\"}")]
    [InlineData("[1,2]", "{\"sub\":\"alice\",\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"", "{\"sub\":\"alice\",\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"} {}", "{\"sub\":\"alice\",\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":4102444800} x")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"sub\":5,\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":4102444800,\"iat\":\"today\"}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1e40}")]
    [InlineData("{\"x\":{\"alg\":\"HS256\"}}", "{\"sub\":\"alice\",\"exp\":4102444800}")]
    [InlineData("{\"alg\":\"HS256\"}", "{\"x\":{\"sub\":\"alice\",\"exp\":4102444800}}")]
    [InlineData("\"HS256\"", "{\"sub\":\"alice\",\"exp\":4102444800}")]
    public void Tokens_with_bad_header_or_claims_are_rejected_as_malformed(string header, string claims)
    {
        var h = System.Buffers.Text.Base64Url.EncodeToString(Encoding.UTF8.GetBytes(header));
        var c = System.Buffers.Text.Base64Url.EncodeToString(Encoding.UTF8.GetBytes(claims));
        var s = System.Buffers.Text.Base64Url.EncodeToString(HMACSHA256.HashData(_secret.Key, Encoding.ASCII.GetBytes(h + "." + c)));

        Assert.Equal(TokenStatus.Malformed, AccessToken.Verify(_secret, $"{h}.{c}.{s}", Now, out _));
    }

    [Fact]
    public void Only_top_level_claims_count_the_last_of_a_repeated_one_wins_and_a_non_string_device_is_no_device()
    {
        var header = System.Buffers.Text.Base64Url.EncodeToString("{\"typ\":\"JWT\",\"x\":[1,{\"alg\":\"none\"}],\"alg\":\"HS256\"}"u8);
        var claims = System.Buffers.Text.Base64Url.EncodeToString(
            "{\"sub\":\"mallory\",\"nested\":{\"sub\":\"eve\"},\"dev\":7,\"sub\":\"bob\",\"exp\":4102444800}"u8);
        var signature = System.Buffers.Text.Base64Url.EncodeToString(HMACSHA256.HashData(_secret.Key, Encoding.ASCII.GetBytes(header + "." + claims)));

        Assert.Equal(TokenStatus.Valid, AccessToken.Verify(_secret, $"{header}.{claims}.{signature}", Now, out var verified));
        Assert.Equal(("bob", (string?)null), (verified.User, verified.Device));
    }

    [Fact]
    public void Verifying_on_many_threads_with_two_secrets_in_turn_gives_each_its_own_verdict()
    {
        // The keyed HMAC is kept per thread and rebuilt when the secret changes (the previous secret after rotation).
        var other = new TokenSecret(RandomNumberGenerator.GetBytes(32));
        var mine = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);
        var theirs = AccessToken.Issue(other, "bob", null, TimeSpan.FromHours(1), Now);
        Parallel.For(0, 2_000, i =>
        {
            Assert.Equal(TokenStatus.Valid, AccessToken.Verify(i % 2 == 0 ? _secret : other, i % 2 == 0 ? mine : theirs, Now, out _));
            Assert.Equal(TokenStatus.WrongKey, AccessToken.Verify(i % 3 == 0 ? _secret : other, i % 3 == 0 ? theirs : mine, Now, out _));
        });
    }

    [Fact]
    public void Oversized_token_is_rejected_before_decoding()
    {
        Assert.Equal(TokenStatus.Malformed, AccessToken.Verify(_secret, new string('a', AccessToken.MaxLength + 1), Now, out _));
    }

    [Fact]
    public void Secret_file_is_created_once_with_mode_0600_and_reused()
    {
        var dir = Path.Combine(Path.GetTempPath(), "chatbroker-secret-" + Guid.NewGuid().ToString("N"));
        var path = Path.Combine(dir, "nested", "token.secret");
        try
        {
            var first = TokenSecret.LoadOrCreate(path, out var created);
            Assert.True(created);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));

            var second = TokenSecret.LoadOrCreate(path, out created);
            Assert.False(created);
            Assert.Equal(first.KeyId, second.KeyId);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Secret_file_that_is_not_base64_fails_with_its_path()
    {
        var path = Path.Combine(Path.GetTempPath(), "chatbroker-secret-" + Guid.NewGuid().ToString("N"));
        File.WriteAllText(path, "not base64 at all!");
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => TokenSecret.LoadOrCreate(path, out _));
            Assert.Contains(path, e.Message, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    // Issue 18, doc defect: how the HMAC key and kid are derived was unstated (docs/protocol.md §5 now states it).
    [Fact]
    public void The_HMAC_key_is_the_secrets_bytes_and_kid_is_base64url_of_the_first_6_bytes_of_their_SHA256()
    {
        var key = RandomNumberGenerator.GetBytes(32);
        var secret = new TokenSecret(key);
        Assert.Equal(Convert.ToBase64String(SHA256.HashData(key)[..6]).TrimEnd('=').Replace('+', '-').Replace('/', '_'), secret.KeyId);

        var token = AccessToken.Issue(secret, "alice", "phone", TimeSpan.FromHours(1), Now);
        var dot = token.LastIndexOf('.');
        var expected = Convert.ToBase64String(HMACSHA256.HashData(key, Encoding.ASCII.GetBytes(token[..dot]))).TrimEnd('=').Replace('+', '-').Replace('/', '_');
        Assert.Equal(expected, token[(dot + 1)..]);
    }

    // Issue 18: revocation compares the token's iat with the revocation time.
    [Fact]
    public void The_issued_at_claim_is_read_back_and_a_token_without_one_counts_as_issued_at_the_epoch()
    {
        var token = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);
        Assert.Equal(TokenStatus.Valid, AccessToken.Verify(_secret, token, Now, out var claims));
        Assert.Equal(Now, claims.IssuedAt);

        var header = Base64Url.Encode("{\"alg\":\"HS256\",\"typ\":\"JWT\"}"u8);
        var payload = Base64Url.Encode(Encoding.UTF8.GetBytes($"{{\"sub\":\"alice\",\"exp\":{Now.AddHours(1).ToUnixTimeSeconds()}}}"));
        var signature = Base64Url.Encode(HMACSHA256.HashData(_secret.Key, Encoding.ASCII.GetBytes(header + "." + payload)));
        Assert.Equal(TokenStatus.Valid, AccessToken.Verify(_secret, $"{header}.{payload}.{signature}", Now, out claims));
        Assert.Equal(DateTimeOffset.UnixEpoch, claims.IssuedAt);

        var badIat = Base64Url.Encode(Encoding.UTF8.GetBytes($"{{\"sub\":\"alice\",\"iat\":\"x\",\"exp\":{Now.AddHours(1).ToUnixTimeSeconds()}}}"));
        signature = Base64Url.Encode(HMACSHA256.HashData(_secret.Key, Encoding.ASCII.GetBytes(header + "." + badIat)));
        Assert.Equal(TokenStatus.Malformed, AccessToken.Verify(_secret, $"{header}.{badIat}.{signature}", Now, out _));
    }

    // Found by the session fuzzer (issue 18): a mangled token made Verify throw FormatException out of the base64url
    // decoder, which ended the connection without a CONNACK. Every string must get a verdict instead.
    [Fact]
    public void Verify_gives_a_verdict_for_any_mangling_of_a_token_and_never_throws()
    {
        var token = AccessToken.Issue(_secret, "alice", "phone", TimeSpan.FromHours(1), Now);
        const string Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \t\r\n%é\u0000";
        var random = new Random(18);
        for (var i = 0; i < 200_000; i++)
        {
            var chars = token.ToCharArray();
            for (var n = random.Next(1, 4); n > 0; n--)
            {
                chars[random.Next(chars.Length)] = Alphabet[random.Next(Alphabet.Length)];
            }

            var mangled = new string(chars);
            if ((i & 1) == 0)
            {
                // Padding and white space in odd places: what base64 decoders disagree about.
                var segment = new char[random.Next(1, 12)];
                for (var c = 0; c < segment.Length; c++)
                {
                    segment[c] = "QA= \t\r\n"[random.Next(7)];
                }

                mangled = new string(segment) + token[token.IndexOf('.', StringComparison.Ordinal)..];
            }

            try
            {
                AccessToken.Verify(_secret, mangled, Now, out _);
            }
            catch (Exception e)
            {
                Assert.Fail($"{e.GetType().Name} for {mangled}: {e.Message}");
            }
        }
    }
}
