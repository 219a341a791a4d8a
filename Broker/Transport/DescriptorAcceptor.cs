using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace ChatBroker.Broker.Transport;

/// <summary>
/// A handler that takes a plain TCP connection as a <see cref="PolledSocketTransport"/> over the descriptor the
/// listener accepted, with no .NET <see cref="Socket"/> (the native protocol's and MQTT's, with
/// <c>tcp.readiness_poller</c>). The TLS handler needs a <see cref="Socket"/> for its stream and is not one.
/// </summary>
internal interface IPolledConnectionHandler : ISocketConnectionHandler
{
    /// <summary>The loops accepted connections wait in, or null where the settings or the platform rule them out
    /// (the listener then accepts .NET sockets and calls <see cref="ISocketConnectionHandler.Start"/>).</summary>
    ReadinessPoller? Poller { get; }

    /// <summary>As <see cref="ISocketConnectionHandler.Start"/>, over a transport the listener made.</summary>
    void Start(IDeviceTransport transport, long connectionId, IConnectionOwner owner);
}

/// <summary>
/// <c>accept4</c> on a listening socket's descriptor: the connection comes back as a non-blocking descriptor in a
/// <see cref="DescriptorHandle"/> (32 bytes) and its peer's <c>sockaddr</c>, where .NET's accept makes a
/// <see cref="Socket"/>, its handle and the peer's <c>IPEndPoint</c> (248 bytes held by every idle connection).
/// The listening socket stays blocking: one thread per listener waits in the call, and a <c>shutdown</c> of the
/// listening socket wakes it (Linux returns EINVAL) when the listener stops.
/// </summary>
internal static unsafe partial class DescriptorAcceptor
{
    /// <summary>Room for any peer address (<c>sockaddr_storage</c>).</summary>
    public const int AddressBytes = 128;

    private const int EIntr = 4;
    private const int EAgain = 11;
    private const int EInval = 22;
    private const int EConnAborted = 103;
    private const int ShutRdWr = 2;
    private const int SockNonBlock = 0x800;
    private const int SockCloexec = 0x80000;

    /// <summary>Where the platform has it (Linux; the flag values are x64's and arm64's).</summary>
    public static bool IsSupported => ReadinessPoller.IsSupported;

    /// <summary>
    /// Waits for and accepts one connection on <paramref name="listener"/>. Null with <paramref name="errno"/> set
    /// when the call failed; otherwise the connection's handle, its peer's address in
    /// <paramref name="address"/>[..<paramref name="addressLength"/>] (at least <see cref="AddressBytes"/> long).
    /// </summary>
    public static DescriptorHandle? Accept(SafeSocketHandle listener, Span<byte> address, out int addressLength, out int errno)
    {
        var added = false;
        try
        {
            listener.DangerousAddRef(ref added);
            int length = address.Length;
            int fd;
            fixed (byte* p = address)
            {
                fd = accept4((int)listener.DangerousGetHandle(), p, &length, SockNonBlock | SockCloexec);
            }

            if (fd < 0)
            {
                errno = Marshal.GetLastPInvokeError();
                addressLength = 0;
                return null;
            }

            errno = 0;
            addressLength = Math.Min(length, address.Length);
            return new DescriptorHandle(fd);
        }
        catch (ObjectDisposedException)
        {
            errno = EInval; // the listener is closed, as a shut-down listening socket answers
            addressLength = 0;
            return null;
        }
        finally
        {
            if (added)
            {
                listener.DangerousRelease();
            }
        }
    }

    /// <summary>A failed <see cref="Accept"/> worth retrying at once: interrupted, or the peer reset before the accept.</summary>
    public static bool IsTransient(int errno) => errno is EIntr or EAgain or EConnAborted;

    /// <summary>
    /// <c>shutdown(SHUT_RDWR)</c> of the descriptor under its handle's reference count (nothing when it is closed):
    /// a connection's peer sees the end even while a send still holds the handle; a thread waiting in
    /// <see cref="Accept"/> on a listening socket returns (EINVAL).
    /// </summary>
    public static void Shutdown(SafeHandle handle)
    {
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            _ = shutdown((int)handle.DangerousGetHandle(), ShutRdWr);
        }
        catch (ObjectDisposedException)
        {
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int accept4(int fd, byte* address, int* addressLength, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int shutdown(int fd, int how);
}

/// <summary>
/// An accepted connection's descriptor, closed with a plain <c>close</c> when the last call using it has returned
/// (a graceful close: what was sent is delivered, then FIN). Not a <see cref="SafeSocketHandle"/>: disposing one of
/// those other than through its <see cref="Socket"/> closes abortively (linger 0: RST, unsent bytes dropped), and it
/// holds twice the bytes.
/// </summary>
internal sealed partial class DescriptorHandle : SafeHandleMinusOneIsInvalid
{
    public DescriptorHandle(int fd)
        : base(ownsHandle: true) => SetHandle(fd);

    protected override bool ReleaseHandle() => close((int)handle) == 0;

    /// <summary>A second descriptor for the same connection, owned by the caller (-1 when the handle is closed or dup failed).</summary>
    public int Duplicate()
    {
        var added = false;
        try
        {
            DangerousAddRef(ref added);
            return fcntl(DangerousGetHandle().ToInt32(), FDupFdCloexec, 0);
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
        finally
        {
            if (added)
            {
                DangerousRelease();
            }
        }
    }

    private const int FDupFdCloexec = 1030;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int command, int argument);
}
