#!/usr/bin/env python3
"""MQTT 3.1.1 and 5.0 conformance cases for ChatBroker's MQTT listener, with paho-mqtt (Debian's python3-paho-mqtt)
and raw sockets for the packet-level rules. Run: mqtt_conformance.py CASE HOST PORT [TOKEN_JSON]; prints "ok" and exits
0 when the case holds, else prints why and exits 1. Every wait is on an event with a timeout, never a sleep."""
import json
import queue
import socket
import struct
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

HOST = sys.argv[2]
PORT = int(sys.argv[3])
TOKENS = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
TIMEOUT = 10


def cid(prefix="c"):
    return prefix + "-" + uuid.uuid4().hex[:10]


class Client:
    """A paho client whose callbacks feed queues."""

    def __init__(self, client_id=None, v5=False, clean=True, username=None, password=None, will=None, keepalive=30,
                 session_expiry=None, connect=True):
        self.v5 = v5
        self.client_id = client_id or cid()
        if v5:
            self.c = mqtt.Client(client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            self.c = mqtt.Client(client_id=self.client_id, clean_session=clean, protocol=mqtt.MQTTv311)
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        if username is not None or password is not None:
            self.c.username_pw_set(username or "", password)
        if will:
            self.c.will_set(*will)
        self.connacks = queue.Queue()
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.pubacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = lambda c, u, mid, *rest: self.unsubacks.put((mid, rest))
        self.c.on_publish = lambda c, u, mid: self.pubacks.put(mid)
        self.c.on_disconnect = self._on_disconnect
        if connect:
            self.connect()

    def _on_connect(self, c, u, flags, rc, properties=None):
        self.connacks.put((flags, rc, properties))

    def _on_subscribe(self, c, u, mid, granted, properties=None):
        self.subacks.put((mid, granted))

    def _on_disconnect(self, c, u, rc, properties=None):
        self.disconnects.put(rc)

    def connect(self, expect_rc=0):
        if self.v5:
            props = None
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
            self.c.connect(HOST, PORT, self.keepalive, clean_start=self.clean, properties=props)
        else:
            self.c.connect(HOST, PORT, self.keepalive)
        self.c.loop_start()
        flags, rc, props = self.connacks.get(timeout=TIMEOUT)
        rcv = rc.value if hasattr(rc, "value") else rc
        if expect_rc is not None:
            assert rcv == expect_rc, f"CONNACK {rcv}, expected {expect_rc}"
        self.connack_flags = flags
        self.connack_props = props
        return flags, rcv, props

    def subscribe(self, topic, qos=0, options=None):
        if self.v5 and options is not None:
            result, mid = self.c.subscribe(topic, options=options)
        else:
            result, mid = self.c.subscribe(topic, qos)
        assert result == 0
        got_mid, granted = self.subacks.get(timeout=TIMEOUT)
        assert got_mid == mid
        return [g.value if hasattr(g, "value") else g for g in granted]

    def publish(self, topic, payload, qos=0, retain=False, properties=None, wait=True):
        info = self.c.publish(topic, payload, qos, retain, properties=properties) if self.v5 else self.c.publish(topic, payload, qos, retain)
        if wait and qos > 0:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published(), "not acknowledged"
        return info

    def expect(self, timeout=TIMEOUT):
        return self.messages.get(timeout=timeout)

    def expect_none(self, within=0.3):
        # A negative check needs a bound: after a round trip (PINGREQ/PINGRESP through a QoS 1 self-publish) nothing came.
        try:
            m = self.messages.get(timeout=within)
            raise AssertionError(f"unexpected message on {m.topic}: {m.payload!r}")
        except queue.Empty:
            pass

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Ends the connection without DISCONNECT (the will is published)."""
        self.c.loop_stop()
        self.c.socket().close()


def barrier(client):
    """Round trip through the broker: a QoS 1 publish to a private topic is acknowledged after everything before it."""
    client.publish("barrier/" + client.client_id, b"", qos=1)


# ---- raw packets ----

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mqtt_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def raw_connect(client_id=None, level=4, name="MQTT", keepalive=30, flags=0x02, props=b""):
    vh = mqtt_str(name) + bytes([level, flags]) + struct.pack(">H", keepalive)
    if level == 5:
        vh += varint(len(props)) + props
    body = vh + mqtt_str(cid("raw") if client_id is None else client_id)
    return bytes([0x10]) + varint(len(body)) + body


class Raw:
    def __init__(self):
        self.s = socket.create_connection((HOST, PORT), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_packet(self):
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        if len(self.buf) >= i + n:
                            pkt = self.buf[:i + n]
                            self.buf = self.buf[i + n:]
                            return pkt[0], pkt[i:]
                        break
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def closed(self):
        """True when the broker closes the connection (reading past any packets it sends first)."""
        try:
            while True:
                p = self.read_packet()
                if p is None:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


# ---- cases ----
CASES = {}


def case(f):
    CASES[f.__name__] = f
    return f


@case
def connect_v311_anonymous():
    c = Client()
    assert c.connack_flags["session present"] == 0
    c.close()


@case
def connect_v5_assigns_client_id():
    r = Raw()
    r.send(raw_connect(client_id="", level=5))
    t, body = r.read_packet()
    assert t == 0x20 and body[1] == 0, f"CONNACK {body!r}"
    assert b"auto-" in body, "assigned client identifier expected"


@case
def connect_unsupported_protocol_level_gets_0x01_and_close():
    r = Raw()
    r.send(raw_connect(level=6))
    t, body = r.read_packet()
    assert t == 0x20 and body == b"\x00\x01", f"{t:#x} {body!r}"
    assert r.closed()


@case
def first_packet_must_be_connect():
    r = Raw()
    r.send(b"\xc0\x00")  # PINGREQ
    assert r.closed()


@case
def second_connect_closes():
    r = Raw()
    r.send(raw_connect())
    t, _ = r.read_packet()
    assert t == 0x20
    r.send(raw_connect())
    assert r.closed()


@case
def connect_reserved_flag_closes():
    r = Raw()
    r.send(raw_connect(flags=0x03))  # bit 0 reserved [MQTT-3.1.2-3]
    assert r.closed()


@case
def subscribe_with_wrong_fixed_header_flags_closes():
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    body = struct.pack(">H", 1) + mqtt_str("a/b") + b"\x00"
    r.send(bytes([0x80]) + varint(len(body)) + body)  # must be 0x82 [MQTT-3.8.1-1]
    assert r.closed()


@case
def publish_qos3_closes():
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    body = mqtt_str("a/b") + struct.pack(">H", 1) + b"x"
    r.send(bytes([0x36]) + varint(len(body)) + body)
    assert r.closed()


@case
def publish_topic_with_wildcard_closes():
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    body = mqtt_str("a/+") + b"x"
    r.send(bytes([0x30]) + varint(len(body)) + body)
    assert r.closed()


@case
def pingreq_gets_pingresp():
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    r.send(b"\xc0\x00")
    t, body = r.read_packet()
    assert t == 0xD0 and body == b""


@case
def packet_larger_than_limit_closes_before_body():
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    r.send(bytes([0x30]) + varint(100_000_000))  # declared, never sent
    assert r.closed()


@case
def packet_too_large_v5_gets_disconnect_0x95():
    r = Raw()
    r.send(raw_connect(level=5))
    r.read_packet()
    r.send(bytes([0x30]) + varint(100_000_000))
    t, body = r.read_packet()
    assert t == 0xE0 and body[0] == 0x95, f"{t:#x} {body!r}"
    assert r.closed()


@case
def keepalive_silence_closes():
    r = Raw()
    r.send(raw_connect(keepalive=1))
    r.read_packet()
    start = time.monotonic()
    r.s.settimeout(10)
    assert r.closed()
    took = time.monotonic() - start
    assert 1.0 <= took <= 8.0, f"closed after {took:.1f}s"


@case
def empty_client_id_needs_clean_session():
    r = Raw()
    r.send(raw_connect(client_id="", flags=0x00))
    t, body = r.read_packet()
    assert t == 0x20 and body == b"\x00\x02", f"{body!r}"
    assert r.closed()


@case
def malformed_remaining_length_closes():
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    r.send(b"\x30\xff\xff\xff\xff\x01")
    assert r.closed()


@case
def garbage_never_crashes_the_broker():
    import random
    rnd = random.Random(20)
    for i in range(50):
        r = Raw()
        if i % 2:
            r.send(raw_connect())
            r.read_packet()
        r.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200))))
        r.s.close()
    c = Client()  # still serving
    c.close()


@case
def random_packets_and_connects_never_crash_the_broker():
    import random
    rnd = random.Random(2020)
    for i in range(300):
        try:
            r = Raw()
            if i % 2:
                r.send(raw_connect(level=rnd.choice([4, 5])))
                r.read_packet()
                for _ in range(rnd.randrange(1, 4)):
                    body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
                    r.send(bytes([(rnd.randrange(1, 16) << 4) | rnd.choice([0, 2, rnd.randrange(16)])]) + varint(len(body)) + body)
            else:
                name = rnd.choice([b"\x00\x04MQTT", b"\x00\x06MQIsdp", b"\x00\x04MQTX", b""])
                body = name + bytes([rnd.choice([3, 4, 5, 6, 0x84])]) + bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 60)))
                r.send(b"\x10" + varint(len(body)) + body)
            r.s.close()
        except OSError:
            pass  # the broker closed first: fine
    c = Client()  # still serving
    c.close()


@case
def a_subscriber_that_does_not_read_is_cut_as_a_slow_consumer():
    # session.max_outbound_bytes (4 MiB by default) bounds what waits for one client: past it the broker closes it.
    t = "slow/" + uuid.uuid4().hex
    sub = Raw()
    sub.send(raw_connect())
    sub.read_packet()
    body = struct.pack(">H", 1) + mqtt_str(t) + b"\x00"
    sub.send(b"\x82" + varint(len(body)) + body)
    sub.read_packet()  # SUBACK; from here the subscriber reads nothing
    pub = Raw()
    pub.send(raw_connect())
    pub.read_packet()
    payload = b"x" * 60_000
    packet = mqtt_str(t) + payload
    one = b"\x30" + varint(len(packet)) + packet
    for _ in range(400):  # 24 MB at QoS 0
        pub.send(one)
    pub.send(b"\xc0\x00")  # PINGREQ: the publisher's own connection is fine
    while True:
        p = pub.read_packet()
        if p[0] == 0xD0:
            break
    sub.s.settimeout(30)
    assert sub.closed(), "the slow subscriber was not disconnected"


@case
def qos0_qos1_qos2_round_trip():
    sub = Client()
    assert sub.subscribe("rt/#", 2) == [2]
    pub = Client()
    for q in (0, 1, 2):
        pub.publish(f"rt/q{q}", f"m{q}".encode(), qos=q)
    got = sorted((m.topic, m.payload, m.qos) for m in (sub.expect(), sub.expect(), sub.expect()))
    assert got == [("rt/q0", b"m0", 0), ("rt/q1", b"m1", 1), ("rt/q2", b"m2", 2)], got


@case
def qos_is_downgraded_to_the_subscription():
    sub = Client()
    assert sub.subscribe("dg/x", 0) == [0]
    pub = Client()
    pub.publish("dg/x", b"x", qos=2)
    m = sub.expect()
    assert m.qos == 0


@case
def wildcards_plus_and_hash():
    sub = Client()
    sub.subscribe("wc/+/b", 1)
    sub.subscribe("wc2/#", 1)
    pub = Client()
    pub.publish("wc/a/b", b"1", qos=1)
    pub.publish("wc/a/c", b"no", qos=1)
    pub.publish("wc/a/b/c", b"no", qos=1)
    pub.publish("wc2", b"2", qos=1)  # "a/#" matches "a" too
    pub.publish("wc2/x/y", b"3", qos=1)
    got = sorted(sub.expect().payload for _ in range(3))
    assert got == [b"1", b"2", b"3"], got
    barrier(pub)
    sub.expect_none()


@case
def overlapping_subscriptions_deliver_once():
    sub = Client()
    sub.subscribe("ov/#", 1)
    sub.subscribe("ov/+", 0)
    pub = Client()
    pub.publish("ov/a", b"x", qos=1)
    m = sub.expect()
    assert m.qos == 1
    sub.expect_none()


def raw_subscribe(level, filters):
    """SUBSCRIBE over a raw connection (paho refuses invalid filters itself); returns the SUBACK's reason codes."""
    r = Raw()
    r.send(raw_connect(level=level))
    r.read_packet()
    body = struct.pack(">H", 1) + (b"\x00" if level == 5 else b"")
    for f in filters:
        body += mqtt_str(f) + b"\x01"
    r.send(b"\x82" + varint(len(body)) + body)
    t, ack = r.read_packet()
    assert t == 0x90, f"{t:#x}"
    codes = ack[2:]
    if level == 5:
        codes = codes[1 + codes[0]:]  # properties length (small) and properties
    return list(codes)


@case
def invalid_filter_is_refused_in_suback():
    assert raw_subscribe(4, ["a/#/b", "a/b+", "ok/+"]) == [0x80, 0x80, 1]


@case
def retained_message_goes_to_new_subscribers_and_empty_clears():
    t = "ret/" + uuid.uuid4().hex
    pub = Client()
    pub.publish(t, b"kept", qos=1, retain=True)
    s1 = Client()
    s1.subscribe(t, 1)
    m = s1.expect()
    assert m.payload == b"kept" and m.retain
    pub.publish(t, b"", qos=1, retain=True)
    s2 = Client()
    s2.subscribe(t, 1)
    s2.expect_none()


@case
def live_message_has_retain_flag_cleared():
    t = "ret2/" + uuid.uuid4().hex
    sub = Client()
    sub.subscribe(t, 1)
    pub = Client()
    pub.publish(t, b"x", qos=1, retain=True)
    m = sub.expect()
    assert not m.retain


@case
def will_is_published_when_connection_drops():
    t = "will/" + uuid.uuid4().hex
    sub = Client()
    sub.subscribe(t, 1)
    w = Client(will=(t, b"gone", 1, False))
    w.drop()
    m = sub.expect()
    assert m.payload == b"gone"


@case
def will_is_not_published_after_disconnect():
    t = "will2/" + uuid.uuid4().hex
    sub = Client()
    sub.subscribe(t, 1)
    w = Client(will=(t, b"gone", 1, False))
    w.close()
    barrier(sub)
    sub.expect_none()


@case
def persistent_session_keeps_subscriptions_and_queues_messages():
    t = "ps/" + uuid.uuid4().hex
    name = cid("persist")
    a = Client(client_id=name, clean=False)
    assert a.connack_flags["session present"] == 0
    a.subscribe(t, 1)
    a.close()
    pub = Client()
    for i in range(3):
        pub.publish(t, str(i).encode(), qos=1)
    b = Client(client_id=name, clean=False)
    assert b.connack_flags["session present"] == 1
    got = [b.expect().payload for _ in range(3)]
    assert got == [b"0", b"1", b"2"], got


@case
def clean_session_discards_the_old_session():
    t = "cs/" + uuid.uuid4().hex
    name = cid("clean")
    a = Client(client_id=name, clean=False)
    a.subscribe(t, 1)
    a.close()
    b = Client(client_id=name, clean=True)
    assert b.connack_flags["session present"] == 0
    pub = Client()
    pub.publish(t, b"x", qos=1)
    b.expect_none()


@case
def second_connection_with_same_client_id_takes_over():
    name = cid("take")
    a = Client(client_id=name)
    b = Client(client_id=name)
    rc = a.disconnects.get(timeout=TIMEOUT)
    assert rc != 0
    b.close()


@case
def unsubscribe_stops_delivery():
    t = "un/" + uuid.uuid4().hex
    c = Client()
    c.subscribe(t, 1)
    c.c.unsubscribe(t)
    c.unsubacks.get(timeout=TIMEOUT)
    c.publish(t, b"x", qos=1)
    c.expect_none()


@case
def sys_topics_are_read_only_and_not_matched_by_hash():
    s = Client()
    s.subscribe("$SYS/#", 0)
    m = s.expect()
    assert m.topic.startswith("$SYS/")
    h = Client()
    h.subscribe("#", 0)
    barrier(h)
    while True:
        try:
            m = h.messages.get(timeout=0.3)
        except queue.Empty:
            break
        assert not m.topic.startswith("$"), m.topic
    # 3.1.1 cannot refuse a QoS 1 PUBLISH in PUBACK: the broker closes the connection instead.
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    body = mqtt_str("$SYS/x") + struct.pack(">H", 7) + b"x"
    r.send(bytes([0x32]) + varint(len(body)) + body)
    assert r.closed()


@case
def qos2_duplicate_publish_is_delivered_once():
    t = "q2d/" + uuid.uuid4().hex
    sub = Client()
    sub.subscribe(t, 2)
    r = Raw()
    r.send(raw_connect())
    r.read_packet()
    body = mqtt_str(t) + struct.pack(">H", 9) + b"once"
    r.send(bytes([0x34]) + varint(len(body)) + body)
    assert r.read_packet() == (0x50, b"\x00\x09")  # PUBREC
    r.send(bytes([0x3C]) + varint(len(body)) + body)  # DUP resend before PUBREL
    assert r.read_packet() == (0x50, b"\x00\x09")
    r.send(b"\x62\x02\x00\x09")  # PUBREL
    assert r.read_packet() == (0x70, b"\x00\x09")  # PUBCOMP
    assert sub.expect().payload == b"once"
    sub.expect_none()


@case
def unacknowledged_qos1_is_resent_with_dup_on_resume():
    t = "dup/" + uuid.uuid4().hex
    name = cid("dup")
    r = Raw()
    r.send(raw_connect(client_id=name, flags=0x00))
    r.read_packet()
    body = struct.pack(">H", 1) + mqtt_str(t) + b"\x01"
    r.send(b"\x82" + varint(len(body)) + body)
    r.read_packet()  # SUBACK
    pub = Client()
    pub.publish(t, b"x", qos=1)
    first = r.read_packet()
    assert first[0] & 0xF0 == 0x30 and not first[0] & 0x08
    r.s.close()  # no PUBACK
    r2 = Raw()
    r2.send(raw_connect(client_id=name, flags=0x00))
    t2, ack = r2.read_packet()
    assert ack[0] == 1  # session present
    again = r2.read_packet()
    assert again[0] & 0x08, "DUP expected on the resent PUBLISH"
    assert again[1] == first[1]


# ---- MQTT 5 ----

@case
def v5_publish_to_sys_gets_puback_0x87():
    c = Client(v5=True)
    info = c.c.publish("$SYS/x", b"x", 1)
    info.wait_for_publish(TIMEOUT)
    r = Raw()
    r.send(raw_connect(level=5))
    r.read_packet()
    body = mqtt_str("$SYS/x") + struct.pack(">H", 3) + b"\x00" + b"x"
    r.send(b"\x32" + varint(len(body)) + body)
    t, ack = r.read_packet()
    assert t == 0x40 and ack[:3] == b"\x00\x03\x87", ack


@case
def v5_no_local():
    from paho.mqtt.subscribeoptions import SubscribeOptions
    t = "nl/" + uuid.uuid4().hex
    c = Client(v5=True)
    c.subscribe(t, options=SubscribeOptions(qos=1, noLocal=True))
    other = Client(v5=True)
    other.subscribe(t, options=SubscribeOptions(qos=1))
    c.publish(t, b"x", qos=1)
    assert other.expect().payload == b"x"
    c.expect_none()


@case
def v5_retain_handling_2_sends_no_retained():
    from paho.mqtt.subscribeoptions import SubscribeOptions
    t = "rh/" + uuid.uuid4().hex
    pub = Client(v5=True)
    pub.publish(t, b"kept", qos=1, retain=True)
    c = Client(v5=True)
    c.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=2))
    c.expect_none()
    d = Client(v5=True)
    d.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=0))
    assert d.expect().payload == b"kept"


