// The relay's browser client: a dependency-free ES module, served by the relay
// at /client.js. It joins a session with the code the Mac shows, keeps it up
// across dropped connections and relay restarts (reconnect with backoff,
// resume, re-send what the relay did not get, queue while away) and hands the
// page every data frame from the Mac exactly once, in order.
//
//   import { RelayClient } from '/client.js';
//   const client = new RelayClient();            // ws(s)://<this host>/browser
//   client.on('state', (s) => console.log(s.state));
//   client.on('data', (d) => console.log(d.text ?? d.bytes));
//   client.join('h4f-7kn');
//   client.send('hello mac');                    // a {"type":"data"} text frame
//
// Options are DEFAULTS below plus the transports' (transport.js,
// TRANSPORT_DEFAULTS): `transport` ('auto', 'websocket', 'http'),
// `fallbackAfter` and `websocketRetry` (ms; on the HTTP fallback, how often
// to try the WebSocket again, 0 = never), e.g.
// `new RelayClient({ websocketRetry: 15_000 })`; `parseInterval('30s')`
// reads one written as a person does (a page's query string).
//
// As a guest of a room (a host that shares its session with several people,
// PROTOCOL.md "Rooms"), `join(code, { name })` gives the host a name to show;
// the client may then be `waiting` until the host lets it in, and ends with
// DENIED, REMOVED or ROOM_FULL, which it never retries by itself.
//
// The same semantics as the Rust client (relay_protocol::client). Wire
// contract: shared/PROTOCOL.md. Everything that needs a clock, randomness, a
// socket or storage can be injected, so the state machine runs in Node too.

import { SecureLink, parseFullCode } from './e2e.js';
import { Transports } from './transport.js';

export { TRANSPORT_DEFAULTS, parseInterval } from './transport.js';

/** Connection states, as the `state` event and `client.state` report them. */
export const State = Object.freeze({
  /** Not connected and not trying: before `join`, after the session ended, or after giving up. */
  DISCONNECTED: 'disconnected',
  /** The first connection of a session is being made (join, or resume after a page reload). */
  CONNECTING: 'connecting',
  /** Rooms: connected, but the host has not let this guest in yet (`waiting` from the relay). */
  WAITING: 'waiting',
  /** Connected, and the session joined or taken back. */
  CONNECTED: 'connected',
  /** The connection dropped; waiting for (or making) the next attempt. */
  RECONNECTING: 'reconnecting',
});

/** Defaults, the same as the Rust client's. */
export const DEFAULTS = Object.freeze({
  /** Longest one attempt may take: socket open plus the relay's answer to join/resume (ms). */
  connectTimeout: 10_000,
  /** Delay before the first retry (ms). */
  firstDelay: 1_000,
  /** Growth factor between retries. */
  factor: 2,
  /** Longest delay before jitter (ms). */
  maxDelay: 30_000,
  /** Relative spread of each delay: 0.25 = 75-125 %. */
  jitter: 0.25,
  /** Longest extra wait before reconnecting after a drain (close 1012), ms. */
  drainJitter: 500,
  /** Reconnect attempts in a row before giving up; Infinity = never give up. */
  maxRetries: Infinity,
  /** Interval of app-level pings (latency and liveness), ms. */
  pingInterval: 5_000,
  /** A ping unanswered this long means the connection is dead (ms). */
  pongTimeout: 15_000,
  /** A ping unanswered this long makes the last latency stale (the `stale` event), ms. */
  pongLate: 2_000,
  /** Frames that may wait to be sent while not connected. */
  queueFrames: 1000,
  /** Bytes that may wait to be sent while not connected. */
  queueBytes: 8 << 20,
  /** Bytes of sent frames kept to re-send after a resume (oldest dropped first). */
  keepBytes: 8 << 20,
  /** Largest frame accepted by send() (the relay's default RELAY_MAX_FRAME); 0 = no check. */
  maxFrame: 1 << 20,
  /** sessionStorage key for the session (so a reload resumes); '' = do not store. */
  storageKey: 'relay.session',
});

/** Bookkeeping bytes counted per frame on top of its payload (as the relay does). */
const FRAME_OVERHEAD = 64;

/**
 * The delay before retry number `attempt` (1-based): `firstDelay`, multiplied
 * by `factor` each time up to `maxDelay`, then scaled by a factor in
 * `1 ± jitter` picked from `random` (a number in [0, 1)).
 */
