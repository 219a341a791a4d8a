// The ChatBroker web chat: one page, no framework, no build step. It speaks the native protocol through the
// JavaScript client (clients/js, served under js/) over a WebSocket to /chat on the origin that served it.
//
// What it keeps: nothing on disk but the token (sessionStorage, for this tab). On every page load the client
// resumes from inbox position 0, so the broker replays the retained inbox and the conversations rebuild from
// it; while the page lives, ChatClient reconnects by itself and resumes from its cursor (no gap, no duplicate).
import { ChatClient, ChatError, ContentType, PresenceStatus, ReceiptKind, decodeSystemEvent, reasonName } from './js/index.js';
import { webSocketTransport } from './js/ws-transport.js';

const $ = (id) => document.getElementById(id);
const TYPING_EVERY_MS = 3000;      // the broker rate-limits TYPING; one per 3 s while typing (clients/js README)
const TYPING_IDLE_MS = 4000;       // no key for this long: say "stopped"
const TYPING_SHOWN_MS = 6000;      // a notice not renewed within this is dropped

const state = {
  client: null,
  me: '',
  device: '',
  conversations: new Map(),        // key (conversation id as a string, or 'user:<peer>' before the first SENT) -> conversation
  openKey: null,
  presence: new Map(),             // user id -> { status, lastSeenMs }
  subscribed: new Set(),           // users whose presence is wanted
  asking: new Set(),               // of those, the ones with a PRESENCE_SUBSCRIBE in flight
  connections: 0,
  typingSentAt: 0,
  typingIdleTimer: null,
};

// ---- sign in / out ----

function claimsOf(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload + '='.repeat((4 - (payload.length % 4)) % 4)));
  } catch {
    return null;
  }
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = $('token').value.trim();
  const claims = claimsOf(token);
  if (typeof claims?.sub !== 'string') {
    $('login-error').textContent = 'This is not a ChatBroker device token.';
    return;
  }
  await signIn(token, claims.sub, claims.dev || $('device').value.trim() || 'web');
});

$('sign-out').addEventListener('click', async () => {
  sessionStorage.removeItem('chatbroker.token');
  sessionStorage.removeItem('chatbroker.device');
  const client = state.client;
  state.client = null;
  await client?.disconnect();
  location.reload();
});