@case
def v5_user_properties_are_forwarded():
    t = "up/" + uuid.uuid4().hex
    sub = Client(v5=True)
    sub.subscribe(t, 1)
    pub = Client(v5=True)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v")]
    pub.publish(t, b"x", qos=1, properties=props)
    m = sub.expect()
    assert ("k", "v") in m.properties.UserProperty


@case
def v5_session_expiry_resumes_queued_messages():
    t = "se/" + uuid.uuid4().hex
    name = cid("exp")
    a = Client(client_id=name, v5=True, clean=False, session_expiry=60)
    a.subscribe(t, 1)
    a.close()
    pub = Client(v5=True)
    pub.publish(t, b"queued", qos=1)
    b = Client(client_id=name, v5=True, clean=False, session_expiry=60)
    assert b.connack_flags["session present"] == 1
    assert b.expect().payload == b"queued"


def will_with_delay(topic, seconds):
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = seconds
    return (topic, b"gone", 1, False, props)


@case
def v5_will_delay_publishes_the_will_after_the_delay():
    t = "wd/" + uuid.uuid4().hex
    sub = Client(v5=True)
    sub.subscribe(t, 1)
    a = Client(v5=True, clean=False, session_expiry=60, will=will_with_delay(t, 1))
    a.drop()
    sub.expect_none(within=0.5)  # not at once [MQTT-3.1.3-9]
    assert sub.expect(timeout=5).payload == b"gone"


