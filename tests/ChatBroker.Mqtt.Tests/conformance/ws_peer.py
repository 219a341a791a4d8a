#!/usr/bin/env python3
"""MQTT over WebSocket (ws.listen's /mqtt, subprotocol "mqtt") with paho, driven by MqttWebSocketTests:
  ws_peer.py HOST PORT   a 3.1.1 subscriber over WebSocket and a 5.0 publisher over WebSocket exchange QoS 0/1/2
                         messages and a retained one; prints "ok"
"""
import queue
import sys
import uuid

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1], int(sys.argv[2])


def client(v5):
    c = mqtt.Client(client_id="ws-" + uuid.uuid4().hex[:8], protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, transport="websockets")
    c.ws_set_options(path="/mqtt")
    connacks, messages, subacks = queue.Queue(), queue.Queue(), queue.Queue()
    c.on_connect = lambda cl, u, flags, rc, p=None: connacks.put(rc)
    c.on_message = lambda cl, u, m: messages.put(m)
    c.on_subscribe = lambda cl, u, mid, granted, p=None: subacks.put(mid)
    c.connect(HOST, PORT, 30)
    c.loop_start()
    rc = connacks.get(timeout=10)
    assert (rc.value if hasattr(rc, "value") else rc) == 0, rc
    return c, messages, subacks


topic = "ws/" + uuid.uuid4().hex
pub, _, _ = client(True)
pub.publish(topic + "/kept", b"retained", 1, retain=True).wait_for_publish(10)
sub, messages, subacks = client(False)
sub.subscribe(topic + "/#", 2)
subacks.get(timeout=10)
m = messages.get(timeout=10)
assert m.payload == b"retained" and m.retain, m.payload
big = bytes(range(256)) * 400  # 100 KiB: one packet in several WebSocket frames
for qos in (0, 1, 2):
    info = pub.publish(topic + "/live", f"qos{qos}".encode() if qos < 2 else big, qos)
    info.wait_for_publish(10)
    m = messages.get(timeout=10)
    assert m.payload == (f"qos{qos}".encode() if qos < 2 else big), m.payload[:20]
print("ok")
