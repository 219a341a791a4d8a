using System.Text;

namespace ChatBroker.Storage.Tests;

/// <summary>A clock the test moves by hand.</summary>
internal sealed class ManualClock(DateTimeOffset start) : TimeProvider
{
    private long _ticks = start.UtcTicks;

    public override DateTimeOffset GetUtcNow() => new(Interlocked.Read(ref _ticks), TimeSpan.Zero);

    public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);
}

/// <summary>A fresh directory under the temp path, deleted on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory() =>
        Path = Directory.CreateDirectory(System.IO.Path.Combine(System.IO.Path.GetTempPath(), "chatbroker-storage-" + Guid.NewGuid().ToString("N"))).FullName;

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

internal static class Messages
{
    public static AppendRequest To(ulong conversation, string text, ulong clientMsgId = 0, string sender = "alice", string device = "phone") => new()
    {
        ConversationId = conversation,
        SenderUserId = sender,
        SenderDeviceId = device,
        ClientMsgId = clientMsgId,
        ContentType = 1,
        Body = Encoding.UTF8.GetBytes(text),
    };

    public static string Text(this StoredMessage message) => Encoding.UTF8.GetString(message.Body.Span);
}
