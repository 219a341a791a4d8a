namespace ChatBroker.LoadTests;

internal static class Program
{
    public static int Main() => 0;
}