async function signIn(token, user, device) {
  $('login-error').textContent = '';
  const url = new URL('chat', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const client = new ChatClient({
    transport: webSocketTransport(url.href),
    userId: user,
    deviceId: device,
    token,
    // A person watching a tab waits less than a phone in a pocket: retry sooner than the 30 s default ceiling.
    reconnect: { initialDelayMs: 250, maxDelayMs: 5000 },
  });
  wire(client);
  setConnection('connecting', 'Connecting…');
  // Who "me" is must be known before the first DELIVER: the inbox replay can arrive in the same read as the CONNACK,
  // and its messages are handled before connect() returns here. A direct chat first seen through one's own message
  // then took the sender (oneself) for its peer, and the chat with bob was listed as "alice".
  state.me = user;
  state.device = device;
  try {
    await client.connect();
  } catch (error) {
    state.me = '';
    state.device = '';
    setConnection('idle', 'Signed out');
    $('login-error').textContent = `Sign-in failed: ${error instanceof ChatError ? reasonName(error.reason) : error.message}`;
    return;
  }
  state.client = client;
  sessionStorage.setItem('chatbroker.token', token);
  sessionStorage.setItem('chatbroker.device', device);
  $('login').hidden = true;
  $('chat').hidden = false;
  $('me').hidden = false;
  $('me').textContent = `${user} (${device})`;
  $('sign-out').hidden = false;
  onConnected();
}

function wire(client) {
  client.on('connected', () => {
    if (state.client !== null) onConnected();
  });
  client.on('disconnected', () => setConnection('reconnecting', 'Connection lost'));
  client.on('reconnecting', ({ delayMs }) => setConnection('reconnecting', `Offline: reconnecting in ${Math.max(1, Math.ceil(delayMs / 1000))} s…`));
  client.on('closed', ({ reason }) => {
    setConnection('closed', `Signed out by the server: ${reasonName(reason)}`);
    sessionStorage.removeItem('chatbroker.token');
  });
  client.on('message', onMessage);
  client.on('receipt', onReceipt);
  client.on('typing', onTyping);
  client.on('presence', onPresence);
  client.on('error', (error) => showError(error.message));
}

function onConnected() {
  state.connections++;
  document.body.dataset.connections = String(state.connections);
  setConnection('connected', `Connected as ${state.me}`);
  loadGroups();
  subscribe([]);
  state.client.waitForSync().then(markOpenRead, () => {});
}

function setConnection(name, text) {
  document.body.dataset.connection = name;
  $('connection').textContent = text;
}

function showError(text) {
  $('chat-error').textContent = text;
}

// ---- conversations ----

function conversation(key, init) {
  let c = state.conversations.get(key);
  if (c === undefined) {
    c = {
      key, id: null, kind: 'direct', peer: '', title: '', members: [],
      messages: [], unread: 0, readSentUpTo: 0n, deliveredUpTo: 0n, readUpTo: 0n,
      typing: new Map(), lastActivity: 0, ...init,
    };
    state.conversations.set(key, c);
  }
  return c;
}

function byId(id) {
  return state.conversations.get(String(id));
}

/** The conversation a DELIVER belongs to; a new one is a direct chat with its sender until it turns out a group. */
function conversationOf(m, system) {
  const existing = byId(m.conversationId);
  if (existing !== undefined) {
    // A direct chat first seen through this user's own message (an inbox replay) learns its peer from the peer's.
    if (existing.kind === 'direct' && !existing.peer && !system && m.senderUserId !== state.me) {
      existing.peer = m.senderUserId;
      subscribe([existing.peer]);
    }
    return existing;
  }
  if (!system && m.senderUserId !== state.me) {
    const pending = state.conversations.get('user:' + m.senderUserId);
    if (pending !== undefined && pending.id === null) return adopt(pending, m.conversationId);
  }
  const c = conversation(String(m.conversationId), {
    id: m.conversationId,
    kind: system ? 'group' : 'direct',
    peer: system || m.senderUserId === state.me ? '' : m.senderUserId,
  });
  if (c.kind === 'group') loadGroup(c);
  else if (c.peer) subscribe([c.peer]);
  return c;
}

/** A chat opened by user id learns its conversation id (its first SENT, or the peer's first message). */
function adopt(pending, id) {
  const key = String(id);
  const wasOpen = state.openKey === pending.key;
  state.conversations.delete(pending.key);
  const existing = state.conversations.get(key);
  let c = pending;
  if (existing !== undefined) {
    existing.messages.push(...pending.messages);
    existing.peer ||= pending.peer;
    pending.mergedInto = existing;   // a send still waiting on the pending chat finds its messages here
    c = existing;
  } else {
    pending.key = key;
    pending.id = id;
    state.conversations.set(key, pending);
  }
  if (wasOpen) state.openKey = key;
  if (c.peer) subscribe([c.peer]);
  return c;
}

function titleOf(c) {
  if (c.kind === 'group') return c.title || `Group ${c.id}`;
  return c.peer || `Direct chat ${c.id}`;
}

async function loadGroups() {
  try {
    const result = await state.client.group({ list: {} });
    for (const g of result.groups) applyGroup(g);
    render();
  } catch (error) {
    if (state.client?.state === 'connected') showError(`Could not list groups: ${error.message}`);
  }
}

async function loadGroup(c) {
  try {
    const result = await state.client.group({ get: { conversation_id: c.id } });
    for (const g of result.groups) applyGroup(g);
    render();
  } catch {
    // Not connected: the list at the next connection brings it.
  }
}

function applyGroup(g) {
  const c = conversation(String(g.conversation_id), { id: g.conversation_id });
  c.kind = 'group';
  c.peer = '';
  c.title = g.title;
  c.members = g.members.map((m) => m.user_id);
  c.lastActivity ||= Number(g.created_ms);
  subscribe(c.members.filter((u) => u !== state.me));
}

$('new-direct').addEventListener('submit', (event) => {
  event.preventDefault();
  const peer = $('direct-user').value.trim();
  if (!peer) return;
  $('direct-user').value = '';
  let c = [...state.conversations.values()].find((x) => x.kind === 'direct' && x.peer === peer);
  if (c === undefined) c = conversation('user:' + peer, { peer, lastActivity: Date.now() });
  subscribe([peer]);
  open(c.key);
});

$('new-group').addEventListener('submit', async (event) => {
  event.preventDefault();
  const title = $('group-title').value.trim();
  const members = $('group-members').value.split(',').map((s) => s.trim()).filter((s) => s && s !== state.me);
  try {
    const result = await state.client.group({ create: { title, member_user_ids: members } });
    const c = conversation(String(result.conversation_id), { id: result.conversation_id, kind: 'group', title, lastActivity: Date.now() });
    c.kind = 'group';
    c.title = title;
    c.members = [state.me, ...members];
    subscribe(members);
    $('group-title').value = '';
    $('group-members').value = '';
    $('new-group-panel').open = false;
    open(c.key);
  } catch (error) {
    showError(`Could not create the group: ${error instanceof ChatError ? reasonName(error.reason) : error.message}`);
  }
});

function open(key) {
  state.openKey = key;
  $('messages').replaceChildren();
  $('composer').hidden = false;
  render();
  markOpenRead();
  $('composer-input').focus();
}

// ---- messages, receipts ----

function onMessage(m) {
  const system = m.contentType === ContentType.SYSTEM;
  const c = conversationOf(m, system);
  if (c.messages.some((x) => x.seq === m.seq)) return;
  const mine = m.senderUserId === state.me;
  let text;
  if (system) {
    text = systemText(decodeSystemEvent(m.body));
    loadGroup(c);
  } else {
    text = new TextDecoder().decode(m.body);
  }
  insert(c, { seq: m.seq, sender: m.senderUserId, text, mine, system, timestampMs: Number(m.timestampMs), status: 'sent' });
  c.typing.delete(m.senderUserId);
  c.lastActivity = Math.max(c.lastActivity, Number(m.timestampMs));
  if (!mine && !system) {
    if (isVisible(c)) sendRead(c);
    else c.unread++;
  }
  render();
}

/** A membership change (a SystemEvent, docs/protocol.md GROUP_REQUEST) as a sentence. */
function systemText(e) {
  const who = e.actor_user_id === state.me ? 'You' : e.actor_user_id;
  const users = e.user_ids.filter((u) => u !== e.actor_user_id).map((u) => (u === state.me ? 'you' : u)).join(', ');
  switch (e.kind) {
    case 1: return `${who} created “${e.title}”${users ? ` with ${users}` : ''}`;
    case 2: return `${who} added ${users}`;
    case 3: return `${who} removed ${users}`;
    case 4: return `${who} left`;
    case 5: return `${who} ${e.admin ? 'made' : 'removed'} ${users} ${e.admin ? 'an admin' : 'as admin'}`;
    case 6: return `${who} renamed the group “${e.title}”`;
    default: return `${who} changed the group`;
  }
}

function insert(c, message) {
  // Sent messages in seq order; the ones still waiting for their SENT stay at the end.
  let i = c.messages.length;
  while (i > 0 && (c.messages[i - 1].seq === null || c.messages[i - 1].seq > message.seq)) i--;
  c.messages.splice(i, 0, message);
}

function onReceipt(r) {
  const c = byId(r.conversationId);
  if (c === undefined || r.readerUserId === state.me) return;
  if (r.upToSeq > c.deliveredUpTo) c.deliveredUpTo = r.upToSeq;
  if (r.kind === ReceiptKind.READ && r.upToSeq > c.readUpTo) c.readUpTo = r.upToSeq;
  render();
}

function statusOf(c, message) {
  if (message.seq === null) return message.status;          // pending or failed
  if (message.seq <= c.readUpTo) return 'read';
  if (message.seq <= c.deliveredUpTo) return 'delivered';
  return 'sent';
}

function isVisible(c) {
  return state.openKey === c.key && document.visibilityState === 'visible';
}

function sendRead(c) {
  let last = 0n;
  for (const m of c.messages) if (!m.mine && !m.system && m.seq !== null && m.seq > last) last = m.seq;
  if (c.id !== null && last > c.readSentUpTo) {
    c.readSentUpTo = last;
    state.client.read(c.id, last);
  }
  c.unread = 0;
}

function markOpenRead() {
  const c = state.conversations.get(state.openKey);
  if (c !== undefined && isVisible(c)) {
    sendRead(c);
    render();
  }
}

document.addEventListener('visibilitychange', () => {
  if (state.client === null) return;
  state.client.setPresence(document.visibilityState === 'visible' ? PresenceStatus.ONLINE : PresenceStatus.AWAY);
  markOpenRead();
});

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const c = state.conversations.get(state.openKey);
  const input = $('composer-input');
  const text = input.value;
  if (c === undefined || text.trim() === '') return;
  input.value = '';
  stopTyping(c);
  const message = { seq: null, sender: state.me, text, mine: true, system: false, timestampMs: Date.now(), status: 'pending' };
  c.messages.push(message);
  c.lastActivity = Date.now();
  render();
  // Pending sends survive a dropped connection: ChatClient re-sends them (same client_msg_id) when it is back.
  state.client.send(c.id ?? c.peer, text).then((sent) => {
    let target = c;
    while (target.mergedInto !== undefined) target = target.mergedInto;
    if (target.id === null) target = adopt(target, sent.conversationId);
    const list = target.messages;
    list.splice(list.indexOf(message), 1);
    message.seq = sent.seq;
    message.timestampMs = Number(sent.timestampMs);
    message.status = 'sent';
    insert(target, message);
    render();
  }, (error) => {
    message.status = 'failed';
    showError(`Not sent: ${error instanceof ChatError ? reasonName(error.reason) : error.message}`);
    render();
  });
});

