// ChatClient: one device's session with the broker, mirroring the .NET SDK (Client/README.md):
// connect with a token, automatic reconnect with backoff and resume from the cursor, idempotent
// sends retried with the same client_msg_id, deduplicated DELIVERs, ACK, READ, receipts, presence,
// typing and PING keepalive. Works with any transport of transport.js.
import {
  Capability, DUP, PacketType, PresenceStatus, ProtocolError, ReasonCode,
  decodeBody, encodeFrame, packetInfo, reasonName,
} from './codec.js';
import { FrameParser } from './frame-parser.js';

/** A refused CONNECT, a failed request or a session that ended; `reason` is a ReasonCode. */
export class ChatError extends Error {
  constructor(reason, serverMessage = '', retryAfterMs = 0) {
    super(`${reasonName(reason)}${serverMessage ? `: ${serverMessage}` : ''}`);
    this.name = 'ChatError';
    this.reason = reason;
    this.serverMessage = serverMessage;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Reasons after which reconnecting cannot help (docs/protocol.md §8): the client closes. */
const finalReasons = new Set([
  ReasonCode.SESSION_TAKEN_OVER, ReasonCode.BAD_TOKEN, ReasonCode.IDENTITY_MISMATCH,
  ReasonCode.DEVICE_REVOKED, ReasonCode.UNSUPPORTED_VERSION,
]);

/** CONNACK refusals that ConnectAsync-style first connects retry with backoff, as the .NET SDK does. */
const transientRefusals = new Set([
  ReasonCode.SERVER_BUSY, ReasonCode.SERVER_UNAVAILABLE, ReasonCode.TOO_MANY_DEVICES, ReasonCode.TOKEN_EXPIRED,
]);

/** ERRORs on a SEND after which the same SEND is retried once retry_after_ms has passed. */
const retriableSendErrors = new Set([ReasonCode.RATE_LIMITED, ReasonCode.SERVER_BUSY, ReasonCode.SERVER_UNAVAILABLE]);

const isProtocolError = (reason) => reason >= 16 && reason < 48;

/** Dedupe window per conversation: a floor plus at most this many seqs above it. */
const DEDUPE_WINDOW = 32;
const DEDUPE_CONVERSATIONS = 4096;

/**
 * Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^attempt)), never below
 * the server's retry_after_ms.
 */
export function backoffDelay(attempt, retryAfterMs = 0, { initialDelayMs = 250, maxDelayMs = 30_000 } = {}, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempt, 30));
  return Math.max(retryAfterMs, Math.floor(random() * ceiling));
}

export class ChatClient {
  #options;
  #listeners = new Map();
  #state = 'idle';            // idle | connecting | connected | reconnecting | closed
  #transport = null;
  #parser = null;
  #connectionId = 0;          // bumps on each connection so late callbacks of an old one are ignored
  #attempt = 0;
  #retryTimer = null;
  #keepaliveTimer = null;
  #keepaliveMs = 0;
  #lastSentAt = 0;
  #lastReceivedAt = 0;
  #pingSentAt = 0;
  #serverRetryAfterMs = 0;
  #lastReason = ReasonCode.SUCCESS;

  #cursor;
  #ackedCursor = 0n;
  #inBacklog = false;
  #syncWaiters = [];
  #dedupe = new Map();        // conversation id -> { floor, seen: Set<bigint> }

  #nextLocalId = 0n;
  #idBase;
  #pendingSends = new Map();  // client_msg_id -> { body, resolve, reject, written }
  #nextRequestId = 1n;
  #pendingRequests = new Map(); // request_id -> { type, resolve, reject }
  #presenceSubscriptions = new Set();
  #queued = [];               // frames (READ, ACK...) waiting for a connection

