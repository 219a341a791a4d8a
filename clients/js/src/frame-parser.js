// A resumable frame parser (docs/protocol.md §2), the JavaScript form of Protocol/FrameReader.cs.
// Feed it whatever the transport delivers, in pieces of any size; it returns the complete frames.
// The type byte is checked the moment it arrives and the remaining length as soon as its bytes are in,
// before any body byte is awaited: a body buffer is allocated only for a length within maxFrameSize.
import { ProtocolError, ReasonCode, packetInfo } from './codec.js';

/** Largest value a 4-byte remaining length can hold. */
export const MAX_REMAINING_LENGTH = 268_435_455;

export class FrameParser {
  #maxFrameSize;
  #type = -1;          // type byte of the frame being read; -1 = waiting for one
  #flags = 0;
  #length = 0;
  #lengthBytes = 0;    // length bytes read so far; 0 with #type >= 0 = reading the length
  #body = null;        // allocated once the length is checked
  #filled = 0;

  constructor(maxFrameSize = 65_536) {
    if (!Number.isInteger(maxFrameSize) || maxFrameSize < 0 || maxFrameSize > MAX_REMAINING_LENGTH) {
      throw new RangeError('maxFrameSize must be between 0 and 268,435,455');
    }
    this.#maxFrameSize = maxFrameSize;
  }

  /** True when the parser stopped inside a frame: the stream ending now would be TRUNCATED_FRAME. */
  get midFrame() {
    return this.#type >= 0;
  }

  /**
   * Consumes `chunk` (a Uint8Array) and returns the frames it completed, each
   * { type, flags, body } with `type` = byte & 0xFC. Throws ProtocolError on malformed input;
   * the parser is then unusable (the connection must close).
   */
  push(chunk) {
    const frames = [];
    let i = 0;
    while (i < chunk.length) {
      if (this.#type < 0) {
        const first = chunk[i++];
        const type = first & 0xfc;
        const info = packetInfo(type);
        if (info === undefined) throw new ProtocolError(ReasonCode.UNKNOWN_PACKET_TYPE, `unknown packet type 0x${type.toString(16)}`);
        if ((first & 0x03 & ~info.flags) !== 0) throw new ProtocolError(ReasonCode.INVALID_FLAGS, `flags ${first & 3} not allowed on ${info.name}`);
        this.#type = type;
        this.#flags = first & 0x03;
        this.#length = 0;
        this.#lengthBytes = 0;
        continue;
      }
      if (this.#body === null) {
        const b = chunk[i++];
        this.#length |= (b & 0x7f) << (7 * this.#lengthBytes);
        this.#lengthBytes++;
        if ((b & 0x80) !== 0) {
          // The 4th length byte says "more follows": a 5-byte varint is never valid.
          if (this.#lengthBytes === 4) throw new ProtocolError(ReasonCode.MALFORMED_LENGTH, 'remaining length longer than 4 bytes');
          continue;
        }
        // A last byte of 0 after a continuation means the value fit in fewer bytes.
        if (b === 0 && this.#lengthBytes > 1) throw new ProtocolError(ReasonCode.MALFORMED_LENGTH, 'remaining length not minimally encoded');
        if (this.#length > this.#maxFrameSize) {
          throw new ProtocolError(ReasonCode.FRAME_TOO_LARGE, `frame body of ${this.#length} bytes exceeds ${this.#maxFrameSize}`);
        }
        this.#body = new Uint8Array(this.#length);
        this.#filled = 0;
      }
      const take = Math.min(this.#length - this.#filled, chunk.length - i);
      this.#body.set(chunk.subarray(i, i + take), this.#filled);
      this.#filled += take;
      i += take;
      if (this.#filled === this.#length) this.#emit(frames);
    }
    return frames;
  }

  #emit(frames) {
    frames.push({ type: this.#type, flags: this.#flags, body: this.#body });
    this.#type = -1;
    this.#body = null;
  }
}
