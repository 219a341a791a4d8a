using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

/// <summary>
/// The layout of the store's `mqtt` family (docs/storage.md lists it; change both together). Integers big-endian,
/// `str` a u16 byte length then UTF-8, `blob` a u32 length then bytes, `opt` a u8 0/1 then the value when 1.
/// <code>
/// S ‖ str user ‖ str client id ‖ 00              session: u8 format (1) ‖ u32 expiry s ‖ i64 disconnected at (unix ms, 0 = was connected)
/// S ‖ str user ‖ str client id ‖ 01              subscriptions: u16 n ‖ n × (str filter ‖ u8 QoS ‖ u8 flags (1 No Local, 2 Retain As Published) ‖ u32 subscription id)
/// S ‖ str user ‖ str client id ‖ 02 ‖ u16 id     inbound QoS 2 awaiting PUBREL: u64 client_msg_id (0: general topic space)
/// S ‖ str user ‖ str client id ‖ 03 ‖ u64 n      message n: u8 stage (0 queued, 1 awaiting PUBACK, 2 PUBREC, 3 PUBCOMP) ‖ u16 packet id ‖ u8 QoS ‖ message
/// R ‖ topic (UTF-8, the rest of the key)        retained message: u8 QoS ‖ message
/// message = u8 flags (1 retain) ‖ str topic ‖ u8 payload format ‖ u32 expiry interval ‖ opt str content type ‖
///           opt str response topic ‖ opt blob correlation data ‖ u16 n ‖ n × (str name ‖ blob value) ‖ payload (the rest)
/// </code>
/// The user's id is empty for an anonymous client. Keys sort so that a session's records are contiguous, its session
/// record first and its messages in number order.
/// </summary>
internal static class MqttStateRecords
{
    public const byte SessionTag = (byte)'S';
    public const byte RetainedTag = (byte)'R';
    public const byte MetaKind = 0;
    public const byte SubscriptionsKind = 1;
    public const byte AwaitingKind = 2;
    public const byte MessageKind = 3;
    private const byte Format = 1;

    public static byte[] SessionPrefix(string user, string clientId)
    {
        var w = new ArrayBufferWriter<byte>(8 + user.Length + clientId.Length);
        w.Write([SessionTag]);
        Str(w, user);
        Str(w, clientId);
        return w.WrittenSpan.ToArray();
    }

    public static byte[] Key(byte[] sessionPrefix, byte kind) => [.. sessionPrefix, kind];

    public static byte[] AwaitingKey(byte[] sessionPrefix, ushort packetId)
    {
        var key = new byte[sessionPrefix.Length + 3];
        sessionPrefix.CopyTo(key, 0);
        key[sessionPrefix.Length] = AwaitingKind;
        BinaryPrimitives.WriteUInt16BigEndian(key.AsSpan(sessionPrefix.Length + 1), packetId);
        return key;
    }

    public static byte[] MessageKey(byte[] sessionPrefix, ulong number)
    {
        var key = new byte[sessionPrefix.Length + 9];
        sessionPrefix.CopyTo(key, 0);
        key[sessionPrefix.Length] = MessageKind;
        BinaryPrimitives.WriteUInt64BigEndian(key.AsSpan(sessionPrefix.Length + 1), number);
        return key;
    }

    public static byte[] RetainedKey(string topic)
    {
        var key = new byte[1 + Encoding.UTF8.GetByteCount(topic)];
        key[0] = RetainedTag;
        Encoding.UTF8.GetBytes(topic, key.AsSpan(1));
        return key;
    }

    public static byte[] MetaValue(uint expirySeconds, long disconnectedAtUnixMs)
    {
        var value = new byte[13];
        value[0] = Format;
        BinaryPrimitives.WriteUInt32BigEndian(value.AsSpan(1), expirySeconds);
        BinaryPrimitives.WriteInt64BigEndian(value.AsSpan(5), disconnectedAtUnixMs);
        return value;
    }

