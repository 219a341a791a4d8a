using ChatBroker.Protocol;
using ChatBroker.Protocol.Messages;
using Google.Protobuf;

namespace ChatBroker.Client;

/// <summary>The read loop: frames off the socket, dedupe, the cursor, SENT/ERROR correlation.</summary>
public sealed partial class ChatClient
{
    private readonly DeliveryDedupe _dedupe = new();

    private async Task ReadLoopAsync(Connection connection)
    {
        var reader = connection.Reader;
        var token = connection.Token;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(token).ConfigureAwait(false);
                Volatile.Write(ref connection.LastReceive, _time.GetTimestamp());
                var buffer = result.Buffer;
                var surfaced = false;
                var open = true;
                ReasonCode error;
                while (FrameReader.TryRead(buffer, _options.MaxFrameSize, out var frame, out var consumed, out error))
                {
                    // State first: never parse a body the server was not allowed to send.
                    error = connection.State.OnReceived(frame.Type);
                    if (error != ReasonCode.Success || !PacketDecoder.TryDecode(frame, out var message, out error))
                    {
                        break;
                    }

                    // The decoded message owns copies of everything it needs.
                    buffer = buffer.Slice(consumed);
                    if (message is Deliver deliver)
                    {
                        surfaced |= await OnDeliverAsync(connection, deliver).ConfigureAwait(false);
                    }
                    else if (!OnPacket(connection, message, ref surfaced))
                    {
                        open = false;
                        break;
                    }
                }

                reader.AdvanceTo(buffer.Start, buffer.End);
                if (!open)
                {
                    return;
                }

                if (error != ReasonCode.Success)
                {
                    // The server broke the protocol: nothing sensible to tell it; drop and reconnect (long backoff).
                    connection.Fail(new SessionEnd(error, "malformed or unexpected frame from the server", TimeSpan.Zero));
                    return;
                }

                if (surfaced && _options.AutoAck)
                {
                    RequestAck();
                }

                if (result.IsCompleted)
                {
                    connection.Fail(new SessionEnd(ReasonCode.Success, "the server closed the connection", TimeSpan.Zero));
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            connection.Fail(new SessionEnd(ReasonCode.Success, e.Message, TimeSpan.Zero));
        }
        finally
        {
            connection.Fail(new SessionEnd(ReasonCode.Success, "connection lost", TimeSpan.Zero));
        }
    }

    /// <summary>Surfaces a DELIVER unless it is a duplicate; true when the cursor moved.</summary>
    private async ValueTask<bool> OnDeliverAsync(Connection connection, Deliver deliver)
    {
        var inboxSeq = deliver.InboxSeq;
        if ((inboxSeq != 0 && inboxSeq <= Volatile.Read(ref _cursor)) || _dedupe.Seen(deliver.ConversationId, deliver.Seq))
        {
            return false;
        }

        var message = ToReceived(deliver, connection.InBacklog);
        if (!_messages.Writer.TryWrite(message))
        {
            // The app is not keeping up: stop reading the socket until it does (see Messages).
            connection.ReadPaused = true;
            try
            {
                await _messages.Writer.WriteAsync(message, connection.Token).ConfigureAwait(false);
            }
            finally
            {
                connection.ReadPaused = false;
            }
        }

        // Marked only once handed over: a message lost to a cancelled write comes again after resume.
        _dedupe.TryMark(deliver.ConversationId, deliver.Seq);
        if (inboxSeq > Volatile.Read(ref _cursor))
        {
            Volatile.Write(ref _cursor, inboxSeq);
            return true;
        }

        return false;
    }

    private static ReceivedMessage ToReceived(Deliver deliver, bool backlog) => new(
        deliver.ConversationId,
        deliver.Seq,
        deliver.InboxSeq,
        deliver.SenderUserId,
        deliver.SenderDeviceId,
        deliver.TimestampMs,
        deliver.ContentType,
        // ByteString.Memory is the parsed copy, owned by nobody else.
        deliver.Body.Memory,
        deliver.ClientMsgId,
        backlog)
    {
        Media = deliver.Media,
    };

    /// <summary>Handles every packet but DELIVER; false when the session is over.</summary>
    private bool OnPacket(Connection connection, IMessage message, ref bool cursorMoved)
    {
        switch (message)
        {
            case Sent sent:
                OnSent(sent);
                return true;
            case Error error:
                return OnError(connection, error);
            case Receipt receipt:
                _receipts.Writer.TryWrite(new ReceivedReceipt(
                    receipt.ConversationId, receipt.Kind, receipt.FromSeq, receipt.UpToSeq, receipt.ReaderUserId, receipt.TimestampMs)
                {
                    ReaderDeviceId = receipt.ReaderDeviceId.Length == 0 ? null : receipt.ReaderDeviceId,
                });
                return true;
            case SyncDone done:
                if (done.RequestId == 0)
                {
                    connection.InBacklog = false;
                    // Everything up to the seam was sent; what we did not get was our own (not echoed).
                    if (done.InboxSeq > Volatile.Read(ref _cursor))
                    {
                        Volatile.Write(ref _cursor, done.InboxSeq);
                    }

                    // One ACK per connection at the seam even if nothing new came: the last ACK of the previous
                    // connection may have been lost with it.
                    cursorMoved |= Volatile.Read(ref _cursor) != 0;

                    lock (_lock)
                    {
                        _sync.TrySetResult();
                    }
                }

                return true;
            case HistoryPage page:
                OnHistoryPage(page);
                return true;
            case SettingsResult settings:
                PendingSettings? pendingSettings;
                lock (_lock)
                {
                    _pendingSettings.Remove(settings.RequestId, out pendingSettings);
                }

                pendingSettings?.TryComplete(settings);
                return true;
            case Disconnect disconnect:
                connection.Fail(new SessionEnd(disconnect.Reason, disconnect.Message, TimeSpan.FromMilliseconds(disconnect.RetryAfterMs)));
                return false;
            default:
                // PONG (the read itself was the sign of life), and streams this client does not surface.
                return true;
        }
    }

