import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { FrameParser, PacketType, ReasonCode, decodeBody, encodeFrame } from '../src/index.js';

const hex = (s) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

// docs/protocol.md §10: the worked examples, byte for byte.
const connectExample = '10 1f 08 01 12 05 61 6c 69 63 65 1a 06 70 68 6f 6e 65 31 22 05 74 6f 6b 33 6e 28 ac 02 30 2a 40 03';
const sendExample = '30 15 08 90 80 80 80 80 20 10 81 80 80 80 10 2a 06 68 69 20 62 6f 62';
const deliverExample = '38 29 08 81 80 80 80 10 10 11 1a 05 61 6c 69 63 65 22 06 70 68 6f 6e 65 31 28 fb 80 c3 e2 ab 33 3a 06 68 69 20 62 6f 62 48 d3 09';

test('encoder produces the worked examples of docs/protocol.md', () => {
  const connect = encodeFrame(PacketType.CONNECT, {
    protocol_version: 1, user_id: 'alice', device_id: 'phone1', token: 'tok3n', keepalive_s: 300, resume_inbox_seq: 42n, capabilities: 3n,
  });
  assert.deepEqual(connect, hex(connectExample));
  const send = encodeFrame(PacketType.SEND, { client_msg_id: 2n ** 40n + 16n, conversation_id: 2n ** 32n + 1n, body: new TextEncoder().encode('hi bob') });
  assert.deepEqual(send, hex(sendExample));
});

test('a DELIVER fed one byte at a time comes out once, whole, after its last byte', () => {
  const bytes = hex(deliverExample);
  const parser = new FrameParser();
  for (let i = 0; i < bytes.length - 1; i++) {
    assert.deepEqual(parser.push(bytes.subarray(i, i + 1)), [], `no frame after byte ${i}`);
    assert.equal(parser.midFrame, true);
  }
  const frames = parser.push(bytes.subarray(bytes.length - 1));
  assert.equal(frames.length, 1);
  assert.equal(frames[0].type, PacketType.DELIVER);
  assert.equal(parser.midFrame, false);
  const d = decodeBody(frames[0].type, frames[0].body);
  assert.equal(d.conversation_id, 2n ** 32n + 1n);
  assert.equal(d.seq, 17n);
  assert.equal(d.sender_user_id, 'alice');
  assert.equal(d.timestamp_ms, 1764096000123n);
  assert.equal(new TextDecoder().decode(d.body), 'hi bob');
  assert.equal(d.inbox_seq, 1235n);
});

test('several frames in one chunk and a frame split across chunks, with a 2-byte length', () => {
  const big = encodeFrame(PacketType.SEND, { client_msg_id: 7n, conversation_id: 1n, body: new Uint8Array(300).fill(0x61) });
  assert.equal(big[1] & 0x80, 0x80, 'length takes two bytes');
  const stream = new Uint8Array([0x24, 0x00, ...big, 0x24, 0x00]);
  const parser = new FrameParser();
  // Cut inside the second length byte, then inside the body.
  const first = parser.push(stream.subarray(0, 4));
  assert.deepEqual(first.map((f) => f.type), [PacketType.PONG]);
  assert.deepEqual(parser.push(stream.subarray(4, 100)), []);
  const rest = parser.push(stream.subarray(100));
  assert.deepEqual(rest.map((f) => f.type), [PacketType.SEND, PacketType.PONG]);
  assert.equal(rest[0].body.length, big.length - 3);
  assert.equal(rest[1].body.length, 0);
});

test('a length over the max frame size is refused as soon as its bytes are in, before the body', () => {
  const parser = new FrameParser(100);
  assert.deepEqual(parser.push(Uint8Array.of(0x38, 0xe5)), []);
  assert.throws(() => parser.push(Uint8Array.of(0x00 | 0x01)), (e) => e.reason === ReasonCode.FRAME_TOO_LARGE);
  // 268,435,455 announced: rejected without waiting for (or allocating) a body.
  assert.throws(() => new FrameParser().push(Uint8Array.of(0x38, 0xff, 0xff, 0xff, 0x7f)), (e) => e.reason === ReasonCode.FRAME_TOO_LARGE);
});

test('malformed headers get their reason codes', () => {
  const reason = (bytes) => {
    try {
      new FrameParser().push(Uint8Array.from(bytes));
    } catch (e) {
      return e.reason;
    }
    return ReasonCode.SUCCESS;
  };
  assert.equal(reason([0x00]), ReasonCode.UNKNOWN_PACKET_TYPE);
  assert.equal(reason([0xf0]), ReasonCode.UNKNOWN_PACKET_TYPE);  // 0xB0 is SETTINGS now
  assert.equal(reason([0x35]), ReasonCode.INVALID_FLAGS);      // SENT allows no flags
  assert.equal(reason([0x32]), ReasonCode.INVALID_FLAGS);      // reserved bit on SEND
  assert.equal(reason([0x39, 0x00]), ReasonCode.SUCCESS);      // DELIVER with DUP is fine
  assert.equal(reason([0x24, 0x80, 0x00]), ReasonCode.MALFORMED_LENGTH);            // not minimal
  assert.equal(reason([0x24, 0x80, 0x80, 0x80, 0x80]), ReasonCode.MALFORMED_LENGTH); // 5 bytes
});

test('src/chat-schema.js is generated from the current Protocol/chat.proto', () => {
  const script = fileURLToPath(new URL('../scripts/generate-schema.js', import.meta.url));
  execFileSync(process.execPath, [script, '--check'], { stdio: 'pipe' });
});

test('SETTINGS is a client packet and SETTINGS_RESULT a server one (a server sending SETTINGS breaks the protocol)', async () => {
  const { packetInfo } = await import('../src/codec.js');
  assert.equal(packetInfo(PacketType.SETTINGS).fromServer, false);
  assert.equal(packetInfo(PacketType.SETTINGS_RESULT).fromServer, true);
});