export function backoffDelay(attempt, options = DEFAULTS, random = Math.random) {
  const o = { ...DEFAULTS, ...options };
  const n = Math.max(1, Math.floor(attempt));
  const base = Math.min(o.maxDelay, o.firstDelay * o.factor ** Math.min(n - 1, 64));
  const r = Math.min(1, Math.max(0, random()));
  return base * (1 - o.jitter + 2 * o.jitter * r);
}

/**
 * What a close code means for the client (PROTOCOL.md, "Close codes"):
 * 'reconnect' (with backoff, then resume), 'now' (the node drains: reconnect
 * at once with a little jitter) or 'stop'. 1006 is what a browser reports for
 * a connection that dropped without a close frame, 1005 for a close frame
 * without a code. Codes the table does not list (1002, 1003, 1007, 1015,
 * 4xxx, ...) stop: reconnecting cannot fix them.
 */
export function closeAction(code) {
  switch (code) {
    case 1012:
      return 'now';
    case 1001:
    case 1005:
    case 1006:
    case 1011:
    case 1013:
    case undefined:
    case null:
      return 'reconnect';
    default:
      return 'stop';
  }
}

/** Errors that answer a `resume` and end the session for good. */
const RESUME_FATAL = new Set(['RESUME_EXPIRED', 'INVALID_RESUME', 'MAC_DISCONNECTED', 'REMOVED']);
/**
 * Errors that end the session whenever they come once the relay has taken
 * the join (waiting or in): the host left, said no, or took the guest out.
 * Retrying could only be refused again, or worse, ask the host twice.
 */
const SESSION_ENDS = new Set(['MAC_DISCONNECTED', 'DENIED', 'REMOVED']);
/** What the end means when the relay gives no sentence. */
const ENDED_BY = {
  MAC_DISCONNECTED: 'The Mac ended the session.',
  DENIED: 'The host did not let you in.',
  REMOVED: 'The host removed you from this session.',
};
/** Rooms: the longest `name` the relay takes, in characters. */
export const NAME_MAX = 64;
/** Errors after which the client keeps reconnecting. */
const RETRYABLE = new Set(['UNAVAILABLE', 'SHUTTING_DOWN']);

/** What a stopping close code means for a person. */
const CLOSE_REASONS = {
  1000: 'The relay ended the session.',
  1002: 'The relay could not read what this page sent (WebSocket protocol error).',
  1008: 'The relay closed the connection: it broke the relay\'s rules (too many malformed messages, or too slow a start).',
  1009: 'A message was larger than the relay accepts.',
  4000: 'The relay does not serve this address.',
  4001: 'This session was taken over by another tab or window.',
};

/** The session code as the relay matches it: no spaces or '-', upper case. */
export function normalizeCode(typed) {
  return String(typed).replace(/[\s-]+/g, '').toUpperCase();
}

/** The relay's code alphabet (no look-alikes). */
export const CODE_ALPHABET = '346789ABCDEFGHJKLMNPQRTUVWXY';

/**
 * Why a typed code cannot be a code, or '' when it may be one (the relay
 * decides). 11 or 13 characters are a code with its secret part (end-to-end
 * encrypted); a link with the code after '#' is read as its code.
 */
export function codeProblem(typed) {
  const hash = String(typed).lastIndexOf('#');
  const code = normalizeCode(hash >= 0 ? String(typed).slice(hash + 1) : typed);
  if (code.length === 0) return 'Type the code shown on the Mac.';
  // 6, or 8 while the relay is under a guessing attack (PROTOCOL.md,
  // "Session codes"); either followed by the 5-character secret part.
  if (![6, 8, 11, 13].includes(code.length)) {
    return `A code has 6 characters (8 while the relay is under attack), or 5 more after the dash; this one has ${code.length}.`;
  }
  const bad = [...code].filter((c) => !CODE_ALPHABET.includes(c));
  if (bad.length > 0) {
    return `A code never contains ${[...new Set(bad)].join(', ')}. Check the code shown on the Mac.`;
  }
  return '';
}

/** The WebSocket URL of the browser endpoint for a page at `location`. */
export function browserUrl(location = globalThis.location) {
  const url = new URL('browser', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.hash = '';
  url.search = '';
  return url.href;
}

/** An error of the client itself (not of the relay), with a `code`. */
export class ClientError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ClientError';
    this.code = code;
  }
}

