using System.Buffers.Binary;
using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.LoadTests;

/// <summary>The DELIVER fields a load receiver checks; the body is a slice of the receive buffer.</summary>
public ref struct DeliverView
{
    public ulong ConversationId;
    public ulong Seq;
    public ulong InboxSeq;
    public ReadOnlySpan<byte> Body;
}

/// <summary>The SENT fields a load sender checks.</summary>
public struct SentView
{
    public ulong ClientMsgId;
    public ulong ConversationId;
    public ulong Seq;
}

/// <summary>
/// The hot packets of a load run, written and read by hand (no protobuf objects, no allocation): SEND and
/// ACK out, SENT and DELIVER in. Everything else goes through Protocol's generated messages. The layouts
/// follow docs/protocol.md §2 and §5; a load body is
/// <code>
///   bytes 0..7   send time, Stopwatch ticks (little-endian) — CLOCK_MONOTONIC, so comparable across processes
///   bytes 8..15  sender's message number (little-endian), for reading a dump
///   rest         filler up to --body-size
/// </code>
/// </summary>
public static class Wire
{
    public const int StampBytes = 16;

    private const byte SendType = 0x30;
    private const byte AckType = 0x40;

    /// <summary>Largest SEND this writes: header 5 + ids 2×11 + to_user 2+128 + body 2+4+body.</summary>
    public static int MaxSendLength(int bodySize) => 5 + 22 + 130 + 6 + bodySize;

    /// <summary>
    /// SEND{client_msg_id, conversation_id | to_user_id, body} with the send stamp in the body. Returns bytes
    /// written. <paramref name="toUserUtf8"/> is used only when <paramref name="conversationId"/> is 0.
    /// </summary>
    public static int WriteSend(Span<byte> destination, ulong clientMsgId, ulong conversationId, ReadOnlySpan<byte> toUserUtf8,
        long stamp, ulong number, int bodySize)
    {
        var bodyLength = Math.Max(bodySize, StampBytes);
        var payload = 1 + VarintLength(clientMsgId)
            + (conversationId != 0 ? 1 + VarintLength(conversationId) : 1 + VarintLength((ulong)toUserUtf8.Length) + toUserUtf8.Length)
            + 1 + VarintLength((ulong)bodyLength) + bodyLength;
        var p = 0;
        destination[p++] = SendType;
        p += WriteVarint(destination[p..], (ulong)payload);
        destination[p++] = (1 << 3) | 0;
        p += WriteVarint(destination[p..], clientMsgId);
        if (conversationId != 0)
        {
            destination[p++] = (2 << 3) | 0;
            p += WriteVarint(destination[p..], conversationId);
        }
        else
        {
            destination[p++] = (3 << 3) | 2;
            p += WriteVarint(destination[p..], (ulong)toUserUtf8.Length);
            toUserUtf8.CopyTo(destination[p..]);
            p += toUserUtf8.Length;
        }

        destination[p++] = (5 << 3) | 2;
        p += WriteVarint(destination[p..], (ulong)bodyLength);
        BinaryPrimitives.WriteInt64LittleEndian(destination[p..], stamp);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[(p + 8)..], number);
        destination.Slice(p + StampBytes, bodyLength - StampBytes).Fill((byte)'x');
        return p + bodyLength;
    }

    /// <summary>ACK{inbox_seq}.</summary>
    public static int WriteAck(Span<byte> destination, ulong inboxSeq)
    {
        var payload = 1 + VarintLength(inboxSeq);
        destination[0] = AckType;
        destination[1] = (byte)payload;
        destination[2] = (1 << 3) | 0;
        return 3 + WriteVarint(destination[3..], inboxSeq);
    }

    public static bool TryReadDeliver(ReadOnlySpan<byte> body, out DeliverView view)
    {
        view = default;
        var p = 0;
        while (p < body.Length)
        {
            if (!TryReadVarint(body, ref p, out var tag))
            {
                return false;
            }

            var field = (int)(tag >> 3);
            var wire = (int)(tag & 7);
            if (wire == 0)
            {
                if (!TryReadVarint(body, ref p, out var value))
                {
                    return false;
                }

                switch (field)
                {
                    case 1: view.ConversationId = value; break;
                    case 2: view.Seq = value; break;
                    case 9: view.InboxSeq = value; break;
                }
            }
            else if (wire == 2)
            {
                if (!TryReadVarint(body, ref p, out var length) || length > (ulong)(body.Length - p))
                {
                    return false;
                }

                if (field == 7)
                {
                    view.Body = body.Slice(p, (int)length);
                }

                p += (int)length;
            }
            else
            {
                return false;
            }
        }

        return view.ConversationId != 0 && view.Seq != 0;
    }

    public static bool TryReadSent(ReadOnlySpan<byte> body, out SentView view)
    {
        view = default;
        var p = 0;
        while (p < body.Length)
        {
            if (!TryReadVarint(body, ref p, out var tag) || (tag & 7) != 0 || !TryReadVarint(body, ref p, out var value))
            {
                return false;
            }

            switch (tag >> 3)
            {
                case 1: view.ClientMsgId = value; break;
                case 2: view.ConversationId = value; break;
                case 3: view.Seq = value; break;
            }
        }

        return view.ClientMsgId != 0 && view.Seq != 0;
    }

    /// <summary>The send stamp of a load body (0 when the body is too short to hold one).</summary>
    public static long ReadStamp(ReadOnlySpan<byte> body) =>
        body.Length >= 8 ? BinaryPrimitives.ReadInt64LittleEndian(body) : 0;

    public static int VarintLength(ulong value)
    {
        var n = 1;
        while (value >= 0x80)
        {
            value >>= 7;
            n++;
        }

        return n;
    }

    private static int WriteVarint(Span<byte> destination, ulong value)
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

    private static bool TryReadVarint(ReadOnlySpan<byte> span, ref int position, out ulong value)
    {
        value = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (position >= span.Length)
            {
                return false;
            }

            var b = span[position++];
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>A generated message as frame bytes (rare packets: CONNECT, DISCONNECT).</summary>
    public static byte[] Frame(Google.Protobuf.IMessage message)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        FrameWriter.Write(buffer, message);
        return buffer.WrittenSpan.ToArray();
    }

    public static byte[] Connect(string user, string device, string token, ulong resumeInboxSeq, uint keepaliveS) => Frame(new Connect
    {
        ProtocolVersion = ProtocolConstants.ProtocolVersion,
        UserId = user,
        DeviceId = device,
        Token = token,
        ResumeInboxSeq = resumeInboxSeq,
        KeepaliveS = keepaliveS,
        ClientInfo = "chatbroker-load",
    });
}
