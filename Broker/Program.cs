namespace ChatBroker.Broker;

internal static class Program
{
    public static int Main() => 0;
}