    public static byte[] SubscriptionsValue(List<MqttSubscription> subscriptions)
    {
        var w = new ArrayBufferWriter<byte>(64);
        U16(w, (ushort)subscriptions.Count);
        foreach (var s in subscriptions)
        {
            Str(w, s.Filter);
            w.Write([s.Qos, (byte)((s.NoLocal ? 1 : 0) | (s.RetainAsPublished ? 2 : 0))]);
            U32(w, s.Identifier);
        }

        return w.WrittenSpan.ToArray();
    }

    public static byte[] AwaitingValue(ulong clientMsgId)
    {
        var value = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(value, clientMsgId);
        return value;
    }

    public static byte[] MessageValue(MqttOutgoingStage? stage, ushort packetId, byte qos, MqttMessage message)
    {
        var w = new ArrayBufferWriter<byte>(64 + message.Payload.Length);
        w.Write([stage is null ? (byte)0 : (byte)((byte)stage.Value + 1)]);
        U16(w, packetId);
        w.Write([qos]);
        Message(w, message);
        return w.WrittenSpan.ToArray();
    }

    public static byte[] RetainedValue(MqttMessage message)
    {
        var w = new ArrayBufferWriter<byte>(64 + message.Payload.Length);
        w.Write([message.Qos]);
        Message(w, message);
        return w.WrittenSpan.ToArray();
    }

    private static void Message(ArrayBufferWriter<byte> w, MqttMessage m)
    {
        w.Write([(byte)(m.Retain ? 1 : 0)]);
        Str(w, m.Topic);
        w.Write([(byte)m.PayloadFormat]);
        U32(w, m.ExpiryInterval);
        OptStr(w, m.ContentType);
        OptStr(w, m.ResponseTopic);
        if (m.CorrelationData is null)
        {
            w.Write<byte>([0]);
        }
        else
        {
            w.Write<byte>([1]);
            U32(w, (uint)m.CorrelationData.Length);
            w.Write(m.CorrelationData);
        }

        var properties = m.UserProperties;
        U16(w, (ushort)(properties?.Count ?? 0));
        foreach (var p in properties ?? [])
        {
            Str(w, p.Name);
            U32(w, (uint)p.ValueBuffer.Length);
            w.Write(p.ValueBuffer.Span);
        }

        w.Write(m.Payload.Span);
    }

    private static void Str(ArrayBufferWriter<byte> w, string s)
    {
        var length = Encoding.UTF8.GetByteCount(s);
        if (length > ushort.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(s), "a string of the mqtt family is at most 65,535 bytes");
        }