@case
def v5_will_delay_is_cancelled_by_a_reconnect():
    t = "wd/" + uuid.uuid4().hex
    sub = Client(v5=True)
    sub.subscribe(t, 1)
    name = cid("wd")
    a = Client(client_id=name, v5=True, clean=False, session_expiry=60, will=will_with_delay(t, 2))
    a.drop()
    b = Client(client_id=name, v5=True, clean=False, session_expiry=60)
    assert b.connack_flags["session present"] == 1
    sub.expect_none(within=3.5)  # past the delay and a sweep: the reconnect cancelled it
    b.close()


@case
def v5_session_expiry_zero_ends_the_session():
    t = "se0/" + uuid.uuid4().hex
    name = cid("exp0")
    a = Client(client_id=name, v5=True, clean=False, session_expiry=0)
    a.subscribe(t, 1)
    a.close()
    b = Client(client_id=name, v5=True, clean=False, session_expiry=0)
    assert b.connack_flags["session present"] == 0


@case
def v5_invalid_filter_gets_0x8f():
    assert raw_subscribe(5, ["a/#/b", "ok/#"]) == [0x8F, 1]


# ---- chat namespace and credentials (TOKENS: {"alice": token, "bob": token, "expired": token}) ----

@case
def bad_token_v311_gets_0x04():
    c = Client(username="alice", password="not-a-token", connect=False)
    c.connect(expect_rc=4)


