using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;

namespace ChatBroker.Client;

/// <summary>The writer loop (the only code that writes to the socket) and the keepalive loop.</summary>
public sealed partial class ChatClient
{
    // Flush inside a long batch once this much is buffered, so a burst of sends does not grow one huge buffer.
    private const int FlushThreshold = 64 * 1024;

    private static readonly Ping PingMessage = new();

    // SENDs the writer loop holds while the send gate is closed (writer loop only; loops never overlap).
    private readonly List<PendingOperation> _heldSends = [];

    /// <summary>
    /// Drains the client's outbound queue into the socket: every frame available is written into the
    /// PipeWriter, then one flush, so a burst of pipelined sends costs one syscall. It first re-sends every
    /// pending request in client_msg_id order (sends with DUP if they were written before).
    /// </summary>
    private async Task WriteLoopAsync(Connection connection)
    {
        var writer = connection.Writer;
        var token = connection.Token;
        try
        {
            // A new connection has a fresh rate budget, and ResendPending covers whatever was held or refused.
            _heldSends.Clear();
            lock (_lock)
            {
                _refusedSends.Clear();
                _sendGateUntil = 0;
            }

            ResendPending(connection);
            await FlushAsync(connection).ConfigureAwait(false);
            var queue = _outbound.Reader;
            while (await queue.WaitToReadAsync(token).ConfigureAwait(false))
            {
                while (queue.TryRead(out var item))
                {
                    if (!Write(connection, item))
                    {
                        await FlushAsync(connection).ConfigureAwait(false);
                        connection.Fail(new SessionEnd(ReasonCode.NormalDisconnect, "disconnected by the app", TimeSpan.Zero));
                        return;
                    }

                    if (writer.UnflushedBytes >= FlushThreshold)
                    {
                        await FlushAsync(connection).ConfigureAwait(false);
                    }
                }

                await FlushAsync(connection).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or System.Net.Sockets.SocketException)
        {
            connection.Fail(new SessionEnd(ReasonCode.Success, e.Message, TimeSpan.Zero));
        }
        finally
        {
            connection.Fail(new SessionEnd(ReasonCode.Success, "connection lost", TimeSpan.Zero));
        }
    }

    private async ValueTask FlushAsync(Connection connection)
    {
        if (connection.Writer.UnflushedBytes == 0)
        {
            return;
        }

        var result = await connection.Writer.FlushAsync(connection.Token).ConfigureAwait(false);
        Volatile.Write(ref connection.LastWrite, _time.GetTimestamp());
        if (result.IsCompleted || result.IsCanceled)
        {
            throw new OperationCanceledException();
        }
    }

    private void ResendPending(Connection connection)
    {
        PendingSend[] sends;
        PendingHistory[] histories;
        PendingSettings[] settings;
        lock (_lock)
        {
            sends = [.. _pendingSends.Values];
            histories = [.. _pendingHistory.Values];
            settings = [.. _pendingSettings.Values];
        }

        if (sends.Length > 1)
        {
            // Same order as first sent: SENTs of one conversation follow SEND order.
            Array.Sort(sends, static (a, b) => a.Id.CompareTo(b.Id));
        }

        foreach (var send in sends)
        {
            WritePending(connection, send, force: false);
        }

        foreach (var history in histories)
        {
            WritePending(connection, history, force: false);
        }

        foreach (var request in settings)
        {
            WritePending(connection, request, force: false);
        }
    }

    /// <summary>Writes one queued item; false for DISCONNECT (the connection is to be closed).</summary>
    private bool Write(Connection connection, in Outbound item)
    {
        switch (item.Kind)
        {
            case OutboundKind.Pending:
                if (item.Pending is PendingSend && IsSendGateClosed())
                {
                    _heldSends.Add(item.Pending);
                }
                else
                {
                    WritePending(connection, item.Pending!, item.Force);
                }

                return true;
            case OutboundKind.SendGate:
                ReleaseHeldSends(connection);
                return true;
            case OutboundKind.Ack:
                Volatile.Write(ref _ackQueued, 0);
                var cursor = Cursor;
                if (cursor > connection.LastAckWritten)
                {
                    FrameWriter.Write(connection.Writer, new Ack { InboxSeq = cursor });
                    connection.LastAckWritten = cursor;
                }

                return true;
            case OutboundKind.Disconnect:
                if (item.Generation != connection.Generation)
                {
                    return true; // meant for a connection that is gone
                }

                FrameWriter.Write(connection.Writer, new Disconnect { Reason = ReasonCode.NormalDisconnect });
                return false;
            default:
                FrameWriter.Write(connection.Writer, item.Message!);
                return true;
        }
    }

    private bool IsSendGateClosed()
    {
        // Written under _lock; a plain 64-bit read is enough to see "open" on the hot path.
        var until = Volatile.Read(ref _sendGateUntil);
        return until != 0 && _time.GetTimestamp() < until;
    }

    /// <summary>Re-sends the refused sends (forced: they were written on this connection) and the held ones, in client_msg_id order.</summary>
    private void ReleaseHeldSends(Connection connection)
    {
        List<PendingSend> refused;
        lock (_lock)
        {
            var now = _time.GetTimestamp();
            if (_sendGateUntil != 0 && now < _sendGateUntil)
            {
                // A later refusal moved the gate, or the timer fired a hair early: come back when it opens.
                _ = OpenSendGateLaterAsync(_time.GetElapsedTime(now, _sendGateUntil));
                return;
            }

            _sendGateUntil = 0;
            refused = _refusedSends;
            _refusedSends = [];
        }

        var batch = new List<(PendingOperation Pending, bool Force)>(refused.Count + _heldSends.Count);
        foreach (var send in refused)
        {
            batch.Add((send, true));
        }

        foreach (var send in _heldSends)
        {
            batch.Add((send, false));
        }

        _heldSends.Clear();
        // By id; for a send both refused and held, the forced entry first (the other is then skipped).
        batch.Sort(static (a, b) => a.Pending.Id != b.Pending.Id ? a.Pending.Id.CompareTo(b.Pending.Id) : b.Force.CompareTo(a.Force));
        ulong last = 0;
        foreach (var (pending, force) in batch)
        {
            if (pending.Id != last)
            {
                WritePending(connection, pending, force);
                last = pending.Id;
            }
        }
    }

    private static void WritePending(Connection connection, PendingOperation pending, bool force)
    {
        if (pending.IsDone || (!force && pending.Generation == connection.Generation))
        {
            return; // answered meanwhile, or already re-sent by ResendPending on this connection
        }

        var flags = pending.Transmitted && pending.Message is Send ? FrameFlags.Dup : FrameFlags.None;
        FrameWriter.Write(connection.Writer, pending.Message, flags);
        pending.Generation = connection.Generation;
        pending.Transmitted = true;
    }

    /// <summary>
    /// PINGs after keepalive/2 without writing anything, and declares the connection dead when neither a PONG
    /// nor anything else arrives within min(30 s, keepalive/2) of a PING (docs/protocol.md §6) — unless the read
    /// loop is paused on a full <see cref="Messages"/> channel, in which case the silence is ours.
    /// </summary>
    private async Task KeepaliveLoopAsync(Connection connection)
    {
        if (connection.Keepalive <= TimeSpan.Zero)
        {
            return;
        }

        var idle = connection.Keepalive / 2;
        var pongTimeout = idle < TimeSpan.FromSeconds(30) ? idle : TimeSpan.FromSeconds(30);
        var tick = (idle < pongTimeout ? idle : pongTimeout) / 4;
        var token = connection.Token;
        long pingSentAt = 0;
        try
        {
            while (!token.IsCancellationRequested)
            {
                await Task.Delay(tick, _time, token).ConfigureAwait(false);
                var now = _time.GetTimestamp();
                if (pingSentAt != 0)
                {
                    if (Volatile.Read(ref connection.LastReceive) >= pingSentAt || connection.ReadPaused)
                    {
                        pingSentAt = 0;
                    }
                    else if (_time.GetElapsedTime(pingSentAt, now) >= pongTimeout)
                    {
                        connection.Fail(new SessionEnd(ReasonCode.KeepaliveTimeout, "no PONG from the server", TimeSpan.Zero));
                        return;
                    }
                }

                if (pingSentAt == 0 && _time.GetElapsedTime(Volatile.Read(ref connection.LastWrite), now) >= idle)
                {
                    _outbound.Writer.TryWrite(Outbound.Of(PingMessage));
                    pingSentAt = now;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }
}