// ---- typing, presence ----

$('composer-input').addEventListener('input', () => {
  const c = state.conversations.get(state.openKey);
  if (c === undefined || c.id === null || state.client?.state !== 'connected') return;
  const now = Date.now();
  if (now - state.typingSentAt >= TYPING_EVERY_MS) {
    state.typingSentAt = now;
    state.client.typing(c.id);
  }
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = setTimeout(() => stopTyping(c), TYPING_IDLE_MS);
});

function stopTyping(c) {
  clearTimeout(state.typingIdleTimer);
  if (state.typingSentAt !== 0 && c.id !== null) state.client.typing(c.id, true);
  state.typingSentAt = 0;
}

function onTyping(t) {
  const c = byId(t.conversationId);
  if (c === undefined || t.userId === state.me) return;
  clearTimeout(c.typing.get(t.userId));
  if (t.stopped) c.typing.delete(t.userId);
  else c.typing.set(t.userId, setTimeout(() => { c.typing.delete(t.userId); render(); }, TYPING_SHOWN_MS));
  render();
}

/**
 * Subscribes to users' presence, one request per user: the broker answers a request all or nothing, and allows only
 * users this one shares a conversation with, so a chat opened by user id is subscribed once its first message
 * made the conversation (adopt). Called again on every connection for the ones not answered yet; ChatClient
 * renews the answered ones by itself.
 */
