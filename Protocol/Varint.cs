using System.Numerics;
using System.Runtime.CompilerServices;

namespace ChatBroker.Protocol;

/// <summary>Base-128 varints, least significant group first (protobuf and MQTT use the same scheme).</summary>
internal static class Varint
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int SizeOf(ulong value) => ((63 - BitOperations.LeadingZeroCount(value | 1)) / 7) + 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Write(Span<byte> destination, ulong value)
    {
        var i = 0;
        while (value >= 0x80)
        {
            destination[i++] = (byte)(value | 0x80);
            value >>= 7;
        }

        destination[i++] = (byte)value;
        return i;
    }
}