const utf8 = new TextEncoder();

function frameSize(frame) {
  return FRAME_OVERHEAD + (typeof frame === 'string' ? utf8.encode(frame).length : frame.byteLength);
}

function toBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  }
  throw new TypeError('send() takes a string, an ArrayBuffer or a typed array');
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    // Storage can be blocked (privacy settings); the client works without it.
    return null;
  }
}

/**
 * A browser-side client of the relay.
 *
 * Events (`client.on(name, fn)`, which returns a function that unsubscribes):
 * - `state`   {state, attempt, delay, code, reason}: the connection state changed
 *             (`attempt` and `delay` while reconnecting; `code`/`reason` say why).
 * - `attempt` {attempt, manual}: a retry starts now (after its delay, or `reconnect()`).
 * - `waiting` {guestId}: rooms: the relay took the join and the host decides whether
 *             to let this guest in (state `waiting`; no connect timeout meanwhile).
 * - `joined`  {sessionId, guestId}: the code was accepted (`guestId`: in a room only, else null).
 * - `resumed` {lastSeq, resent, lost}: the session was taken back on a new connection.
 * - `data`    {text} for a `data` text frame (its payload) or {bytes} (Uint8Array) for a binary frame.
 * - `peer`    {present}: the Mac dropped (false, `peer_disconnected`) or came back (true).
 * - `latency` ms: round trip of the last app-level ping.
 * - `stale`   {since}: a ping has gone unanswered for `pongLate` ms (since: when it
 *             was sent); the last latency no longer says anything. The next
 *             `latency` event ends it.
 * - `error`   {code, message, fatal}: a refusal or an error the session survives.
 * - `lost`    n: frames the relay never got that were no longer kept to re-send.
 * - `ended`   {code, message, closeCode, peerAway, unsent, join, name}: the session is over
 *             for this client (read-only from now on). `peerAway`: the Mac had dropped
 *             and not come back (so MAC_DISCONNECTED means it stopped answering, not
 *             that it left); `unsent`: queued frames that were never sent. Rooms:
 *             `code` DENIED (the host said no, or did not answer in time), REMOVED
 *             (the host took this guest out) or ROOM_FULL (no room now); before the
 *             guest was let in, `join` and `name` are what it joined with, so a
 *             person can try again with `join(join, {name})`.
 * - `gaveup`  {attempts}: reconnecting stopped at `maxRetries`; `reconnect()` starts again.
 * - `transport` {transport, reason}: the connection moved to 'http' (the fallback) or
 *             back to 'websocket' (never sent while on WebSocket all along).
 * - `event`   msg: any other control message (for the curious).
 */
