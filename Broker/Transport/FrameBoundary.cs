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
    // Header bytes read of the current frame: 0 at a boundary (the zero value: a default instance is ready),
    // 1 after the type byte, 1 + n after n bytes of the length.
    private int _headerBytes;
    private int _lengthShift;
    private bool _lost;

    // While the header is read, _bodyLeft accumulates the length; once it is complete, what is left of the body.
    /// <summary>True when the bytes so far end inside a frame.</summary>
    public readonly bool InFrame => !_lost && (_headerBytes > 0 || _bodyLeft > 0);

    public void Advance(ReadOnlySpan<byte> bytes)
    {
        var i = 0;
        while (i < bytes.Length && !_lost)
        {
            if (_headerBytes == 0 && _bodyLeft > 0)
            {
                var skip = (int)Math.Min(_bodyLeft, bytes.Length - i);
                _bodyLeft -= skip;
                i += skip;
                continue;
            }

            if (_headerBytes == 0)
            {
                _headerBytes = 1; // the type byte
                _lengthShift = 0;
                i++;
                continue;
            }

            var b = bytes[i++];
            _bodyLeft |= (long)(b & 0x7F) << _lengthShift;
            _lengthShift += 7;
            _headerBytes++;
            if ((b & 0x80) == 0)
            {
                _headerBytes = 0; // header complete; the body follows (none when the length is 0)
            }
            else if (_headerBytes == 5)
            {
                _lost = true;
            }
        }
    }
}
