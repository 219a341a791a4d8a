using ChatBroker.Mqtt.Tests.Infrastructure;

namespace ChatBroker.Mqtt.Tests;

/// <summary>
/// MQTT 3.1.1 §3-§4 and MQTT 5 rules, each a case of conformance/mqtt_conformance.py run with paho-mqtt (and raw
/// sockets for the packet-level rules) against the real listener of a broker process.
/// </summary>
public sealed class ConformanceTests(MqttBrokerFixture fixture) : IClassFixture<MqttBrokerFixture>
{
    private static readonly string[] Names =
    [
        "connect_v311_anonymous",
        "connect_v5_assigns_client_id",
        "connect_unsupported_protocol_level_gets_0x01_and_close",
        "first_packet_must_be_connect",
        "second_connect_closes",
        "connect_reserved_flag_closes",
        "subscribe_with_wrong_fixed_header_flags_closes",
        "publish_qos3_closes",
        "publish_topic_with_wildcard_closes",
        "pingreq_gets_pingresp",
        "packet_larger_than_limit_closes_before_body",
        "packet_too_large_v5_gets_disconnect_0x95",
        "keepalive_silence_closes",
        "empty_client_id_needs_clean_session",
        "malformed_remaining_length_closes",
        "garbage_never_crashes_the_broker",
        "random_packets_and_connects_never_crash_the_broker",
        "a_subscriber_that_does_not_read_is_cut_as_a_slow_consumer",
        "qos0_qos1_qos2_round_trip",
        "qos_is_downgraded_to_the_subscription",
        "wildcards_plus_and_hash",
        "overlapping_subscriptions_deliver_once",
        "invalid_filter_is_refused_in_suback",
        "retained_message_goes_to_new_subscribers_and_empty_clears",
        "live_message_has_retain_flag_cleared",
        "will_is_published_when_connection_drops",
        "will_is_not_published_after_disconnect",
        "persistent_session_keeps_subscriptions_and_queues_messages",
        "clean_session_discards_the_old_session",
        "second_connection_with_same_client_id_takes_over",
        "unsubscribe_stops_delivery",
        "sys_topics_are_read_only_and_not_matched_by_hash",
        "qos2_duplicate_publish_is_delivered_once",
        "unacknowledged_qos1_is_resent_with_dup_on_resume",
        "v5_publish_to_sys_gets_puback_0x87",
        "v5_no_local",
        "v5_retain_handling_2_sends_no_retained",
        "v5_user_properties_are_forwarded",
        "v5_session_expiry_resumes_queued_messages",
        "v5_session_expiry_zero_ends_the_session",
        "v5_will_delay_publishes_the_will_after_the_delay",
        "v5_will_delay_is_cancelled_by_a_reconnect",
        "v5_invalid_filter_gets_0x8f",
        "bad_token_v311_gets_0x04",
        "bad_token_v5_gets_0x86",
        "expired_token_is_refused",
        "username_must_be_the_tokens_user",
        "subscribing_to_another_users_inbox_is_refused",
        "anonymous_cannot_use_chat",
        "chat_message_is_delivered_through_the_inbox_with_properties",
        "chat_to_a_missing_group_is_refused_v5",
    ];

    public static TheoryData<string> Cases { get; } = new(Names);

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Case_holds(string name)
    {
        var broker = fixture.Broker;
        var tokens = Tools.Json(new Dictionary<string, string>
        {
            ["alice"] = broker.Token("alice"),
            ["bob"] = broker.Token("bob"),
            ["expired"] = broker.ExpiredToken("alice"),
        });
        var (code, stdout, stderr) = await Tools.RunAsync(Tools.Python, [Tools.Script("mqtt_conformance.py"), name, broker.Host, broker.Port, tokens], TimeSpan.FromSeconds(60));
        Assert.True(code == 0, $"{name}: exit {code}\n{stdout}\n{stderr}");
        // Whatever a client sent, no connection ended in an unexpected exception (the listener logs those as errors).
        Assert.DoesNotContain("failed unexpectedly", broker.Broker.Process.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Every_case_of_the_script_is_listed_here()
    {
        var (code, stdout, _) = await Tools.RunAsync(Tools.Python, [Tools.Script("mqtt_conformance.py"), "--list", "-", "0"], TimeSpan.FromSeconds(30));
        Assert.Equal(0, code);
        var listed = new SortedSet<string>(Names);
        var inScript = new SortedSet<string>(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        Assert.Equal(inScript, listed);
    }
}