export class RelayClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    const o = this.options;
    this.url = o.url ?? browserUrl();
    // A WebSocket, or the HTTP fallback behind the same interface (transport.js;
    // `transport`: 'auto', 'websocket' or 'http'). An injected WebSocket is used as it is.
    this.transports = new Transports({ ...o, url: this.url }, (t) => this.emit('transport', t), () => this.upgrade());
    this.WebSocket = o.WebSocket ?? this.transports.Socket;
    this.random = o.random ?? Math.random;
    this.now = o.now ?? (() => Date.now());
    this.setTimeout = o.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.clearTimeout = o.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this.storage = o.storage === undefined ? defaultStorage() : o.storage;

    this.listeners = new Map();
    /** One of State's values. */
    this.state = State.DISCONNECTED;
    this.resetSession();

    this.ws = null;
    this.phase = null; // 'join' | 'waiting' | 'resume' | 'open' for the current socket
    this.pendingError = null; // the last error of the current socket
    this.connectTimer = null;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pingSentAt = null; // ts of the unanswered ping, if any
    this.lateTimer = null;
    /** Whether the unanswered ping is overdue (the last latency is stale). */
    this.latencyStale = false;
  }

  // ---- events ----------------------------------------------------------

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name)?.delete(fn);
  }

  emit(name, value) {
    for (const fn of [...(this.listeners.get(name) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        // A broken listener must not break the connection.
        globalThis.console?.error?.(e);
      }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit('state', { state, attempt: this.attempt, ...detail });
  }

  // ---- what the application calls --------------------------------------

  /**
   * Joins the session with `code` (as typed; the relay ignores case, spaces
   * and '-'). `name` (optional, at most NAME_MAX characters) is shown to the
   * host of a room; a pairing ignores it. Throws a ClientError NAME_TOO_LONG.
   */
  join(code, options = {}) {
    const given = String(options?.name ?? '').trim();
    const length = [...given].length;
    if (length > NAME_MAX) {
      throw new ClientError('NAME_TOO_LONG', `A name has at most ${NAME_MAX} characters; this one has ${length}.`);
    }
    if (this.ws || this.retryTimer !== null) this.abandon();
    this.resetSession();
    // A code with its secret part: the relay gets the first six characters only.
    const full = parseFullCode(code);
    this.secure = full?.secret ? new SecureLink(this, full) : null;
    this.code = full ? full.relay : normalizeCode(code);
    this.name = given || null;
    this.setState(State.CONNECTING);
    this.open();
  }

  /**
   * Takes back the session kept in sessionStorage (after a page reload).
   * Returns whether there was one to take back.
   */
  resume() {
    const saved = this.load();
    if (!saved) return false;
    if (this.ws || this.retryTimer !== null) this.abandon();
    this.resetSession();
    this.session = { sessionId: saved.sessionId, resumeToken: saved.resumeToken };
    this.guestId = saved.guestId;
    this.received = saved.received;
    this.sent = saved.sent;
    this.everConnected = true;
    this.setState(State.CONNECTING);
    this.open();
    return true;
  }

  /**
   * Sends `data`: a string as a `{"type":"data","payload":...}` text frame,
   * bytes (ArrayBuffer or typed array) as a binary frame. While not connected
   * the frame is queued; it reaches the Mac exactly once, in order.
   * Throws a ClientError: QUEUE_FULL (wait for the connection),
   * MESSAGE_TOO_LARGE, SESSION_OVER, NOT_JOINED.
   */
  send(data) {
    if (this.ended) throw new ClientError('SESSION_OVER', 'The session is over; nothing can be sent.');
    if (!this.session && this.code === null) {
      throw new ClientError('NOT_JOINED', 'Join a session with a code before sending.');
    }
    if (this.secure) {
      try {
        this.secure.send(data);
      } catch {
        throw new ClientError('QUEUE_FULL', 'Too many messages wait for the end-to-end encryption; wait a moment.');
      }
      return;
    }
    this.sendPlain(data);
  }

  /** Sends `data` as it is (the encrypted link sends its sealed frames through this). */
  sendPlain(data) {
    if (this.ended) throw new ClientError('SESSION_OVER', 'The session is over; nothing can be sent.');
    const frame = typeof data === 'string' ? JSON.stringify({ type: 'data', payload: data }) : toBytes(data);
    const size = frameSize(frame);
    if (this.options.maxFrame && size - FRAME_OVERHEAD > this.options.maxFrame) {
      throw new ClientError(
        'MESSAGE_TOO_LARGE',
        `This message is ${size - FRAME_OVERHEAD} bytes; the relay takes at most ${this.options.maxFrame}. Split it.`,
      );
    }
    if (this.state === State.CONNECTED && this.phase === 'open' && this.queue.length === 0) {
      this.write(frame, size);
      return;
    }
    const o = this.options;
    if (this.queue.length >= o.queueFrames || this.queueBytes + size > o.queueBytes) {
      throw new ClientError(
        'QUEUE_FULL',
        `The outbound queue is full (${this.queue.length} messages, ${this.queueBytes} bytes waiting); wait for the connection to come back.`,
      );
    }
    this.queue.push({ frame, size });
    this.queueBytes += size;
  }

  /**
   * Drops the connection (if any) and reconnects at once, resuming the session.
   * While reconnecting this is one more attempt ("try now"): the attempt count
   * goes on, so the backoff after a failure is not reset by impatience. After
   * giving up it starts counting again.
   */
  reconnect() {
    if (this.ended) return false;
    if (!this.session && this.code === null) return false;
    this.abandon();
    if (this.gaveUp || this.state === State.CONNECTED) this.attempt = 0;
    this.gaveUp = false;
    // A first join that is already retrying stays "reconnecting", as its retries are.
    const again = (this.session && this.everConnected) || this.attempt > 0;
    this.setState(again ? State.RECONNECTING : State.CONNECTING, {
      reason: 'manual',
    });
    this.emit('attempt', { attempt: this.attempt, manual: true });
    this.open();
    return true;
  }

  /** A WebSocket opened while on the HTTP fallback: resume on it (nothing is lost). */
  upgrade() {
    if (this.phase !== 'open' || !this.ws) return false;
    this.abandon();
    this.open();
    return true;
  }

  /** Ends this side of the session for good (the Mac is told). */
  leave() {
    if (this.ended) return;
    // Encrypted: the sealed end frame goes first, then this is called again.
    if (this.secure?.leaving()) return;
    // A waiting guest says so too: the host then reads "left", not "closed".
    if (this.ws && (this.phase === 'open' || this.phase === 'waiting') && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify({ type: 'leave' }));
    }
    this.end('LEFT', 'You left the session.');
  }

  /** Forgets the session (ended or not, without telling the relay) so `join` can start a new one. */
  reset() {
    this.abandon();
    this.clearStorage();
    this.resetSession();
    this.setState(State.DISCONNECTED);
  }

  /** A plain snapshot, for pages and tests. */
  snapshot() {
    return {
      state: this.state,
      attempt: this.attempt,
      sessionId: this.session?.sessionId ?? null,
      guestId: this.guestId,
      received: this.received,
      sent: this.sent,
      queued: this.queue.length,
      kept: this.unacked.length,
      latency: this.latency,
      peerPresent: this.peerPresent,
      ended: this.ended,
      gaveUp: this.gaveUp,
      transport: this.transports.current,
      ...(this.secure ? { encrypted: this.secure.open } : {}),
    };
  }

  // ---- connection ------------------------------------------------------

  /** Forgets the session: what a new client starts with. */
  resetSession() {
    /** The end-to-end encrypted link (SecureLink) when joined with a full code, else null. */
    this.secure?.stop();
    this.secure = null;
    /** {sessionId, resumeToken} once joined. */
    this.session = null;
    /** The code being joined (as typed), until joined. */
    this.code = null;
    /** Rooms: the name given to the host with the code, or null. */
    this.name = null;
    /** Rooms: this guest's id (from `waiting` or `joined`), or null (a pairing, or not joined). */
    this.guestId = null;
    /** Data frames received in the session (the `lastSeq` of a resume). */
    this.received = 0;
    /** Data frames written in the session, as the relay numbers them. */
    this.sent = 0;
    /** Written frames kept to re-send: [{seq, frame, size}], oldest first. */
    this.unacked = [];
    this.unackedBytes = 0;
    /** Frames waiting for a connection: [{frame, size}]. */
    this.queue = [];
    this.queueBytes = 0;
    /** Round trip of the last ping, ms, or null. */
    this.latency = null;
    /** Whether the Mac is connected (false after `peer_disconnected`). */
    this.peerPresent = true;
    /** {code, message} once the session is over. */
    this.ended = null;
    /** Whether reconnecting gave up (maxRetries reached). */
    this.gaveUp = false;
    /** Whether the current session was ever connected (for the page's wording). */
    this.everConnected = false;
    /** Retries since the last success. */
    this.attempt = 0;
  }

  /** Opens a socket and starts the handshake (join or resume). */
  open() {
    this.clearRetry();
    this.pendingError = null;
    this.phase = this.session ? 'resume' : 'join';
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      // A malformed URL: nothing a retry could fix.
      const err = { code: 'BAD_URL', message: String(e?.message ?? e) };
      this.emit('error', { ...err, fatal: true });
      this.setState(State.DISCONNECTED, { code: err.code, reason: err.message });
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => this.ws === ws && this.onOpen();
    ws.onmessage = (ev) => this.ws === ws && this.onMessage(ev.data);
    ws.onclose = (ev) => this.ws === ws && this.onClose(ev.code, ev.reason);
    ws.onerror = () => {}; // a close event follows
    this.connectTimer = this.setTimeout(() => {
      this.connectTimer = null;
      if (this.ws !== ws) return;
      this.abandon();
      this.emit('error', {
        code: 'CONNECT_TIMEOUT',
        message: `The relay did not answer within ${Math.round(this.options.connectTimeout / 1000)} s.`,
        fatal: false,
      });
      this.retry('reconnect');
    }, this.options.connectTimeout);
  }

  onOpen() {
    if (this.phase === 'resume') {
      this.raw({
        type: 'resume',
        sessionId: this.session.sessionId,
        resumeToken: this.session.resumeToken,
        lastSeq: this.received,
      });
    } else {
      // Without a name the join is exactly the pairing's.
      this.raw(this.name ? { type: 'join', code: this.code, name: this.name } : { type: 'join', code: this.code });
    }
  }

  onMessage(data) {
    if (this.secure && this.phase !== 'join' && this.secure.takes(data)) return;
    if (typeof data !== 'string') {
      this.received += 1;
      this.save();
      this.emit('data', { bytes: new Uint8Array(data) });
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.emit('error', { code: 'BAD_FRAME', message: 'The relay sent text that is not JSON.', fatal: false });
      return;
    }
    switch (msg?.type) {
      case 'data':
        this.received += 1;
        this.save();
        this.emit('data', { text: msg.payload });
        break;
      case 'waiting':
        if (this.phase !== 'join') {
          this.emit('event', msg);
          break;
        }
        this.onWaiting(Number(msg.guestId));
        break;
      case 'joined':
        this.session = { sessionId: msg.sessionId, resumeToken: msg.resumeToken };
        this.guestId = msg.guestId === undefined ? null : Number(msg.guestId);
        this.code = null;
        this.received = 0;
        this.sent = 0;
        this.save();
        this.emit('joined', { sessionId: msg.sessionId, guestId: this.guestId, ...(this.secure ? { encrypted: true } : {}) });
        this.secure?.joined(this.guestId);
        this.connected();
        break;
      case 'resumed':
        this.onResumed(Number(msg.lastSeq));
        break;
      case 'pong':
        if (this.pingSentAt !== null && msg.ts === this.pingSentAt) {
          this.latency = Math.max(0, this.now() - msg.ts);
          this.pingSentAt = null;
          this.clearLate();
          this.latencyStale = false;
          this.emit('latency', this.latency);
        }
        break;
      case 'peer_disconnected':
        this.peerPresent = false;
        this.emit('peer', { present: false });
        break;
      case 'peer_resumed':
      case 'peer_joined':
        this.peerPresent = true;
        this.emit('peer', { present: true });
        break;
      case 'error':
        this.onError(String(msg.code), String(msg.message ?? ''));
        break;
      default:
        this.emit('event', msg);
    }
  }

  onResumed(lastSeq) {
    // The relay accepted `lastSeq` of our frames: keep the rest, in order,
    // then what was queued while away, and send them all.
    const keep = this.unacked.filter((f) => f.seq > lastSeq);
    const expected = this.sent - lastSeq;
    const lost = Math.max(0, expected - keep.length);
    this.unacked = [];
    this.unackedBytes = 0;
    this.sent = lastSeq;
    this.queue = [...keep.map(({ frame, size }) => ({ frame, size })), ...this.queue];
    this.queueBytes = this.queue.reduce((n, f) => n + f.size, 0);
    this.save();
    this.emit('resumed', { lastSeq, resent: keep.length, lost });
    if (lost > 0) this.emit('lost', lost);
    this.connected();
  }

  /**
   * Rooms: the relay took the join and the host decides. The connection
   * works, so the attempts start over and the connect timeout stops (the
   * relay bounds the wait itself, RELAY_ADMIT_TIMEOUT); pings go on so a
   * dead connection is still noticed. What the page sends stays queued.
   */
  onWaiting(guestId) {
    this.phase = 'waiting';
    this.guestId = guestId;
    this.clearConnectTimer();
    this.attempt = 0;
    this.emit('waiting', { guestId });
    this.setState(State.WAITING, { guestId });
    this.ping();
  }

  /** The handshake succeeded: flush, ping, reset the attempts. */
  connected() {
    this.phase = 'open';
    this.clearConnectTimer();
    this.attempt = 0;
    this.gaveUp = false;
    this.everConnected = true;
    this.flush();
    this.setState(State.CONNECTED);
    this.ping();
  }

  onError(code, message) {
    this.pendingError = { code, message };
    if (this.phase === 'open' || this.phase === 'waiting') {
      if (SESSION_ENDS.has(code)) {
        // The relay closes with 1000 next; the session is over.
        this.end(code, message || ENDED_BY[code]);
      } else if (code !== 'SHUTTING_DOWN' && code !== 'MESSAGE_TOO_LARGE') {
        // SHUTTING_DOWN and MESSAGE_TOO_LARGE are followed by a close (1012, 1009).
        this.emit('error', { code, message, fatal: false });
      }
      return;
    }
    // An answer to join or resume.
    if (code === 'SHUTTING_DOWN') return; // close 1012 follows: reconnect soon
    if (RETRYABLE.has(code)) {
      this.abandon();
      this.emit('error', { code, message, fatal: false });
      this.retry('reconnect');
      return;
    }
    if (this.phase === 'join' && (code === 'ROOM_FULL' || code === 'DENIED')) {
      // Not a mistyped code: the room is there but has no place now. The
      // person may try again later; the client does not, on its own.
      this.end(code, message);
      return;
    }
    if (this.phase === 'resume' && RESUME_FATAL.has(code)) {
      this.end(code, message);
      return;
    }
    if (this.phase === 'resume') {
      // Not an answer the contract gives to a resume: try again later.
      this.abandon();
      this.emit('error', { code, message, fatal: false });
      this.retry('reconnect');
      return;
    }
    // The join was refused (INVALID_CODE, EXPIRED_CODE, ALREADY_JOINED,
    // RATE_LIMITED, ...): stop, so the person can type the code again.
    this.abandon();
    const typed = this.code;
    this.resetSession();
    this.emit('error', { code, message, fatal: true, join: typed });
    this.setState(State.DISCONNECTED, { code, reason: message });
  }

  onClose(code, reason) {
    const pending = this.pendingError;
    this.detach();
    if (this.ended) return;
    const action = closeAction(code);
    if (action === 'stop') {
      // The error the relay sent just before closing says more than the code.
      const why = (pending && [1000, 1008, 1009].includes(code) ? pending : null) ?? {
        code: `CLOSED_${code}`,
        message: CLOSE_REASONS[code] ?? `The relay closed the connection (${[code, reason].filter(Boolean).join(' ')}).`,
      };
      if (this.session) {
        this.end(why.code, why.message, code);
      } else {
        this.emit('error', { ...why, fatal: true });
        this.resetSession();
        this.setState(State.DISCONNECTED, { code });
      }
      return;
    }
    this.retry(action, code);
  }

  /** Schedules the next attempt, or gives up at the cap. */
  retry(action, code) {
    if (this.attempt >= this.options.maxRetries) {
      this.gaveUp = true;
      this.setState(State.DISCONNECTED, { code, reason: 'gave_up' });
      this.emit('gaveup', { attempts: this.attempt });
      return;
    }
    this.attempt += 1;
    const delay =
      action === 'now' && this.attempt === 1
        ? this.options.drainJitter * this.random()
        : backoffDelay(this.attempt, this.options, this.random);
    this.setState(State.RECONNECTING, { delay, code, nextAt: this.now() + delay });
    this.retryTimer = this.setTimeout(() => {
      this.retryTimer = null;
      this.emit('attempt', { attempt: this.attempt, manual: false });
      this.open();
    }, delay);
  }

  /** The session is over: stop, forget it, tell the page. */
  end(code, message, closeCode) {
    // Encrypted: a Mac gone without its sealed end frame may have been cut short.
    const unfinished = this.secure?.unfinished() ?? false;
    this.secure?.stop();
    this.ended = { code, message };
    this.clearStorage();
    this.abandon(code === 'LEFT');
    const unsent = this.queue.length;
    this.queue = [];
    this.queueBytes = 0;
    // Not let in (yet): what to join with if the person tries again.
    const again = this.session ? {} : { join: this.code, name: this.name };
    this.emit('ended', { code, message, closeCode, peerAway: !this.peerPresent, unsent, ...(unfinished ? { unfinished } : {}), ...again });
    this.setState(State.DISCONNECTED, { code, reason: message });
  }

  // ---- frames ----------------------------------------------------------

  raw(msg) {
    this.ws.send(JSON.stringify(msg));
  }

  write(frame, size) {
    this.ws.send(frame);
    this.sent += 1;
    this.unacked.push({ seq: this.sent, frame, size });
    this.unackedBytes += size;
    // Kept only up to keepBytes: older frames were almost surely accepted.
    while (this.unackedBytes > this.options.keepBytes && this.unacked.length > 1) {
      this.unackedBytes -= this.unacked.shift().size;
    }
    this.save();
  }

  flush() {
    const queue = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    for (const { frame, size } of queue) this.write(frame, size);
  }

  ping() {
    this.clearPing();
    if (!this.ws || (this.phase !== 'open' && this.phase !== 'waiting')) return;
    if (this.pingSentAt !== null && this.now() - this.pingSentAt >= this.options.pongTimeout) {
      // No pong for too long: the connection is dead even if the socket does not know yet.
      this.abandon();
      this.emit('error', { code: 'PONG_TIMEOUT', message: 'The relay stopped answering.', fatal: false });
      this.retry('reconnect', 1006);
      return;
    }
    if (this.pingSentAt === null) {
      const ts = this.now();
      this.pingSentAt = ts;
      this.raw({ type: 'ping', ts });
      this.clearLate();
      this.lateTimer = this.setTimeout(() => {
        this.lateTimer = null;
        if (this.pingSentAt !== ts) return;
        // A pong takes milliseconds: this late, the relay (or the path to it)
        // is stuck, and the last latency would claim a health it lacks.
        this.latencyStale = true;
        this.emit('stale', { since: ts });
      }, this.options.pongLate);
    }
    this.pingTimer = this.setTimeout(() => {
      this.pingTimer = null;
      this.ping();
    }, this.options.pingInterval);
  }

  // ---- cleanup ---------------------------------------------------------

  clearConnectTimer() {
    if (this.connectTimer !== null) this.clearTimeout(this.connectTimer);
    this.connectTimer = null;
  }

  clearRetry() {
    if (this.retryTimer !== null) this.clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  clearPing() {
    if (this.pingTimer !== null) this.clearTimeout(this.pingTimer);
    this.pingTimer = null;
  }

  clearLate() {
    if (this.lateTimer !== null) this.clearTimeout(this.lateTimer);
    this.lateTimer = null;
  }

  /** Forgets the current socket (its later events are ignored) and its timers. */
  detach() {
    this.clearConnectTimer();
    this.clearPing();
    this.clearLate();
    this.pingSentAt = null;
    this.latencyStale = false;
    this.ws = null;
    this.phase = null;
    this.pendingError = null;
  }

  /**
   * Closes the current socket, if any, and cancels a scheduled attempt.
   * Without a close code (the relay reads 1005), so the relay keeps the
   * session for its grace period; `clean` closes with 1000 ("meant to go").
   */
  abandon(clean = false) {
    const ws = this.ws;
    this.detach();
    this.clearRetry();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        if (clean) ws.close(1000);
        else ws.close();
      } catch {
        // Already closed.
      }
    }
  }

  // ---- storage ---------------------------------------------------------

  save() {
    if (!this.storage || !this.options.storageKey || !this.session) return;
    try {
      this.storage.setItem(
        this.options.storageKey,
        JSON.stringify({
          ...this.session,
          // Only a guest of a room has one: a pairing's entry stays as it was.
          ...(this.guestId !== null ? { guestId: this.guestId } : {}),
          received: this.received,
          sent: this.sent,
          // The keys live in this page's memory only: a reload cannot take it back.
          ...(this.secure ? { e2e: true } : {}),
        }),
      );
    } catch {
      // Full or blocked storage: a reload then starts over, nothing else breaks.
    }
  }

  load() {
    if (!this.storage || !this.options.storageKey) return null;
    try {
      const v = JSON.parse(this.storage.getItem(this.options.storageKey) ?? 'null');
      if (v?.e2e) {
        this.clearStorage();
        return null;
      }
      if (v && typeof v.sessionId === 'string' && typeof v.resumeToken === 'string') {
        return {
          sessionId: v.sessionId,
          resumeToken: v.resumeToken,
          guestId: Number.isSafeInteger(v.guestId) ? v.guestId : null,
          received: Number.isSafeInteger(v.received) ? v.received : 0,
          sent: Number.isSafeInteger(v.sent) ? v.sent : 0,
        };
      }
    } catch {
      // Unreadable: start over.
    }
    return null;
  }

  clearStorage() {
    if (!this.storage || !this.options.storageKey) return;
    try {
      this.storage.removeItem(this.options.storageKey);
    } catch {
      // Nothing to do.
    }
  }
}
