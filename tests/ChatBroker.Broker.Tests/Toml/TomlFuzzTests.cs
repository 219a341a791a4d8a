using System.Text;
using ChatBroker.Broker.Configuration.Toml;

namespace ChatBroker.Broker.Tests.Toml;

public class TomlFuzzTests
{
    private const string Seed = """"
        # ChatBroker configuration
        title = "broker \"main\" \u00e9"
        [server]
        listen = '0.0.0.0:7000'
        max_frame_bytes = 65_536
        ratio = -1.5e-3
        flags = 0xff_ff
        mode = 0o755
        mask = 0b1010
        enabled = true
        note = """
          multi \
          line"""
        raw = '''
        C:\path'''
        [server.tls]
        "quoted key" = inf
        a.b.c = nan
        [cluster]
        nodes = [
          { name = "node-a", weight = 1 },   # first
          { name = "node-b", tags = ["x", 'y', 2] },
        ]
        empty = {}
        """";

    // Characters that steer the parser into its edge cases: delimiters, escapes, digits, number
    // prefixes, newlines, controls, a lone surrogate and a surrogate pair.
    private static readonly string[] Alphabet =
    [
        "[", "]", "{", "}", "\"", "'", "=", ".", ",", "#", "\n", "\r", "\r\n", "\\", "_", "-", "+",
        "0", "1", "9", "e", "E", "x", "o", "b", "i", "n", "f", "t", "u", "U", ":", " ", "\t",
        "\u0000", "\u007F", "\uD800", "\uDC00", "é", "😀", "\"\"\"", "'''", "[[", "inf", "nan", "true",
    ];

    [Fact]
    public void Random_mutations_of_a_valid_document_either_parse_or_fail_with_a_positioned_parse_error()
    {
        // The unmutated document must parse, or the mutations below test nothing interesting.
        TomlDocument.Parse(Seed, "seed.toml").Flatten();

        var random = new Random(20261125);
        int failures = 0;
        for (int iteration = 0; iteration < 2000; iteration++)
        {
            string text = Mutate(Seed, random);
            try
            {
                TomlDocument document = TomlDocument.Parse(text, "fuzz.toml");
                document.Flatten();
                document.EmptyContainers();
            }
            catch (TomlParseException ex)
            {
                failures++;
                int lines = text.Split('\n').Length;
                Assert.True(ex.Position.Line >= 1 && ex.Position.Line <= lines, $"line {ex.Position.Line} outside 1..{lines} for: {Escape(text)}");
                Assert.True(ex.Position.Column >= 1, $"column {ex.Position.Column} for: {Escape(text)}");
                Assert.StartsWith($"fuzz.toml:{ex.Position.Line}:{ex.Position.Column}: ", ex.Message, StringComparison.Ordinal);
            }
            catch (Exception ex)
            {
                Assert.Fail($"iteration {iteration}: {ex.GetType().Name}: {ex.Message}\ninput: {Escape(text)}");
            }
        }

        // Most mutations break the document; if none did, the mutator is broken.
        Assert.InRange(failures, 500, 2000);
    }

    [Fact]
    public void Every_prefix_of_a_valid_document_either_parses_or_fails_with_a_parse_error()
    {
        for (int length = 0; length <= Seed.Length; length++)
        {
            string text = Seed[..length];
            try
            {
                TomlDocument.Parse(text, "prefix.toml").Flatten();
            }
            catch (TomlParseException)
            {
            }
            catch (Exception ex)
            {
                Assert.Fail($"prefix of length {length}: {ex.GetType().Name}: {ex.Message}\ninput: {Escape(text)}");
            }
        }
    }

    private static string Mutate(string text, Random random)
    {
        var sb = new StringBuilder(text);
        int count = random.Next(1, 4);
        for (int i = 0; i < count; i++)
        {
            int at = random.Next(sb.Length + 1);
            switch (random.Next(5))
            {
                case 0 when sb.Length > 0 && at < sb.Length:
                    sb.Remove(at, Math.Min(random.Next(1, 4), sb.Length - at));
                    break;
                case 1 when at < sb.Length:
                    sb[at] = Alphabet[random.Next(Alphabet.Length)][0];
                    break;
                case 2 when sb.Length > 0:
                    int start = random.Next(sb.Length);
                    int length = Math.Min(random.Next(1, 20), sb.Length - start);
                    sb.Insert(at, sb.ToString(start, length));
                    break;
                case 3:
                    sb.Length = at;
                    break;
                default:
                    sb.Insert(at, Alphabet[random.Next(Alphabet.Length)]);
                    break;
            }
        }

        return sb.ToString();
    }

    private static string Escape(string text)
    {
        var sb = new StringBuilder();
        foreach (char c in text)
        {
            sb.Append(c is < ' ' or > '~' ? $"\\u{(int)c:X4}" : c.ToString());
        }

        return sb.ToString();
    }
}