        U16(w, (ushort)length);
        Encoding.UTF8.GetBytes(s, w.GetSpan(length));
        w.Advance(length);
    }

    private static void OptStr(ArrayBufferWriter<byte> w, string? s)
    {
        w.Write([(byte)(s is null ? 0 : 1)]);
        if (s is not null)
        {
            Str(w, s);
        }
    }

    private static void U16(ArrayBufferWriter<byte> w, ushort v)
    {
        BinaryPrimitives.WriteUInt16BigEndian(w.GetSpan(2), v);
        w.Advance(2);
    }

    private static void U32(ArrayBufferWriter<byte> w, uint v)
    {
        BinaryPrimitives.WriteUInt32BigEndian(w.GetSpan(4), v);
        w.Advance(4);
    }

    // ---- reading: every length is checked against what is left; a short or bad record throws FormatException ----

    /// <summary>A decoded session key: the session's prefix length, its user and client id, and what follows.</summary>
    public static (string User, string ClientId, int PrefixLength) ReadSessionKey(ReadOnlySpan<byte> key)
    {
        var r = new Reader(key);
        if (r.U8() != SessionTag)
        {
            throw new FormatException("not a session key");
        }

        var user = r.Str();
        var clientId = r.Str();
        return (user, clientId, key.Length - r.Left);
    }

    public static (uint ExpirySeconds, long DisconnectedAtUnixMs) ReadMeta(ReadOnlySpan<byte> value)
    {
        var r = new Reader(value);
        if (r.U8() != Format)
        {
            throw new FormatException("unknown session record format");
        }

        return (r.U32(), (long)r.U64());
    }

    public static List<(string Filter, byte Qos, bool NoLocal, bool RetainAsPublished, uint Id)> ReadSubscriptions(ReadOnlySpan<byte> value)
    {
        var r = new Reader(value);
        var count = r.U16();
        var result = new List<(string, byte, bool, bool, uint)>(Math.Min((int)count, 128));
        for (var i = 0; i < count; i++)
        {
            var filter = r.Str();
            var qos = r.U8();
            var flags = r.U8();
            result.Add((filter, qos, (flags & 1) != 0, (flags & 2) != 0, r.U32()));
        }

        return result;
    }

    public static ushort ReadU16(ReadOnlySpan<byte> span) => span.Length >= 2 ? BinaryPrimitives.ReadUInt16BigEndian(span) : throw new FormatException("short record");

    public static ulong ReadU64(ReadOnlySpan<byte> span) => span.Length >= 8 ? BinaryPrimitives.ReadUInt64BigEndian(span) : throw new FormatException("short record");

    public static (MqttOutgoingStage? Stage, ushort PacketId, byte Qos, MqttMessage Message) ReadMessage(ReadOnlySpan<byte> value)
    {
        var r = new Reader(value);
        var stage = r.U8();
        var packetId = r.U16();
        var qos = r.U8();
        if (stage > 3 || qos is 0 or > 2)
        {
            throw new FormatException("bad message record");
        }

        return (stage == 0 ? null : (MqttOutgoingStage)(stage - 1), packetId, qos, Message(ref r, qos));
    }

    public static MqttMessage ReadRetained(ReadOnlySpan<byte> value)
    {
        var r = new Reader(value);
        var qos = r.U8();
        if (qos > 2)
        {
            throw new FormatException("bad retained record");
        }

        return Message(ref r, qos);
    }

    private static MqttMessage Message(ref Reader r, byte qos)
    {
        var retain = (r.U8() & 1) != 0;
        var topic = r.Str();
        var format = (MqttPayloadFormatIndicator)r.U8();
        var expiry = r.U32();
        var contentType = r.U8() == 1 ? r.Str() : null;
        var responseTopic = r.U8() == 1 ? r.Str() : null;
        var correlation = r.U8() == 1 ? r.Bytes(r.U32()).ToArray() : null;
        var count = r.U16();
        List<MqttUserProperty>? properties = count == 0 ? null : new(Math.Min((int)count, 64));
        for (var i = 0; i < count; i++)
        {
            var name = r.Str();
            properties!.Add(new MqttUserProperty(name, r.Bytes(r.U32()).ToArray()));
        }

        return new MqttMessage(topic, r.Rest().ToArray(), qos, retain, null, properties, contentType, responseTopic, correlation, format, expiry);
    }

    private ref struct Reader(ReadOnlySpan<byte> span)
    {
        private ReadOnlySpan<byte> _rest = span;

        public readonly int Left => _rest.Length;

        public ReadOnlySpan<byte> Bytes(uint count)
        {
            if (count > (uint)_rest.Length)
            {
                throw new FormatException("short record");
            }

            var bytes = _rest[..(int)count];
            _rest = _rest[(int)count..];
            return bytes;
        }

        public byte U8() => Bytes(1)[0];

        public ushort U16() => BinaryPrimitives.ReadUInt16BigEndian(Bytes(2));

        public uint U32() => BinaryPrimitives.ReadUInt32BigEndian(Bytes(4));

        public ulong U64() => BinaryPrimitives.ReadUInt64BigEndian(Bytes(8));

        public string Str() => Encoding.UTF8.GetString(Bytes(U16()));

        public ReadOnlySpan<byte> Rest()
        {
            var rest = _rest;
            _rest = default;
            return rest;
        }
    }
}
