#!/usr/bin/env python3
"""The general topic space's persistent state across a broker restart, driven by MqttRestartTests (C#): each mode is
one side of a kill -9 of the broker.

  restart_peer.py before HOST PORT      persistent subscribers (3.1.1 clean session 0; 5.0 session expiry) go offline,
                                        QoS 1/2 messages are queued for them, a retained message is set, a QoS 2
                                        PUBLISH is left awaiting PUBREL, a QoS 2 delivery is left awaiting PUBCOMP;
                                        prints "ready"
  restart_peer.py after HOST PORT       after the restart: all of it is still there; prints "ok"
  restart_peer.py subscribe HOST PORT   a persistent subscriber to load/# goes offline; prints "ready"
  restart_peer.py load HOST PORT COUNT INFLIGHT
                                        publishes COUNT QoS 1 messages "m-i" to load/x, INFLIGHT in flight, and prints
                                        "acked i" per PUBACK
  restart_peer.py drain HOST PORT EXPECTED_FILE
                                        the load/# subscriber resumes; prints "all" once it has every body in
                                        EXPECTED_FILE, or "missing N" after 20 s
"""
import queue
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

mode, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
TIMEOUT = 10


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Client:
    def __init__(self, client_id, v5=False, clean=True, expiry=None):
        self.v5 = v5
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5) if v5 else \
            mqtt.Client(client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        connacks = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, p=None: connacks.put(flags)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, granted, p=None: self.acks.put(mid)
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            self.c.connect(HOST, PORT, 30, clean_start=clean, properties=props)
        else:
            self.c.connect(HOST, PORT, 30)
        self.c.loop_start()
        flags = connacks.get(timeout=TIMEOUT)
        self.session_present = bool(flags.get("session present")) if isinstance(flags, dict) else bool(getattr(flags, "session_present", 0))

    def subscribe(self, topic, qos):
        _, mid = self.c.subscribe(topic, qos)
        assert self.acks.get(timeout=TIMEOUT) == mid

    def publish(self, topic, payload, qos, retain=False):
        info = self.c.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), "not acknowledged"

    def collect(self, count, within=TIMEOUT):
        got = []
        deadline = time.time() + within
        while len(got) < count and time.time() < deadline:
            try:
                got.append(self.messages.get(timeout=max(0.01, deadline - time.time())))
            except queue.Empty:
                break
        return got

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def varint(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class Raw:
    """MQTT 3.1.1 by hand, clean session 0: for the packets paho does not let a test hold back (PUBREL, PUBCOMP)."""

    def __init__(self, client_id):
        self.s = socket.create_connection((HOST, PORT), timeout=TIMEOUT)
        self.buf = b""
        body = mqtt_str("MQTT") + bytes([4, 0x00]) + struct.pack(">H", 30) + mqtt_str(client_id)
        self.s.sendall(b"\x10" + varint(len(body)) + body)
        t, ack = self.read()
        assert t == 0x20 and ack[1] == 0, ack
        self.session_present = ack[0] == 1

    def send(self, data):
        self.s.sendall(data)

    def read(self):
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
                raise AssertionError("connection closed")
            self.buf += chunk

    def close(self):
        self.s.close()


Q2_BODY = mqtt_str("keep/q2") + struct.pack(">H", 9) + b"exactly-once"
EXPECTED = sorted([f"msg-{i}" for i in range(20)] + [f"q2-{i}" for i in range(5)] + ["exactly-once"])


def before():
    for client_id, v5 in (("keep311", False), ("keep5", True)):
        c = Client(client_id, v5=v5, clean=False, expiry=3600)
        c.subscribe("keep/#", 2)
        c.close()
    pub = Client("keep-pub")
    for i in range(20):
        pub.publish("keep/a", f"msg-{i}".encode(), 1)
    for i in range(5):
        pub.publish("keep/b", f"q2-{i}".encode(), 2)
    pub.publish("ret/x", b"retained", 1, retain=True)

    # A QoS 2 PUBLISH received (PUBREC) and not released: its packet id stays until PUBREL.
    q2in = Raw("q2in")
    q2in.send(b"\x34" + varint(len(Q2_BODY)) + Q2_BODY)
    assert q2in.read() == (0x50, b"\x00\x09")
    q2in.close()

    # A QoS 2 delivery the client PUBRECed; the broker's PUBREL is not completed.
    q2out = Raw("q2out")
    body = struct.pack(">H", 1) + mqtt_str("out/#") + b"\x02"
    q2out.send(b"\x82" + varint(len(body)) + body)
    assert q2out.read()[0] == 0x90
    pub.publish("out/x", b"pubrel-state", 2)
    t, publish = q2out.read()
    assert t & 0xF0 == 0x30 and (t >> 1) & 3 == 2, t
    packet_id = publish[2 + struct.unpack(">H", publish[:2])[0]:][:2]
    q2out.send(b"\x50\x02" + packet_id)
    assert q2out.read() == (0x62, packet_id)
    q2out.close()
    pub.close()
    with open(sys.argv[4], "wb") as f:
        f.write(packet_id)
    emit("ready")


def after():
    # The QoS 2 PUBLISH resent (DUP) after the restart is the same one: not delivered again; PUBREL completes it.
    q2in = Raw("q2in")
    assert q2in.session_present, "q2in's session was not kept"
    q2in.send(b"\x3C" + varint(len(Q2_BODY)) + Q2_BODY)
    assert q2in.read() == (0x50, b"\x00\x09")
    q2in.send(b"\x62\x02\x00\x09")
    assert q2in.read() == (0x70, b"\x00\x09")
    q2in.close()

    for client_id, v5 in (("keep311", False), ("keep5", True)):
        c = Client(client_id, v5=v5, clean=False, expiry=3600)
        assert c.session_present, f"{client_id}: session not present after the restart"
        got = c.collect(len(EXPECTED))
        extra = c.collect(1, within=0.5)
        bodies = sorted(m.payload.decode() for m in got + extra)
        assert bodies == EXPECTED, f"{client_id}: got {bodies}"
        assert [m.payload.decode() for m in got if m.topic == "keep/a"] == [f"msg-{i}" for i in range(20)], "order"
        c.close()

    r = Client("ret-reader")
    r.subscribe("ret/#", 1)
    m = r.collect(1)
    assert m and m[0].payload == b"retained" and m[0].retain, "the retained message did not survive"
    r.close()

    # The delivery awaiting PUBCOMP: the broker resends PUBREL, not the PUBLISH.
    with open(sys.argv[4], "rb") as f:
        packet_id = f.read()
    q2out = Raw("q2out")
    assert q2out.session_present
    assert q2out.read() == (0x62, packet_id)
    q2out.send(b"\x70\x02" + packet_id)
    emit("ok")


def subscribe():
    c = Client("loadsub", clean=False)
    c.subscribe("load/#", 1)
    c.close()
    emit("ready")


def load():
    count, inflight = int(sys.argv[4]), int(sys.argv[5])
    c = mqtt.Client(client_id="loadpub", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    acked = [0]
    finished = threading.Event()

    def on_publish(cl, u, mid):
        # paho numbers messages 1, 2, ... and this client publishes nothing else: message i has mid i + 1.
        emit(f"acked {mid - 1}")
        acked[0] += 1
        if acked[0] == count:
            finished.set()

    c.on_publish = on_publish
    connected = threading.Event()
    c.on_connect = lambda *a, **k: connected.set()
    c.on_disconnect = lambda *a, **k: finished.set()  # the broker was killed: nothing more will be acknowledged
    c.connect(HOST, PORT, 30)
    c.loop_start()
    if not connected.wait(10):
        raise SystemExit("no CONNACK")
    for i in range(count):
        c.publish("load/x", f"m-{i}".encode(), 1)
    finished.wait(60)
    emit("done")
    import os
    os._exit(0)


def drain():
    expected = set(open(sys.argv[4]).read().split())
    c = Client("loadsub", clean=False)
    assert c.session_present, "loadsub's session was not kept"
    seen = set()
    deadline = time.time() + 20
    while not expected <= seen and time.time() < deadline:
        try:
            seen.add(c.messages.get(timeout=max(0.01, deadline - time.time())).payload.decode())
        except queue.Empty:
            break
    missing = expected - seen
    emit("all" if not missing else f"missing {len(missing)}: {sorted(missing)[:10]}")


{"before": before, "after": after, "subscribe": subscribe, "load": load, "drain": drain}[mode]()