    private void OnSent(Sent sent)
    {
        PendingSend? pending;
        lock (_lock)
        {
            if (!_pendingSends.Remove(sent.ClientMsgId, out pending))
            {
                return; // a second SENT for a DUP resend that crossed the first answer
            }

            PromoteWaitingSendsLocked();
        }

        // The broker does not echo our own message to this device, but other paths (history, another device's
        // resume) may bring it: remember it as seen.
        _dedupe.TryMark(sent.ConversationId, sent.Seq);
        pending.TryComplete(new SentResult(sent.ClientMsgId, sent.ConversationId, sent.Seq, sent.TimestampMs));
    }

    private bool OnError(Connection connection, Error error)
    {
        if (error.InReplyTo == PacketType.Send)
        {
            OnSendError(error);
        }
        else if (error.InReplyTo == PacketType.History && error.RequestId != 0)
        {
            PendingHistory? pending;
            lock (_lock)
            {
                _pendingHistory.Remove(error.RequestId, out pending);
            }

            pending?.TryFail(new ChatClientException(error.Reason, error.Message, TimeSpan.FromMilliseconds(error.RetryAfterMs)));
        }
        else if (error.InReplyTo == PacketType.Settings && error.RequestId != 0)
        {
            PendingSettings? pending;
            lock (_lock)
            {
                _pendingSettings.Remove(error.RequestId, out pending);
            }

            pending?.TryFail(new ChatClientException(error.Reason, error.Message, TimeSpan.FromMilliseconds(error.RetryAfterMs)));
        }

        if (ReasonCodes.IsFatal(error.Reason))
        {
            connection.Fail(new SessionEnd(error.Reason, error.Message, TimeSpan.FromMilliseconds(error.RetryAfterMs)));
            return false;
        }

        return true;
    }

    private void OnSendError(Error error)
    {
        PendingSend? pending;
        var retry = error.Reason is ReasonCode.RateLimited or ReasonCode.ServerBusy or ReasonCode.ServerUnavailable;
        lock (_lock)
        {
            if (retry)
            {
                _pendingSends.TryGetValue(error.RequestId, out pending);
            }
            else if (_pendingSends.Remove(error.RequestId, out pending))
            {
                PromoteWaitingSendsLocked();
            }
        }

        if (pending is null)
        {
            return;
        }

        if (retry)
        {
            var delay = error.RetryAfterMs > 0 ? TimeSpan.FromMilliseconds(error.RetryAfterMs) : _options.Reconnect.InitialDelay;
            HoldSends(pending, delay);
            return;
        }

        pending.TryFail(new ChatClientException(error.Reason, error.Message));
    }

    /// <summary>
    /// RATE_LIMITED / SERVER_BUSY on a send: close the send gate for the delay, so the writer holds back every
    /// further SEND instead of having each one refused too, then re-send the refused ones together with the held
    /// ones in client_msg_id order (which keeps a conversation's messages in order, apart from the few that were
    /// already on the wire when the first refusal came back).
    /// </summary>
    private void HoldSends(PendingSend pending, TimeSpan delay)
    {
        var until = _time.GetTimestamp() + (long)(delay.TotalSeconds * _time.TimestampFrequency);
        bool later;
        lock (_lock)
        {
            _refusedSends.Add(pending);
            later = until > _sendGateUntil;
            if (later)
            {
                _sendGateUntil = until;
            }
        }

        if (later)
        {
            _ = OpenSendGateLaterAsync(delay);
        }
    }

    private async Task OpenSendGateLaterAsync(TimeSpan delay)
    {
        await Task.Delay(delay, _time).ConfigureAwait(false);
        _outbound.Writer.TryWrite(new Outbound(OutboundKind.SendGate, null, null, false, 0));
    }

    private void OnHistoryPage(HistoryPage page)
    {
        PendingHistory? pending;
        lock (_lock)
        {
            if (!_pendingHistory.Remove(page.RequestId, out pending))
            {
                return;
            }
        }

        var messages = new ReceivedMessage[page.Messages.Count];
        for (var i = 0; i < messages.Length; i++)
        {
            messages[i] = ToReceived(page.Messages[i], backlog: false);
        }

        pending.TryComplete(new HistoryResult(page.ConversationId, messages, page.More));
    }

    /// <summary>Queues one coalesced ACK unless one is already queued; it carries the cursor of the moment it is written.</summary>
    private void RequestAck()
    {
        if (Interlocked.CompareExchange(ref _ackQueued, 1, 0) == 0)
        {
            _outbound.Writer.TryWrite(new Outbound(OutboundKind.Ack, null, null, false, 0));
        }
    }
}