  /**
   * @param {object} options
   * @param {() => object} options.transport   factory of a transport (transport.js), called per attempt
   * @param {string} options.userId
   * @param {string} options.deviceId
   * @param {string | (() => string | Promise<string>)} options.token  asked for before every attempt
   */
  constructor(options) {
    if (typeof options?.transport !== 'function') throw new TypeError('options.transport must be a transport factory');
    if (!options.userId || !options.deviceId) throw new TypeError('options.userId and options.deviceId are required');
    this.#options = {
      keepaliveS: 60,
      capabilities: Capability.RECEIPTS | Capability.TYPING | Capability.PRESENCE,
      maxFrameSize: 65_536,
      autoReconnect: true,
      autoAck: true,
      resumeInboxSeq: 0n,
      reconnect: { initialDelayMs: 250, maxDelayMs: 30_000 },
      connectTimeoutMs: 10_000,
      clientInfo: 'chatbroker-js/0.1.0',
      ...options,
    };
    this.#cursor = BigInt(this.#options.resumeInboxSeq);
    this.#ackedCursor = this.#cursor;
    // Unique per device without persisting anything: Unix ms at construction << 20, plus a counter.
    this.#idBase = BigInt(Date.now()) << 20n;
  }

  /** idle, connecting, connected, reconnecting or closed. */
  get state() { return this.#state; }
  /** Last received inbox_seq: persist it and pass it back as `resumeInboxSeq`. */
  get cursor() { return this.#cursor; }
  /** The CONNACK of the current connection (session id, keepalive, max frame size, capabilities). */
  connack = null;

  // ---- events ----

  /**
   * Events: 'message' (ReceivedMessage), 'receipt', 'presence', 'typing', 'sync' (SyncDone),
   * 'connected' (Connack), 'disconnected' ({ reason, error }), 'reconnecting' ({ attempt, delayMs }),
   * 'closed' ({ reason }), 'error' (ChatError of an ERROR that matches no pending request).
   */
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (set === undefined) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return this;
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
    return this;
  }

  #emit(event, value) {
    const set = this.#listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) listener(value);
  }

  // ---- connection ----

  /**
   * Opens the session. Resolves with the CONNACK; rejects with ChatError for a refusal that retrying
   * cannot fix (BAD_TOKEN, IDENTITY_MISMATCH, ...) and the client stays usable; transient refusals
   * (SERVER_BUSY, ...) are retried with backoff. From then on the client reconnects by itself.
   */
  async connect() {
    if (this.#state === 'connected') return this.connack;
    if (this.#state === 'connecting') throw new Error('connect() already in progress');
    this.#state = 'connecting';
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#open();
      } catch (error) {
        if (!(error instanceof ChatError) || !transientRefusals.has(error.reason)) {
          this.#state = 'idle';
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt, error.retryAfterMs, this.#options.reconnect)));
      }
    }
  }

  /** One attempt: transport, CONNECT, wait for CONNACK. */
  async #open() {
    const id = ++this.#connectionId;
    const token = typeof this.#options.token === 'function' ? await this.#options.token() : this.#options.token;
    const transport = this.#options.transport();
    const parser = new FrameParser(this.#options.maxFrameSize);
    let settle;
    const connacked = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    transport.onData = (chunk) => {
      if (id === this.#connectionId) this.#onData(chunk, settle);
    };
    transport.onClose = (error) => {
      if (id !== this.#connectionId) return;
      if (this.#state === 'connected') this.#onConnectionLost(error);
      else settle.reject(error ?? new Error('connection closed before CONNACK'));
    };
    const timeout = setTimeout(() => {
      settle.reject(new Error('no CONNACK within connectTimeoutMs'));
      transport.destroy();
    }, this.#options.connectTimeoutMs);
    settle.timeout = timeout;
    try {
      await transport.connect();
      this.#transport = transport;
      this.#parser = parser;
      this.#inBacklog = true;
      this.#write(encodeFrame(PacketType.CONNECT, {
        protocol_version: 1,
        user_id: this.#options.userId,
        device_id: this.#options.deviceId,
        token,
        keepalive_s: this.#options.keepaliveS,
        resume_inbox_seq: this.#cursor,
        capabilities: BigInt(this.#options.capabilities),
        max_frame_size: this.#options.maxFrameSize === 65_536 ? 0 : this.#options.maxFrameSize,
        client_info: this.#options.clientInfo,
      }));
      return await connacked;
    } catch (error) {
      clearTimeout(timeout);
      if (id === this.#connectionId) this.#connectionId++;   // ignore whatever the dead attempt still reports
      transport.destroy();
      this.#transport = null;
      throw error;
    }
  }

  #onConnected(connack) {
    this.connack = connack;
    this.#state = 'connected';
    this.#attempt = 0;
    this.#keepaliveMs = (connack.keepalive_s || this.#options.keepaliveS) * 1000;
    this.#lastReceivedAt = Date.now();
    this.#pingSentAt = 0;
    this.#startKeepalive();
    // Pending SENDs first, in id order, with DUP when they were on the wire before.
    const ids = [...this.#pendingSends.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const clientMsgId of ids) this.#writeSend(clientMsgId);
    if (this.#presenceSubscriptions.size > 0) {
      // Subscriptions end with the connection: renew them (the answer refreshes the state through 'presence').
      const requestId = this.#nextRequestId++;
      this.#pendingRequests.set(requestId, {
        type: PacketType.PRESENCE_SUBSCRIBE,
        resolve: (subscribed) => { for (const p of subscribed.current) this.#emit('presence', presenceOf(p)); },
        reject: () => {},
      });
      this.#write(encodeFrame(PacketType.PRESENCE_SUBSCRIBE, { request_id: requestId, user_ids: [...this.#presenceSubscriptions] }));
    }
    const queued = this.#queued;
    this.#queued = [];
    for (const frame of queued) this.#write(frame);
    this.#emit('connected', connack);
  }

  #onConnectionLost(error, reason = ReasonCode.SUCCESS, retryAfterMs = 0) {
    if (this.#state !== 'connected') return;
    this.#connectionId++;
    this.#stopKeepalive();
    this.#transport?.destroy();
    this.#transport = null;
    this.#state = 'reconnecting';
    this.#failRequests(new ChatError(reason === ReasonCode.SUCCESS ? ReasonCode.SERVER_UNAVAILABLE : reason, 'connection lost'));
    this.#emit('disconnected', { reason, error });
    for (const w of this.#syncWaiters.splice(0)) w.reject(new ChatError(reason, 'connection lost before SYNC_DONE'));
    if (finalReasons.has(reason) || !this.#options.autoReconnect) {
      this.#close(reason);
      return;
    }
    this.#scheduleReconnect(isProtocolError(reason) ? Infinity : 0, retryAfterMs);
  }

  #scheduleReconnect(floorAttempt, retryAfterMs) {
    const attempt = this.#attempt++;
    const delayMs = floorAttempt === Infinity
      ? Math.max(retryAfterMs, this.#options.reconnect.maxDelayMs)
      : backoffDelay(attempt, retryAfterMs, this.#options.reconnect);
    this.#emit('reconnecting', { attempt, delayMs });
    this.#retryTimer = setTimeout(async () => {
      this.#retryTimer = null;
      if (this.#state !== 'reconnecting') return;
      try {
        await this.#open();
      } catch (error) {
        if (this.#state !== 'reconnecting') return;
        if (error instanceof ChatError && finalReasons.has(error.reason)) {
          this.#close(error.reason);
          return;
        }
        this.#scheduleReconnect(0, error instanceof ChatError ? error.retryAfterMs : 0);
      }
    }, delayMs);
  }

  #close(reason) {
    this.#state = 'closed';
    this.#lastReason = reason;
    this.#stopKeepalive();
    clearTimeout(this.#retryTimer);
    const error = new ChatError(reason, 'client closed');
    for (const [, pending] of this.#pendingSends) pending.reject(error);
    this.#pendingSends.clear();
    this.#failRequests(error);
    this.#emit('closed', { reason });
  }

  #failRequests(error) {
    for (const [, request] of this.#pendingRequests) request.reject(error);
    this.#pendingRequests.clear();
  }

  /**
   * Orderly close: DISCONNECT(NORMAL_DISCONNECT), then the transport closes. Pending sends stay queued
   * and go out on the next connect().
   */
  async disconnect() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#stopKeepalive();
    const transport = this.#transport;
    this.#connectionId++;
    this.#transport = null;
    if (transport !== null && this.#state === 'connected') {
      const closed = new Promise((resolve) => { transport.onClose = () => resolve(); });
      transport.write(encodeFrame(PacketType.DISCONNECT, { reason: ReasonCode.NORMAL_DISCONNECT }));
      transport.end();
      await closed;
    } else {
      transport?.destroy();
    }
    this.#state = 'idle';
    for (const [, pending] of this.#pendingSends) pending.written = true;
    this.#failRequests(new ChatError(ReasonCode.NORMAL_DISCONNECT, 'disconnected'));
  }

  // ---- keepalive ----

  #startKeepalive() {
    this.#stopKeepalive();
    // PING after keepalive/2 without sending; dead when nothing arrives within min(30 s, keepalive/2) of it.
    const tick = Math.max(100, Math.min(1000, this.#keepaliveMs / 8));
    this.#keepaliveTimer = setInterval(() => this.#checkKeepalive(), tick);
    this.#keepaliveTimer.unref?.();
  }

  #stopKeepalive() {
    clearInterval(this.#keepaliveTimer);
    this.#keepaliveTimer = null;
  }

  #checkKeepalive() {
    const now = Date.now();
    const half = this.#keepaliveMs / 2;
    if (this.#pingSentAt !== 0 && this.#lastReceivedAt < this.#pingSentAt && now - this.#pingSentAt >= Math.min(30_000, half)) {
      this.#onConnectionLost(new Error('no answer to PING'), ReasonCode.KEEPALIVE_TIMEOUT);
      return;
    }
    if (now - this.#lastSentAt >= half) {
      this.#pingSentAt = now;
      this.#write(encodeFrame(PacketType.PING));
    }
  }

  #write(frame) {
    this.#lastSentAt = Date.now();
    this.#transport.write(frame);
  }

  /** Writes `frame` now when connected, else queues it for the next connection. */
  #writeOrQueue(frame) {
    if (this.#state === 'connected') this.#write(frame);
    else this.#queued.push(frame);
  }

  // ---- reading ----

  #onData(chunk, settle) {
    this.#lastReceivedAt = Date.now();
    let frames;
    try {
      frames = this.#parser.push(chunk);
    } catch (error) {
      this.#protocolFailure(error, settle);
      return;
    }
    const before = this.#cursor;
    let surfaced = false;
    for (const frame of frames) {
      const info = packetInfo(frame.type);
      if (!info.fromServer) {
        this.#protocolFailure(new ProtocolError(ReasonCode.PROTOCOL_VIOLATION, `${info.name} from the server`), settle);
        return;
      }
      if (this.#state !== 'connected') {
        // Before CONNACK only CONNACK is allowed.
        if (frame.type !== PacketType.CONNACK) {
          this.#protocolFailure(new ProtocolError(ReasonCode.PROTOCOL_VIOLATION, `${info.name} before CONNACK`), settle);
          return;
        }
        const connack = decodeBody(frame.type, frame.body);
        if (connack.reason === ReasonCode.SUCCESS) {
          // Open the session before the rest of this chunk: DELIVERs may follow CONNACK in it.
          clearTimeout(settle.timeout);
          this.#onConnected(connack);
          settle.resolve(connack);
        } else settle.reject(new ChatError(connack.reason, connack.message, connack.retry_after_ms));
        continue;
      }
      let body;
      try {
        body = decodeBody(frame.type, frame.body);
      } catch (error) {
        this.#protocolFailure(error, settle);
        return;
      }
      if (this.#dispatch(frame, body)) surfaced = true;
      if (this.#state !== 'connected') return;
    }
    if (this.#options.autoAck && (surfaced || this.#cursor !== before) && this.#cursor > this.#ackedCursor) {
      this.ack();
    }
  }

  #protocolFailure(error, settle) {
    if (this.#state === 'connected') {
      this.#transport.write(encodeFrame(PacketType.DISCONNECT, { reason: error.reason, message: error.message }));
      this.#onConnectionLost(error, error.reason);
    } else {
      settle.reject(error);
    }
  }

  /** Handles one packet of an open session; true when it surfaced a message. */
  #dispatch(frame, body) {
    switch (frame.type) {
      case PacketType.DELIVER:
        return this.#onDeliver(body);
      case PacketType.SENT: {
        const pending = this.#pendingSends.get(body.client_msg_id);
        this.#markSeen(body.conversation_id, body.seq);
        if (pending !== undefined) {
          this.#pendingSends.delete(body.client_msg_id);
          pending.resolve({
            clientMsgId: body.client_msg_id, conversationId: body.conversation_id, seq: body.seq, timestampMs: body.timestamp_ms,
          });
        }
        return false;
      }
      case PacketType.SYNC_DONE:
        if (body.request_id === 0n) this.#inBacklog = false;
        if (body.inbox_seq > this.#cursor) this.#cursor = body.inbox_seq;
        this.#emit('sync', { requestId: body.request_id, inboxSeq: body.inbox_seq, conversations: body.conversations });
        for (const w of this.#syncWaiters.splice(0)) w.resolve();
        return false;
      case PacketType.RECEIPT:
        this.#emit('receipt', {
          conversationId: body.conversation_id, kind: body.kind, fromSeq: body.from_seq, upToSeq: body.up_to_seq,
          readerUserId: body.reader_user_id, timestampMs: body.timestamp_ms,
        });
        return false;
      case PacketType.PRESENCE:
        this.#emit('presence', presenceOf(body));
        return false;
      case PacketType.TYPING_NOTICE:
        this.#emit('typing', { conversationId: body.conversation_id, userId: body.user_id, stopped: body.stopped });
        return false;
      case PacketType.ERROR:
        this.#onError(body);
        return false;
      case PacketType.DISCONNECT:
        this.#onConnectionLost(new ChatError(body.reason, body.message, body.retry_after_ms), body.reason, body.retry_after_ms);
        return false;
      case PacketType.PONG:
        return false;
      case PacketType.CONNACK:
        this.#protocolFailure(new ProtocolError(ReasonCode.PROTOCOL_VIOLATION, 'second CONNACK'));
        return false;
      default: {
        const request = this.#pendingRequests.get(body.request_id);
        if (request !== undefined) {
          this.#pendingRequests.delete(body.request_id);
          request.resolve(body);
        }
        return false;
      }
    }
  }

  #onDeliver(d) {
    if (d.inbox_seq !== 0n && d.inbox_seq <= this.#cursor) return false;
    if (d.inbox_seq > this.#cursor) this.#cursor = d.inbox_seq;
    if (!this.#markSeen(d.conversation_id, d.seq)) return false;
    // This device's own pending SEND: resuming from inbox position 0, a device is given its own stored messages,
    // so a SEND stored just before the connection dropped (its SENT lost with it) comes back in the catch-up,
    // possibly before the SENT of its resent copy. It is durable: it settles the send like a SENT, and is not
    // surfaced as a message as well (the app has it already).
    const pending = d.client_msg_id !== 0n && d.sender_user_id === this.#options.userId && d.sender_device_id === this.#options.deviceId
      ? this.#pendingSends.get(d.client_msg_id) : undefined;
    if (pending !== undefined) {
      this.#pendingSends.delete(d.client_msg_id);
      pending.resolve({ clientMsgId: d.client_msg_id, conversationId: d.conversation_id, seq: d.seq, timestampMs: d.timestamp_ms });
      return true;
    }
    this.#emit('message', {
      conversationId: d.conversation_id,
      seq: d.seq,
      inboxSeq: d.inbox_seq,
      senderUserId: d.sender_user_id,
      senderDeviceId: d.sender_device_id,
      timestampMs: d.timestamp_ms,
      contentType: d.content_type,
      body: d.body,
      media: d.media ?? null,
      clientMsgId: d.client_msg_id,
      isBacklog: this.#inBacklog,
    });
    return true;
  }

  /** Records (conversation, seq); false when it was seen before. */
  #markSeen(conversationId, seq) {
    let entry = this.#dedupe.get(conversationId);
    if (entry === undefined) {
      if (this.#dedupe.size >= DEDUPE_CONVERSATIONS) this.#dedupe.delete(this.#dedupe.keys().next().value);
      entry = { floor: 0n, seen: new Set() };
      this.#dedupe.set(conversationId, entry);
    }
    if (seq <= entry.floor || entry.seen.has(seq)) return false;
    entry.seen.add(seq);
    while (entry.seen.has(entry.floor + 1n)) entry.seen.delete(++entry.floor);
    if (entry.seen.size > DEDUPE_WINDOW) {
      // Forget the oldest gap: raise the floor to the smallest seq held.
      let min = seq;
      for (const s of entry.seen) if (s < min) min = s;
      entry.seen.delete(min);
      entry.floor = min;
      while (entry.seen.has(entry.floor + 1n)) entry.seen.delete(++entry.floor);
    }
    return true;
  }

  #onError(body) {
    const error = new ChatError(body.reason, body.message, body.retry_after_ms);
    if (body.in_reply_to === PacketType.SEND) {
      const pending = this.#pendingSends.get(body.request_id);
      if (pending !== undefined) {
        if (retriableSendErrors.has(body.reason)) {
          setTimeout(() => {
            if (this.#state === 'connected' && this.#pendingSends.has(body.request_id)) this.#writeSend(body.request_id);
          }, body.retry_after_ms || backoffDelay(0, 0, this.#options.reconnect));
          return;
        }
        this.#pendingSends.delete(body.request_id);
        pending.reject(error);
        return;
      }
    }
    const request = this.#pendingRequests.get(body.request_id);
    if (request !== undefined && (body.in_reply_to === 0 || body.in_reply_to === request.type)) {
      this.#pendingRequests.delete(body.request_id);
      request.reject(error);
      return;
    }
    this.#emit('error', error);
  }

  // ---- requests ----

  /**
   * Sends a message; resolves on SENT with { clientMsgId, conversationId, seq, timestampMs }.
   * `to` is a conversation id (bigint) or a user id (string, first message of a direct chat).
   * `body` is a string (sent as UTF-8) or a Uint8Array. The SEND stays pending until SENT and is
   * resent with the same client_msg_id after every reconnect. Pass `clientMsgId` to resend a message
   * an earlier run of the app had pending (the broker answers a repeat with the original SENT).
   */
  send(to, body, { contentType = 0, clientMsgId, media } = {}) {
    if (this.#state === 'closed') return Promise.reject(new ChatError(this.#lastReason, 'client closed'));
    const id = clientMsgId === undefined ? this.#idBase + ++this.#nextLocalId : BigInt(clientMsgId);
    const send = {
      client_msg_id: id,
      content_type: contentType,
      body: typeof body === 'string' ? new TextEncoder().encode(body) : body,
      media,
    };
    if (typeof to === 'string') send.to_user_id = to;
    else send.conversation_id = BigInt(to);
    return new Promise((resolve, reject) => {
      this.#pendingSends.set(id, { send, resolve, reject, written: false });
      if (this.#state === 'connected') this.#writeSend(id);
    });
  }

  #writeSend(clientMsgId) {
    const pending = this.#pendingSends.get(clientMsgId);
    this.#write(encodeFrame(PacketType.SEND, pending.send, pending.written ? DUP : 0));
    pending.written = true;
  }

  /** Number of sends waiting for their SENT. */
  get pendingSends() { return this.#pendingSends.size; }

  /** ACK: the device has stored everything up to `inboxSeq` (default: the cursor). Sent now or on the next connection. */
  ack(inboxSeq = this.#cursor, conversations = []) {
    if (inboxSeq > this.#ackedCursor) this.#ackedCursor = inboxSeq;
    this.#writeOrQueue(encodeFrame(PacketType.ACK, {
      inbox_seq: inboxSeq,
      conversations: conversations.map((c) => ({ conversation_id: c.conversationId, seq: c.seq })),
    }));
  }

  /** READ: the user has seen `conversationId` up to `upToSeq`; the senders get READ receipts. */
  read(conversationId, upToSeq) {
    this.#writeOrQueue(encodeFrame(PacketType.READ, { conversation_id: BigInt(conversationId), up_to_seq: BigInt(upToSeq) }));
  }

  /** Typing indicator for a conversation (send at most one every 3 s while typing, then stopped = true). */
  typing(conversationId, stopped = false) {
    if (this.#state === 'connected') this.#write(encodeFrame(PacketType.TYPING, { conversation_id: BigInt(conversationId), stopped }));
  }

  /** Sets this device's status: PresenceStatus.ONLINE or AWAY. */
  setPresence(status) {
    this.#writeOrQueue(encodeFrame(PacketType.PRESENCE_SET, { status }));
  }

  /**
   * Subscribes to users' presence (renewed on every reconnect). Resolves with their current
   * [{ userId, status, lastSeenMs }]; changes arrive as 'presence' events.
   */
  async subscribePresence(userIds) {
    const answer = await this.#request(PacketType.PRESENCE_SUBSCRIBE, { user_ids: userIds });
    for (const u of userIds) this.#presenceSubscriptions.add(u);
    return answer.current.map(presenceOf);
  }

  async unsubscribePresence(userIds) {
    for (const u of userIds) this.#presenceSubscriptions.delete(u);
    await this.#request(PacketType.PRESENCE_SUBSCRIBE, { user_ids: userIds, unsubscribe: true });
  }

  /** A page of older messages: { messages, more }. */
  async history(conversationId, { beforeSeq = 0n, limit = 0 } = {}) {
    const page = await this.#request(PacketType.HISTORY, { conversation_id: BigInt(conversationId), before_seq: BigInt(beforeSeq), limit });
    return { conversationId: page.conversation_id, messages: page.messages, more: page.more };
  }

  /** A group operation ({ create: { title, member_user_ids } }, { list: {} }, ...): the GroupResult. */
  group(op) {
    return this.#request(PacketType.GROUP_REQUEST, op);
  }

  #request(type, body) {
    if (this.#state !== 'connected') return Promise.reject(new ChatError(ReasonCode.SERVER_UNAVAILABLE, 'not connected'));
    const requestId = this.#nextRequestId++;
    return new Promise((resolve, reject) => {
      this.#pendingRequests.set(requestId, { type, resolve, reject });
      this.#write(encodeFrame(type, { ...body, request_id: requestId }));
    });
  }

  /** Resolves at the SYNC_DONE of the current (or next) connection: the backlog has been surfaced. */
  waitForSync() {
    if (this.#state === 'connected' && !this.#inBacklog) return Promise.resolve();
    return new Promise((resolve, reject) => this.#syncWaiters.push({ resolve, reject }));
  }
}

function presenceOf(p) {
  return { userId: p.user_id, status: p.status, lastSeenMs: p.last_seen_ms };
}

export { PresenceStatus };