function subscribe(users) {
  for (const u of users) if (u && u !== state.me) state.subscribed.add(u);
  const client = state.client;
  if (client === null || client.state !== 'connected') return;
  for (const u of state.subscribed) {
    if (state.presence.has(u) || state.asking.has(u)) continue;
    state.asking.add(u);
    client.subscribePresence([u]).then((current) => {
      for (const p of current) onPresence(p);
    }, () => {}).finally(() => state.asking.delete(u));
  }
}

function onPresence(p) {
  state.presence.set(p.userId, { status: p.status, lastSeenMs: Number(p.lastSeenMs) });
  render();
}

function presenceText(user) {
  const p = state.presence.get(user);
  if (p === undefined) return '';
  if (p.status === PresenceStatus.ONLINE) return 'online';
  if (p.status === PresenceStatus.AWAY) return 'away';
  return p.lastSeenMs > 0 ? `last seen ${timeText(p.lastSeenMs)}` : 'offline';
}

// ---- rendering ----

function timeText(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const TICKS = {
  pending: ['…', 'sending'],
  failed: ['!', 'not sent'],
  sent: ['✓', 'sent'],
  delivered: ['✓✓', 'delivered'],
  read: ['✓✓', 'read'],
};

function render() {
  renderList();
  renderOpen();
}

function renderList() {
  const list = $('conversations');
  const items = [...state.conversations.values()].sort((a, b) => b.lastActivity - a.lastActivity);
  list.replaceChildren(...items.map((c) => {
    const li = document.createElement('li');
    li.dataset.conversation = titleOf(c);
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'link';
    button.setAttribute('aria-current', String(c.key === state.openKey));
    button.append(titleOf(c));
    if (c.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = String(c.unread);
      badge.setAttribute('aria-label', `${c.unread} unread`);
      button.append(badge);
    }
    const sub = document.createElement('span');
    sub.className = 'conv-sub';
    sub.textContent = c.kind === 'group' ? `group · ${c.members.length} members` : presenceText(c.peer);
    button.append(sub);
    button.addEventListener('click', () => open(c.key));
    li.append(button);
    return li;
  }));
}

const rendered = new WeakMap(); // message -> its <li>

function renderOpen() {
  const c = state.conversations.get(state.openKey);
  if (c === undefined) return;
  $('conversation-title').textContent = titleOf(c);
  $('conversation-info').textContent = c.kind === 'group'
    ? c.members.map((u) => (u === state.me ? 'you' : `${u}${presenceText(u) ? ` (${presenceText(u)})` : ''}`)).join(', ')
    : presenceText(c.peer);
  const ol = $('messages');
  c.messages.forEach((message, i) => {
    let li = rendered.get(message);
    if (li === undefined) {
      li = messageItem(c, message);
      rendered.set(message, li);
    }
    if (ol.children[i] !== li) ol.insertBefore(li, ol.children[i] ?? null);
    if (message.seq !== null) li.dataset.seq = String(message.seq);
    const ticks = li.querySelector('.ticks');
    if (ticks !== null) {
      const status = statusOf(c, message);
      if (ticks.dataset.status !== status) {
        ticks.dataset.status = status;
        ticks.textContent = TICKS[status][0];
        ticks.setAttribute('aria-label', TICKS[status][1]);
        ticks.title = TICKS[status][1];
      }
    }
  });
  while (ol.children.length > c.messages.length) ol.lastElementChild.remove();
  const typing = [...c.typing.keys()];
  $('typing').textContent = typing.length === 0 ? ''
    : `${typing.join(' and ')} ${typing.length === 1 ? 'is' : 'are'} typing…`;
}

function messageItem(c, message) {
  const li = document.createElement('li');
  li.className = 'message' + (message.mine ? ' mine' : '') + (message.system ? ' system' : '');
  if (!message.mine && !message.system && c.kind === 'group') {
    const sender = document.createElement('span');
    sender.className = 'sender';
    sender.textContent = message.sender;
    li.append(sender);
  }
  const text = document.createElement('p');
  text.className = 'text';
  text.textContent = message.text;
  li.append(text);
  if (!message.system) {
    const meta = document.createElement('span');
    meta.className = 'meta';
    const time = document.createElement('time');
    time.dateTime = new Date(message.timestampMs).toISOString();
    time.textContent = timeText(message.timestampMs);
    meta.append(time);
    if (message.mine) {
      const ticks = document.createElement('span');
      ticks.className = 'ticks';
      ticks.setAttribute('role', 'img');
      meta.append(ticks);
    }
    li.append(meta);
  }
  return li;
}

// ---- start ----

const saved = sessionStorage.getItem('chatbroker.token');
if (saved !== null) {
  const claims = claimsOf(saved);
  if (claims?.sub) signIn(saved, claims.sub, claims.dev || sessionStorage.getItem('chatbroker.device') || 'web');
}