@case
def bad_token_v5_gets_0x86():
    c = Client(v5=True, username="alice", password="not-a-token", connect=False)
    c.connect(expect_rc=0x86)


@case
def expired_token_is_refused():
    c = Client(username="alice", password=TOKENS["expired"], connect=False)
    c.connect(expect_rc=4)


@case
def username_must_be_the_tokens_user():
    c = Client(username="mallory", password=TOKENS["alice"], connect=False)
    c.connect(expect_rc=4)


@case
def subscribing_to_another_users_inbox_is_refused():
    c = Client(client_id=cid("alice"), username="alice", password=TOKENS["alice"])
    assert c.subscribe("inbox/bob/#", 1) == [0x80]
    v5 = Client(client_id=cid("alice"), v5=True, username="alice", password=TOKENS["alice"])
    assert v5.subscribe("inbox/bob/#", 1) == [0x87]
    assert v5.subscribe("inbox/alice/#", 1) == [1]


@case
def anonymous_cannot_use_chat():
    c = Client(v5=True)
    assert c.subscribe("inbox/alice/#", 1) == [0x87]
    r = Raw()
    r.send(raw_connect(level=5))
    r.read_packet()
    body = mqtt_str("chat/u/alice") + struct.pack(">H", 4) + b"\x00" + b"x"
    r.send(b"\x32" + varint(len(body)) + body)
    t, ack = r.read_packet()
    assert t == 0x40 and ack[2] == 0x87, ack


