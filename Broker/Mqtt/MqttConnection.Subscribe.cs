using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace ChatBroker.Broker.Mqtt;

internal sealed partial class MqttConnection
{
    /// <summary>True for a filter of the chat inbox namespace (inbox/{user}/...), which the chat core serves, not the topic tree.</summary>
    private static bool IsInboxFilter(string filter) => filter == "inbox" || filter.StartsWith("inbox/", StringComparison.Ordinal);

    /// <summary>
    /// SUBSCRIBE (3.1.1 §3.8, 5.0 §3.8): one reason code per filter in SUBACK [MQTT-3.8.4-5]; retained messages after it.
    /// inbox/{own user}/# (or inbox/+/...) subscribes to the chat inbox at QoS 1 at most; another user's inbox, chat/...
    /// and anonymous inbox filters are refused (0x87, 3.1.1: 0x80).
    /// </summary>
    private bool HandleSubscribe(MqttSubscribePacket subscribe)
    {
        var session = _session!;
        if (subscribe.TopicFilters is not { Count: > 0 })
        {
            Fail("protocol_error", MqttDisconnectReasonCode.ProtocolError, "SUBSCRIBE without topic filters [MQTT-3.8.3-3]");
            return false;
        }

        var codes = new List<MqttSubscribeReasonCode>(subscribe.TopicFilters.Count);
        List<(MqttMessage Message, byte Qos)>? retained = null;
        var inbox = false;
        Task? stored = null;
        foreach (var f in subscribe.TopicFilters)
        {
            var qos = (byte)f.QualityOfServiceLevel;
            if (qos > 2)
            {
                Fail("protocol_error", MqttDisconnectReasonCode.MalformedPacket, "QoS 3 in SUBSCRIBE [MQTT-3.8.3-4]");
                return false;
            }

            var filter = f.Topic;
            if (!MqttTopics.IsValidFilter(filter))
            {
                codes.Add(MqttSubscribeReasonCode.TopicFilterInvalid);
                _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", "subscribe_invalid"));
                continue;
            }

            if (IsInboxFilter(filter))
            {
                var levels = filter.Split('/');
                var owner = levels.Length > 1 ? levels[1] : "#";
                if (_user.Length == 0 || (owner != _user && owner != "+" && owner != "#"))
                {
                    codes.Add(MqttSubscribeReasonCode.NotAuthorized);
                    _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", "subscribe_not_authorized"));
                    continue;
                }

                var granted = Math.Min(qos, (byte)1);
                lock (_lock)
                {
                    session.Subscriptions.RemoveAll(s => s.Filter == filter);
                    session.Subscriptions.Add(new MqttSubscription(session, filter, granted, false, false, 0));
                    stored = _broker.NoteSubscriptionsLocked(session) ?? stored;
                }

                codes.Add((MqttSubscribeReasonCode)granted);
                inbox = true;
                continue;
            }

            if (filter.StartsWith("chat/", StringComparison.Ordinal) || filter == "chat")
            {
                // Chat messages reach a device through its inbox (inbox/{user}/u/{peer}, inbox/{user}/g/{id}).
                codes.Add(MqttSubscribeReasonCode.NotAuthorized);
                _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", "subscribe_not_authorized"));
                continue;
            }

            bool existed;
            lock (_lock)
            {
                existed = session.Subscriptions.Exists(s => s.Filter == filter);
                if (!existed && session.SubscriptionCount >= _broker.Options.MaxSubscriptions)
                {
                    codes.Add(MqttSubscribeReasonCode.QuotaExceeded);
                    _broker.Instruments.Refused.Add(1, MqttInstruments.Tag("what", "max_subscriptions"));
                    continue;
                }

                var subscription = new MqttSubscription(session, filter, qos, f.NoLocal, f.RetainAsPublished, subscribe.SubscriptionIdentifier);
                session.Subscriptions.RemoveAll(s => s.Filter == filter);
                session.Subscriptions.Add(subscription);
                _broker.Topics.Add(subscription);
                stored = _broker.NoteSubscriptionsLocked(session) ?? stored;
            }

            codes.Add((MqttSubscribeReasonCode)qos);
            if (f.RetainHandling == MqttRetainHandling.SendAtSubscribe
                || (f.RetainHandling == MqttRetainHandling.SendAtSubscribeIfNewSubscriptionOnly && !existed))
            {
                var matching = new List<MqttMessage>();
                _broker.RetainedMatching(filter, matching);
                foreach (var m in matching)
                {
                    (retained ??= []).Add((m, Math.Min(qos, m.Qos)));
                }
            }
        }

        // A stored session's SUBACK waits until its subscriptions are durable: a subscription acknowledged is not lost.
        AnswerWhenStored(stored, () =>
        {
            lock (_lock)
            {
                WriteLocked(new MqttSubAckPacket { PacketIdentifier = subscribe.PacketIdentifier, ReasonCodes = codes });
                if (retained is not null)
                {
                    // Retained messages are sent with the retain flag set [MQTT-3.3.1-8].
                    foreach (var (message, qos) in retained)
                    {
                        if (!TryDeliverLocked(message, qos, retainFlag: true, out _))
                        {
                            _broker.EnqueueLocked(session, message, qos);
                        }
                    }
                }
            }
        });

        if (inbox)
        {
            StartInbox(session, cleanStart: false);
        }

        return true;
    }

    private void HandleUnsubscribe(MqttUnsubscribePacket unsubscribe)
    {
        var session = _session!;
        var codes = new List<MqttUnsubscribeReasonCode>(unsubscribe.TopicFilters.Count);
        var inboxLeft = true;
        Task? stored = null;
        foreach (var filter in unsubscribe.TopicFilters)
        {
            bool removed;
            lock (_lock)
            {
                removed = session.Subscriptions.RemoveAll(s => s.Filter == filter) > 0;
                inboxLeft = session.Subscriptions.Exists(s => IsInboxFilter(s.Filter));
                if (removed)
                {
                    stored = _broker.NoteSubscriptionsLocked(session) ?? stored;
                }
            }

            if (removed && !IsInboxFilter(filter))
            {
                _broker.Topics.Remove(session, filter);
            }

            codes.Add(removed ? MqttUnsubscribeReasonCode.Success : MqttUnsubscribeReasonCode.NoSubscriptionExisted);
        }

        lock (_lock)
        {
            if (!inboxLeft)
            {
                _inboxStarted = false; // no more inbox delivery; what is in flight may still be acknowledged
            }
        }

        AnswerWhenStored(stored, () => Write(new MqttUnsubAckPacket { PacketIdentifier = unsubscribe.PacketIdentifier, ReasonCodes = codes }));
    }
}
