namespace ChatBroker.Broker.Transport;

/// <summary>
/// Follows frame boundaries in a byte stream without buffering it, so the WebSocket transport can tell whether a
/// message ended between two frames (the rule: a frame never spans two messages). Reads only each frame's header
/// (docs/protocol.md):
/// <code>
/// +--------+----------------------+----------------------------+
/// | type   | remaining length     | body (remaining length)    |
/// | 1 byte | varint, 1 to 4 bytes | skipped here                |
/// +--------+----------------------+----------------------------+
/// </code>
/// A header the session will refuse (a varint longer than 4 bytes) stops the tracking: the session's own
/// FrameReader reports it with its reason code.
/// </summary>
internal struct FrameBoundary
{
    private long _bodyLeft;
    private int _lengthBytes; // varint bytes read of the current header; -1: at a boundary (expecting a type byte)
    private int _lengthShift;
    private bool _lost;

    public FrameBoundary() => _lengthBytes = -1;

    /// <summary>True when the bytes so far end inside a frame.</summary>
    public readonly bool InFrame => !_lost && (_lengthBytes >= 0 || _bodyLeft > 0);

    public void Advance(ReadOnlySpan<byte> bytes)
    {
        var i = 0;
        while (i < bytes.Length && !_lost)
        {
            if (_bodyLeft > 0)
            {
                var skip = (int)Math.Min(_bodyLeft, bytes.Length - i);
                _bodyLeft -= skip;
                i += skip;
                continue;
            }

            if (_lengthBytes < 0)
            {
                _lengthBytes = 0; // the type byte
                _lengthShift = 0;
                i++;
                continue;
            }

            var b = bytes[i++];
            _bodyLeft |= (long)(b & 0x7F) << _lengthShift;
            _lengthShift += 7;
            _lengthBytes++;
            if ((b & 0x80) == 0)
            {
                _lengthBytes = -1; // header complete; the body follows (none when the length is 0)
            }
            else if (_lengthBytes == 4)
            {
                _lost = true;
            }
        }
    }
}
