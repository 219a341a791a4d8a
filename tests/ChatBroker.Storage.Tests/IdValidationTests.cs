using ChatBroker.Storage.Codec;

namespace ChatBroker.Storage.Tests;

/// <summary>Ids are 1..MaxIdBytes UTF-8 bytes, whatever the characters (the short-id shortcut skips the count only where it cannot matter).</summary>
public sealed class IdValidationTests
{
    [Theory]
    [InlineData("a", 1)]
    [InlineData("a", Records.MaxIdBytes)]
    [InlineData("é", Records.MaxIdBytes / 2)] // 2 bytes each
    [InlineData("€", Records.MaxIdBytes / 3)] // 3 bytes each: the longest id the shortcut passes uncounted
    [InlineData("😀", Records.MaxIdBytes / 4)] // a surrogate pair: 2 chars, 4 bytes
    public void Ids_up_to_the_limit_in_bytes_pass(string unit, int count) =>
        Records.ValidateId(string.Concat(Enumerable.Repeat(unit, count)), "id");

    [Theory]
    [InlineData("a", Records.MaxIdBytes + 1)]
    [InlineData("é", (Records.MaxIdBytes / 2) + 1)]
    [InlineData("€", (Records.MaxIdBytes / 3) + 1)] // 1,026 bytes in 342 chars
    [InlineData("😀", (Records.MaxIdBytes / 4) + 1)]
    [InlineData("a", 0)]
    public void Ids_over_the_limit_in_bytes_or_empty_are_refused(string unit, int count) =>
        Assert.Throws<ArgumentException>(() => Records.ValidateId(string.Concat(Enumerable.Repeat(unit, count)), "id"));

    [Fact]
    public void Lone_surrogates_count_as_the_three_bytes_of_their_replacement()
    {
        Records.ValidateId(new string('\uD800', Records.MaxIdBytes / 3), "id");
        Assert.Throws<ArgumentException>(() => Records.ValidateId(new string('\uD800', (Records.MaxIdBytes / 3) + 1), "id"));
    }
}
