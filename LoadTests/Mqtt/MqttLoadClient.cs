using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using MQTTnet.Formatter;
using MQTTnet.Formatter.V3;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.LoadTests.Mqtt;

/// <summary>
/// A lean MQTT 3.1.1 client for the harness, usable against any MQTT broker. CONNECT and SUBSCRIBE are encoded by MQTTnet's
/// formatter (the codec the broker wraps); PUBLISH and PUBACK, the hot path, are written straight into the caller's
/// buffer (fixed layouts, no allocation per message).
/// <code>
/// PUBLISH QoS 1: 0x32 | remaining length | topic length (2) | topic | packet id (2) | payload
/// PUBACK:        0x40 | 0x02 | packet id (2)
/// </code>
/// </summary>
internal sealed class MqttLoadClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private byte[] _buffer;
    private int _start;
    private int _end;

    private MqttLoadClient(Socket socket, int bufferBytes)
    {
        _socket = socket;
        _buffer = new byte[bufferBytes];
    }

    /// <summary>Connects (clean session). <paramref name="bufferBytes"/>: the receive buffer to start with (it grows
    /// when a packet needs more); an idle client of the `connections` scenario keeps it small.</summary>
    public static async Task<MqttLoadClient> ConnectAsync(IPEndPoint target, IPAddress? source, string clientId, string? user, string? password, CancellationToken cancellationToken, int bufferBytes = 64 * 1024)
    {
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (source is not null)
        {
            socket.Bind(new IPEndPoint(source, 0));
        }

        await socket.ConnectAsync(target, cancellationToken).ConfigureAwait(false);
        var client = new MqttLoadClient(socket, bufferBytes);
        var connect = new MqttConnectPacket
        {
            ClientId = clientId,
            CleanSession = true,
            KeepAlivePeriod = 3600,
            Username = user,
            Password = password is null ? null : Encoding.UTF8.GetBytes(password),
        };
        await client.SendAsync(Encode(connect), cancellationToken).ConfigureAwait(false);
        var (header, body) = await client.ReadOneAsync(cancellationToken).ConfigureAwait(false);
        if (header >> 4 != (int)MqttControlPacketType.ConnAck || body.Length < 2 || body[1] != 0)
        {
            socket.Dispose();
            throw new InvalidOperationException($"CONNECT of {clientId} refused (return code {(body.Length > 1 ? body[1] : -1)})");
        }

        return client;
    }

    public async Task SubscribeAsync(string filter, byte qos, CancellationToken cancellationToken)
    {
        await SendAsync(Encode(new MqttSubscribePacket
        {
            PacketIdentifier = 1,
            TopicFilters = [new MqttTopicFilter { Topic = filter, QualityOfServiceLevel = (MqttQualityOfServiceLevel)qos }],
        }), cancellationToken).ConfigureAwait(false);
        var (header, body) = await ReadOneAsync(cancellationToken).ConfigureAwait(false);
        if (header >> 4 != (int)MqttControlPacketType.SubAck || body.Length < 3 || body[2] >= 0x80)
        {
            throw new InvalidOperationException($"SUBSCRIBE to {filter} refused");
        }
    }

    private static byte[] Encode(MqttPacket packet)
    {
        var formatter = new MqttV3PacketFormatter(new MqttBufferWriter(4096, 65536), MqttProtocolVersion.V311);
        return formatter.Encode(packet).Join().ToArray();
    }

    /// <summary>A blocking send of all of <paramref name="bytes"/> (the paced sender's thread).</summary>
    public void Send(ReadOnlySpan<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            bytes = bytes[_socket.Send(bytes, SocketFlags.None)..];
        }
    }

    public ValueTask<int> SendAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken) =>
        _socket.SendAsync(bytes, SocketFlags.None, cancellationToken);

    /// <summary>Receives more bytes; false when the connection closed.</summary>
    public async ValueTask<bool> ReceiveAsync(CancellationToken cancellationToken)
    {
        if (_start > 0 && _start == _end)
        {
            _start = _end = 0;
        }
        else if (_end == _buffer.Length)
        {
            if (_start > 0)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }
            else
            {
                Array.Resize(ref _buffer, _buffer.Length * 2);
            }
        }

        var n = await _socket.ReceiveAsync(_buffer.AsMemory(_end), SocketFlags.None, cancellationToken).ConfigureAwait(false);
        _end += n;
        return n > 0;
    }

    /// <summary>The next whole packet in the buffer (its body is valid until the next receive).</summary>
    public bool TryRead(out byte header, out ReadOnlySpan<byte> body)
    {
        header = 0;
        body = default;
        var available = _end - _start;
        if (available < 2)
        {
            return false;
        }

        var length = 0;
        var shift = 0;
        var i = 1;
        while (true)
        {
            if (i >= available)
            {
                return false;
            }

            var b = _buffer[_start + i++];
            length |= (b & 0x7F) << shift;
            shift += 7;
            if ((b & 0x80) == 0)
            {
                break;
            }

            if (i > 4)
            {
                throw new InvalidDataException("malformed remaining length");
            }
        }

        if (available < i + length)
        {
            return false;
        }

        header = _buffer[_start];
        body = _buffer.AsSpan(_start + i, length);
        _start += i + length;
        return true;
    }

    private async Task<(byte Header, byte[] Body)> ReadOneAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            if (TryRead(out var header, out var body))
            {
                return (header, body.ToArray());
            }

            if (!await ReceiveAsync(cancellationToken).ConfigureAwait(false))
            {
                throw new IOException("the broker closed the connection");
            }
        }
    }

    /// <summary>Length of a QoS 1 PUBLISH of <paramref name="payloadLength"/> bytes to a topic of <paramref name="topicLength"/> bytes.</summary>
    public static int PublishLength(int topicLength, int payloadLength)
    {
        var remaining = 2 + topicLength + 2 + payloadLength;
        return 1 + (remaining < 128 ? 1 : remaining < 16384 ? 2 : 3) + remaining;
    }

    public static int WritePublish(Span<byte> destination, ReadOnlySpan<byte> topic, ushort packetId, ReadOnlySpan<byte> payload)
    {
        var remaining = 2 + topic.Length + 2 + payload.Length;
        var p = 0;
        destination[p++] = 0x32; // PUBLISH, QoS 1
        while (true)
        {
            var b = (byte)(remaining & 0x7F);
            remaining >>= 7;
            destination[p++] = remaining > 0 ? (byte)(b | 0x80) : b;
            if (remaining == 0)
            {
                break;
            }
        }

        BinaryPrimitives.WriteUInt16BigEndian(destination[p..], (ushort)topic.Length);
        p += 2;
        topic.CopyTo(destination[p..]);
        p += topic.Length;
        BinaryPrimitives.WriteUInt16BigEndian(destination[p..], packetId);
        p += 2;
        payload.CopyTo(destination[p..]);
        return p + payload.Length;
    }

    public static int WritePubAck(Span<byte> destination, ushort packetId)
    {
        destination[0] = 0x40;
        destination[1] = 2;
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], packetId);
        return 4;
    }

    /// <summary>The payload and packet id of a PUBLISH body (3.1.1; <paramref name="header"/> gives the QoS).</summary>
    public static ReadOnlySpan<byte> PublishPayload(byte header, ReadOnlySpan<byte> body, out ushort packetId)
    {
        var topicLength = BinaryPrimitives.ReadUInt16BigEndian(body);
        var p = 2 + topicLength;
        packetId = 0;
        if ((header & 0x06) != 0)
        {
            packetId = BinaryPrimitives.ReadUInt16BigEndian(body[p..]);
            p += 2;
        }

        return body[p..];
    }

    public void Close()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }

        _socket.Close();
    }

    public ValueTask DisposeAsync()
    {
        Close();
        return ValueTask.CompletedTask;
    }
}
