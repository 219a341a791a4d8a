#!/usr/bin/env python3
"""A chat device over MQTT 5 with paho, driven by the C# tests (ChatBroker.Mqtt.Tests).

  chat_peer.py phone HOST PORT USER CLIENT_ID TOKEN PEER COUNT
      subscribes to inbox/USER/#, prints "ready", publishes COUNT messages "USER-i" to chat/u/PEER at QoS 1 (each one
      after the PUBACK of the one before), and exits once it has also received COUNT messages from PEER, printing each
      received message as a JSON line {"seq", "sender", "body", "topic"}; then waits for PEER's DELIVERED receipt
      (inbox/USER/receipts) and prints it as {"receipt", "up_to_seq", "reader"}.
  chat_peer.py observer HOST PORT USER CLIENT_ID TOKEN EXPECTED_FILE
      resumes a persistent session (from the device's stored cursor) and prints every inbox message as a JSON line until
      it has every body listed in EXPECTED_FILE (one a line), then prints "all"; after 20 s it prints "missing N".
  chat_peer.py publisher HOST PORT USER CLIENT_ID TOKEN PEER COUNT INFLIGHT
      publishes COUNT messages "m-i" to chat/u/PEER at QoS 1 with INFLIGHT in flight and prints "acked i" per PUBACK.
"""
import json
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

mode, host, port, user, client_id, token = sys.argv[1:7]
port = int(port)


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def connect(clean, expiry=None):
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, token)
    connected = threading.Event()
    c.on_connect = lambda *a, **k: connected.set()
    props = None
    if expiry is not None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
    c.connect(host, port, 30, clean_start=clean, properties=props)
    c.loop_start()
    if not connected.wait(10):
        raise SystemExit("no CONNACK")
    return c


def as_record(m):
    props = dict(m.properties.UserProperty) if hasattr(m.properties, "UserProperty") else {}
    return {"seq": int(props.get("seq", 0)), "sender": props.get("sender"), "body": m.payload.decode(), "topic": m.topic}


if mode == "phone":
    peer, count = sys.argv[7], int(sys.argv[8])
    received = queue.Queue()
    subscribed = threading.Event()
    c = connect(clean=True)
    c.on_message = lambda cl, u, m: received.put(m)
    c.on_subscribe = lambda *a, **k: subscribed.set()
    c.subscribe("inbox/" + user + "/#", 1)
    if not subscribed.wait(10):
        raise SystemExit("no SUBACK")
    emit("ready")
    for i in range(count):
        info = c.publish("chat/u/" + peer, f"{user}-{i}".encode(), 1)
        info.wait_for_publish(10)
    got = 0
    receipt = None
    while got < count or receipt is None:
        m = received.get(timeout=20)
        if m.topic.endswith("/receipts"):
            r = json.loads(m.payload)
            if r["reader"] == peer and r["kind"] == "delivered":
                receipt = {"receipt": r["kind"], "up_to_seq": r["up_to_seq"], "reader": r["reader"]}
            continue
        r = as_record(m)
        emit(json.dumps(r))
        if r["sender"] == peer:
            got += 1
    emit(json.dumps(receipt))
    c.disconnect()
    c.loop_stop()
elif mode == "observer":
    expected = set(line.strip() for line in open(sys.argv[7]) if line.strip())
    received = queue.Queue()
    c = connect(clean=False, expiry=300)
    c.on_message = lambda cl, u, m: received.put(m)
    c.subscribe("inbox/" + user + "/#", 1)
    deadline = time.monotonic() + 20
    while expected:
        try:
            m = received.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if m.topic.endswith("/receipts"):
            continue
        r = as_record(m)
        emit(json.dumps(r))
        expected.discard(r["body"])
    emit("all" if not expected else f"missing {len(expected)}")
    c.disconnect()
    c.loop_stop()
elif mode == "publisher":
    peer, count, inflight = sys.argv[7], int(sys.argv[8]), int(sys.argv[9])
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, token)
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    acked = [0]
    all_acked = threading.Event()

    def on_publish(cl, u, mid):
        # paho numbers messages 1, 2, ... and this client publishes nothing else: message i has mid i + 1.
        emit(f"acked {mid - 1}")
        acked[0] += 1
        if acked[0] == count:
            all_acked.set()

    c.on_publish = on_publish
    connected = threading.Event()
    c.on_connect = lambda *a, **k: connected.set()
    c.on_disconnect = lambda *a, **k: all_acked.set()  # the broker was killed: nothing more will be acknowledged
    c.connect(host, port, 30)
    c.loop_start()
    if not connected.wait(10):
        raise SystemExit("no CONNACK")
    emit("connected")
    for i in range(count):
        c.publish("chat/u/" + peer, f"m-{i}".encode(), 1)
    all_acked.wait(60)
    emit("done")