@case
def chat_message_is_delivered_through_the_inbox_with_properties():
    bob = Client(client_id=cid("bob"), v5=True, username="bob", password=TOKENS["bob"])
    assert bob.subscribe("inbox/bob/#", 1) == [1]
    alice = Client(client_id=cid("alice"), username="alice", password=TOKENS["alice"])
    body = uuid.uuid4().hex.encode()
    alice.publish("chat/u/bob", body, qos=1)
    m = bob.expect()
    assert m.topic == "inbox/bob/u/alice", m.topic
    assert m.payload == body
    assert m.qos == 1
    props = dict(m.properties.UserProperty)
    assert props["sender"] == "alice" and int(props["seq"]) >= 1 and "timestamp_ms" in props, props


@case
def chat_to_a_missing_group_is_refused_v5():
    alice = Client(client_id=cid("alice"), v5=True, username="alice", password=TOKENS["alice"])
    info = alice.c.publish("chat/g/999999", b"x", 1)
    info.wait_for_publish(TIMEOUT)
    r = Raw()
    props = b""
    vh = mqtt_str("MQTT") + bytes([5, 0xC2]) + struct.pack(">H", 30) + varint(0)
    payload = mqtt_str(cid("alice")) + mqtt_str("alice") + mqtt_str(TOKENS["alice"])
    r.send(b"\x10" + varint(len(vh + payload)) + vh + payload)
    t, ack = r.read_packet()
    assert t == 0x20 and ack[1] == 0, ack
    body = mqtt_str("chat/g/999999") + struct.pack(">H", 5) + b"\x00" + b"x"
    r.send(b"\x32" + varint(len(body)) + body)
    t, ack = r.read_packet()
    assert t == 0x40 and ack[2] >= 0x80, ack


if __name__ == "__main__":
    name = sys.argv[1]
    if name == "--list":
        print("\n".join(CASES))
        sys.exit(0)
    try:
        CASES[name]()
    except Exception as e:  # noqa: BLE001 - the case failed: say why
        import traceback
        traceback.print_exc()
        print(f"FAILED {name}: {e!r}")
        sys.exit(1)
    print("ok")
    sys.exit(0)
