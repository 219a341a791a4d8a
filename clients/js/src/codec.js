// Packet types, reason codes and the protobuf bodies of docs/protocol.md §3 and Protocol/chat.proto.
// Bodies go through protobufjs's reflection ("light") runtime with the descriptor in chat-schema.js.
// uint64 fields are BigInt on both sides of this module: client_msg_id (~2^60) does not fit a Number.
import protobuf from 'protobufjs/light.js';
import schema from './chat-schema.js';

const root = protobuf.Root.fromJSON(schema);
const ns = 'chatbroker.v1.';

/** Values of a proto enum keyed by their name without the enum's prefix: ReasonCode.BAD_TOKEN = 48. */
function shortEnum(name, prefix) {
  const out = {};
  for (const [key, value] of Object.entries(root.lookupEnum(ns + name).values)) {
    out[key.slice(prefix.length)] = value;
  }
  return Object.freeze(out);
}

export const PacketType = shortEnum('PacketType', 'PACKET_TYPE_');
export const ReasonCode = shortEnum('ReasonCode', 'REASON_CODE_');
export const ContentType = shortEnum('ContentType', 'CONTENT_TYPE_');
export const Capability = shortEnum('Capability', 'CAPABILITY_');
export const PresenceStatus = shortEnum('PresenceStatus', 'PRESENCE_STATUS_');
export const ReceiptKind = shortEnum('ReceiptKind', 'RECEIPT_KIND_');

/** The DUP flag (bit 0 of the type byte): allowed on SEND and DELIVER only. */
export const DUP = 0x01;

/** Packets a client sends; every other known type is server to client (DISCONNECT goes both ways). */
const clientToServer = new Set([
  PacketType.CONNECT, PacketType.DISCONNECT, PacketType.PING, PacketType.SEND, PacketType.ACK, PacketType.READ,
  PacketType.SYNC, PacketType.HISTORY, PacketType.GROUP_REQUEST, PacketType.PRESENCE_SET,
  PacketType.PRESENCE_SUBSCRIBE, PacketType.TYPING, PacketType.KEYS_UPLOAD, PacketType.FETCH_KEYS,
  PacketType.SETTINGS,
]);

/** type byte (flags cleared) -> { name, message type, allowed flag bits, direction } */
const packets = new Map();
for (const [name, value] of Object.entries(PacketType)) {
  if (value === 0) continue;
  // PRESENCE_SUBSCRIBED -> PresenceSubscribed: every body message is named after its packet type.
  const messageName = name.toLowerCase().replace(/(^|_)([a-z])/g, (_, __, c) => c.toUpperCase());
  packets.set(value, {
    name,
    message: root.lookupType(ns + messageName),
    flags: value === PacketType.SEND || value === PacketType.DELIVER ? DUP : 0,
    fromServer: value === PacketType.DISCONNECT || !clientToServer.has(value),
  });
}

export function packetInfo(type) {
  return packets.get(type);
}

/** A peer broke the framing rules; `reason` is the ReasonCode that names how. */
export class ProtocolError extends Error {
  constructor(reason, message) {
    super(message ?? `protocol error ${reasonName(reason)}`);
    this.name = 'ProtocolError';
    this.reason = reason;
  }
}

const reasonNames = new Map(Object.entries(ReasonCode).map(([k, v]) => [v, k]));
export function reasonName(code) {
  return reasonNames.get(code) ?? `REASON_${code}`;
}

// protobufjs turns a decimal string into a uint64 exactly (through Long); BigInt goes in as a string.
function toWire(value) {
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map(toWire);
  if (value !== null && typeof value === 'object' && !(value instanceof Uint8Array)) {
    const out = {};
    for (const key of Object.keys(value)) {
      if (value[key] !== undefined) out[key] = toWire(value[key]);
    }
    return out;
  }
  return value;
}

const toObjectOptions = { longs: BigInt, enums: Number, defaults: true, arrays: true, oneofs: true };

/** Encodes one frame: type byte (with flags), remaining length varint, protobuf body. */
export function encodeFrame(type, body = {}, flags = 0) {
  const info = packets.get(type);
  if (info === undefined) throw new RangeError(`unknown packet type ${type}`);
  const message = info.message;
  const bytes = message.encode(message.fromObject(toWire(body))).finish();
  const length = bytes.length;
  let lengthBytes = 1;
  for (let v = length >>> 7; v > 0; v >>>= 7) lengthBytes++;
  const frame = new Uint8Array(1 + lengthBytes + length);
  frame[0] = type | flags;
  let v = length;
  let i = 1;
  while (v >= 0x80) {
    frame[i++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  frame[i++] = v;
  frame.set(bytes, i);
  return frame;
}

/** Decodes the body of a frame of `type` into a plain object (snake_case fields, BigInt for 64-bit). */
export function decodeBody(type, body) {
  const message = packets.get(type).message;
  let decoded;
  try {
    decoded = message.decode(body);
  } catch (e) {
    throw new ProtocolError(ReasonCode.MALFORMED_BODY, `malformed ${packets.get(type).name} body: ${e.message}`);
  }
  return message.toObject(decoded, toObjectOptions);
}

/** Decodes a SystemEvent (the body of a DELIVER with content type SYSTEM). */
export function decodeSystemEvent(bytes) {
  const message = root.lookupType(ns + 'SystemEvent');
  return message.toObject(message.decode(bytes), toObjectOptions);
}
