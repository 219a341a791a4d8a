using System.Security.Cryptography;

namespace ChatBroker.Tokens;

/// <summary>
/// The HMAC key that signs and verifies device tokens. It is generated on a node's first start (32 random
/// bytes, stored base64 in a file of mode 0600) and reused afterwards, so tokens stay valid across restarts.
/// </summary>
public sealed class TokenSecret
{
    public const int MinimumBytes = 32;

    private readonly byte[] _key;

    public TokenSecret(byte[] key)
    {
        if (key.Length < MinimumBytes)
        {
            throw new ArgumentException($"A token secret must be at least {MinimumBytes} bytes.", nameof(key));
        }

        _key = key;
        KeyId = ComputeKeyId(key);
    }

    /// <summary>
    /// A short public fingerprint of the key (first 6 bytes of SHA-256, base64url) carried in each token's
    /// header as <c>kid</c>. It lets the broker tell "signed with another secret" from "tampered with".
    /// </summary>
    public string KeyId { get; }

    internal ReadOnlySpan<byte> Key => _key;

    public static TokenSecret FromBase64(string base64) => new(Convert.FromBase64String(base64));

    /// <summary>Reads the secret file, creating it (mode 0600, parent directories included) when missing.</summary>
    public static TokenSecret LoadOrCreate(string path, out bool created)
    {
        created = false;
        if (!File.Exists(path))
        {
            var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
            Directory.CreateDirectory(directory);
            var key = RandomNumberGenerator.GetBytes(MinimumBytes);
            var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
            if (!OperatingSystem.IsWindows())
            {
                options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            }

            try
            {
                using var stream = new FileStream(path, options);
                using var writer = new StreamWriter(stream);
                writer.WriteLine(Convert.ToBase64String(key));
                created = true;
                return new TokenSecret(key);
            }
            catch (IOException) when (File.Exists(path))
            {
                // Another process created it between our check and our create: read theirs.
            }
        }

        var text = File.ReadAllText(path).Trim();
        byte[] bytes;
        try
        {
            bytes = Convert.FromBase64String(text);
        }
        catch (FormatException)
        {
            throw new InvalidDataException($"Token secret file {path} does not hold base64 text.");
        }

        if (bytes.Length < MinimumBytes)
        {
            throw new InvalidDataException($"Token secret in {path} is {bytes.Length} bytes; at least {MinimumBytes} are required.");
        }

        return new TokenSecret(bytes);
    }

    private static string ComputeKeyId(byte[] key)
    {
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(key, hash);
        return Base64Url.Encode(hash[..6]);
    }
}
