// A DELIVER of this device's own pending SEND settles the send like its SENT, and is not surfaced as a
// 'message' as well. It happens after a reconnect from inbox position 0 when the SEND was stored but its SENT
// was lost with the connection (seen in the browser test of a network drop). Against a fake transport, so
// the order of the frames is the test's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, FrameParser, PacketType, decodeBody, encodeFrame } from '../src/index.js';

class FakeTransport {
  written = [];
  onData = () => {};
  onClose = () => {};
  #parser = new FrameParser();
  connect() { return Promise.resolve(); }
  write(bytes) {
    for (const frame of this.#parser.push(bytes)) {
      const body = decodeBody(frame.type, frame.body);
      this.written.push({ type: frame.type, body });
      if (frame.type === PacketType.CONNECT) {
        queueMicrotask(() => this.onData(encodeFrame(PacketType.CONNACK, { reason: 0, keepalive_s: 60, session_id: 's' })));
      }
    }
  }
  end() { this.onClose(); }
  destroy() {}
}

const deliver = (fields) => encodeFrame(PacketType.DELIVER, {
  conversation_id: 7n, sender_device_id: 'web', timestamp_ms: 1000n, body: new TextEncoder().encode('hi'), ...fields,
});

test("a DELIVER of this device's own pending SEND settles the send and is not surfaced twice", async () => {
  const transport = new FakeTransport();
  const client = new ChatClient({ transport: () => transport, userId: 'alice', deviceId: 'web', token: 't', autoAck: false });
  await client.connect();
  const messages = [];
  client.on('message', (m) => messages.push(m));

  const sending = client.send(7n, 'hi');
  const send = transport.written.find((f) => f.type === PacketType.SEND).body;
  transport.onData(deliver({ seq: 4n, inbox_seq: 9n, sender_user_id: 'alice', client_msg_id: send.client_msg_id }));
  const sent = await sending;
  assert.equal(sent.seq, 4n);
  assert.equal(sent.conversationId, 7n);
  assert.equal(client.pendingSends, 0);
  assert.equal(client.cursor, 9n);

  // The SENT that follows changes nothing; another device's message and the peer's are surfaced as usual.
  transport.onData(encodeFrame(PacketType.SENT, { client_msg_id: send.client_msg_id, conversation_id: 7n, seq: 4n, timestamp_ms: 1000n }));
  transport.onData(deliver({ seq: 5n, inbox_seq: 10n, sender_user_id: 'alice', sender_device_id: 'phone', client_msg_id: 99n }));
  transport.onData(deliver({ seq: 6n, inbox_seq: 11n, sender_user_id: 'bob' }));
  assert.deepEqual(messages.map((m) => m.seq), [5n, 6n]);
  await client.disconnect();
});
