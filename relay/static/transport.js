// The browser client's transports, served by the relay at /transport.js: a
// WebSocket, or the HTTP fallback (shared/PROTOCOL.md, "HTTP transport") for
// networks whose proxy refuses the upgrade or buffers responses. Both look
// like a WebSocket to client.js (onopen, onmessage, onclose, send, close,
// readyState), so the protocol above them is the same: join, resume, counts
// and close codes do not know which transport carries them.
//
// Auto (the default): a WebSocket first; when its upgrade fails, or it stays
// silent for `fallbackAfter` ms, the HTTP fallback, and from then on a
// WebSocket tried again every `websocketRetry` ms (0: never): when one opens,
// the client resumes on it (a resume loses nothing).

/** Defaults of the transports (ms). */
export const TRANSPORT_DEFAULTS = Object.freeze({
  /** 'auto', 'websocket' or 'http'. */
  transport: 'auto',
  /** Auto: longest wait for the WebSocket to open and to answer; also for an HTTP stream to open. */
  fallbackAfter: 4_000,
  /** Auto, on HTTP: how often to try the WebSocket again; 0 = never (stay on HTTP). */
  websocketRetry: 60_000,
});

/**
 * `websocketRetry` as given, when it is one: a whole number of ms, 0 or
 * more (Infinity too, as never); anything else is the default, so a bad
 * value never probes in a tight loop or not at all by mistake.
 */
function retryInterval(ms) {
  if (ms === Infinity || (Number.isSafeInteger(ms) && ms >= 0)) return ms;
  return TRANSPORT_DEFAULTS.websocketRetry;
}

/**
 * An interval written as a person does, for a page's query string
 * (`?ws-retry=30s`): `N` or `Ns` seconds, `Nm` minutes, `Nms`; in ms, or
 * undefined when it is not one (the caller keeps its default).
 */
export function parseInterval(text) {
  const m = /^\s*(\d{1,9})\s*(ms|s|m)?\s*$/.exec(text ?? '');
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000 }[m[2] ?? 's'];
  return Number(m[1]) * unit;
}

/** Items in one send batch at most (the relay's bound). */
const BATCH_ITEMS = 64;
/** Characters of encoded items in one batch at most (well inside the relay's body limit). */
const BATCH_CHARS = 1 << 20;
/** Tries of one request in a row before the virtual connection counts as dropped. */
const TRIES = 4;
/** A send, poll or stream chunk that takes longer is on a dead path (the relay answers within 25 s). */
const REQUEST_TIMEOUT = 40_000;

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** The HTTP transport's base (`http://host/`) for the WebSocket endpoint `wsUrl` (`ws://host/browser`). */
export function httpBase(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  url.pathname = url.pathname.replace(/browser$/, '');
  url.search = '';
  url.hash = '';
  return url.href;
}

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i += 1) out[i] = s.charCodeAt(i);
  return out.buffer;
}

/** One frame as a send item: `{"text":...}` or `{"binary":<base64>}`. */
export function toItem(data) {
  if (typeof data === 'string') return JSON.stringify({ text: data });
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return JSON.stringify({ binary: toBase64(bytes) });
}

/**
 * Reads server-sent events as chunks of text come: calls `onOpen` for the
 * `: open` comment and `onData` with each event's data. Lines end with
 * `\n`, `\r\n` or `\r`.
 */
export class SseReader {
  constructor(onOpen, onData) {
    this.onOpen = onOpen;
    this.onData = onData;
    this.line = '';
    this.data = null;
    this.afterCr = false;
  }

  feed(text) {
    for (const ch of text) {
      const afterCr = this.afterCr;
      this.afterCr = false;
      if (ch === '\n' && afterCr) continue;
      if (ch === '\n' || ch === '\r') {
        this.afterCr = ch === '\r';
        const line = this.line;
        this.line = '';
        this.lineDone(line);
      } else {
        this.line += ch;
      }
    }
  }

  lineDone(line) {
    if (line === '') {
      if (this.data !== null) {
        const d = this.data;
        this.data = null;
        this.onData(d);
      }
    } else if (line.startsWith(':')) {
      if (line.slice(1).trim() === 'open') this.onOpen();
    } else {
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data = this.data === null ? value : `${this.data}\n${value}`;
    }
  }
}

/** A closed-connection event as a WebSocket gives it. */
function closeEvent(code, reason = '') {
  return { code, reason, wasClean: code !== 1006 };
}

/**
 * A virtual connection of the HTTP transport, with a WebSocket's interface.
 * `env` holds `base` (http://host/), `fetch`, timers, `fallbackAfter` and
 * `shared` ({buffered}: what was learned of the path, for the next ones).
 */
export class HttpSocket {
  constructor(env) {
    this.env = env;
    this.readyState = CONNECTING;
    this.binaryType = 'arraybuffer';
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.cid = null;
    this.after = 0; // the highest pos handed to onmessage
    this.batch = 0; // the last batch number used
    this.pending = []; // items not taken by the relay yet, oldest first
    this.sending = false;
    this.closing = false; // close() called: send what waits, then stop
    this.aborts = new Set();
    this.dial();
  }

  url(path) {
    return new URL(path, this.env.base).href;
  }

  /**
   * A POST with a timeout (none for a stream, whose chunks are timed). With
   * `read`, the timeout also covers reading the answer: `read(res)` is what
   * it returns (a poll's head comes at once, its items when there are some).
   */
  async post(path, body, timeout = REQUEST_TIMEOUT, read = null) {
    const abort = new AbortController();
    this.aborts.add(abort);
    const timer = timeout ? this.env.setTimeout(() => abort.abort(), timeout) : null;
    try {
      const res = await this.env.fetch(this.url(path), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', ...(this.cid ? { 'Relay-Connection': this.cid } : {}) },
        body,
        cache: 'no-store',
        signal: abort.signal,
      });
      return read ? await read(res) : res;
    } finally {
      if (timer !== null) this.env.clearTimeout(timer);
      this.aborts.delete(abort);
    }
  }

  async dial() {
    try {
      const res = await this.post('http/browser', '');
      if (res.status !== 200) {
        // An origin the relay refuses is 403 with close 1008: stop, as a WebSocket's close says.
        const body = await res.json().catch(() => ({}));
        if (Number.isInteger(body.close)) {
          this.closeReason = String(body.error ?? '');
          return this.fail(body.close);
        }
        throw new Error(`HTTP ${res.status}`);
      }
      const { connection } = await res.json();
      if (this.readyState === CLOSED) return;
      this.cid = String(connection);
      this.readyState = OPEN;
      this.env.opened?.();
      this.onopen?.({});
      this.receive();
      this.pump();
    } catch {
      this.env.failed?.();
      this.fail(1006);
    }
  }

  send(data) {
    if (this.readyState !== OPEN || this.closing) return;
    this.pending.push(toItem(data));
    this.pump();
  }

  /** Sends what waits, one batch at a time, each until the relay took it. */
  async pump() {
    if (this.sending || this.readyState !== OPEN) return;
    this.sending = true;
    let budget = BATCH_CHARS;
    try {
      while (this.pending.length > 0 && this.readyState === OPEN) {
        let n = 0;
        let chars = 0;
        while (n < this.pending.length && n < BATCH_ITEMS && (n === 0 || chars + this.pending[n].length <= budget)) {
          chars += this.pending[n].length;
          n += 1;
        }
        this.batch += 1;
        const verdict = await this.sendBatch(this.batch, this.pending.slice(0, n));
        if (verdict === 'taken') this.pending.splice(0, n);
        else if (verdict === 'smaller' && n > 1) {
          this.batch -= 1; // nothing of it was applied: the same number again
          budget = Math.max(1, budget >> 1);
        } else return this.fail(verdict === 'smaller' ? 1009 : verdict);
      }
    } finally {
      this.sending = false;
    }
    if (this.closing && this.pending.length === 0) this.stop();
  }

  /** 'taken', 'smaller' (413), or the close code that ends the connection. */
  async sendBatch(batch, items) {
    const body = `{"batch":${batch},"frames":[${items.join(',')}]}`;
    for (let failed = 0; ; ) {
      try {
        const res = await this.post('http/send', body);
        if (res.status === 200) return 'taken';
        if (res.status === 413) return 'smaller';
        if (res.status === 503 && res.headers.get('Retry-After')) {
          // Held back by flow control, as a WebSocket's full buffer: wait and retry.
          await this.sleep(Math.min(5, Number(res.headers.get('Retry-After')) || 1) * 1000);
          continue;
        }
        const gone = await this.refused(res);
        if (gone !== null) return gone;
      } catch {
        // A network error: the same batch again (the relay never applies it twice).
      }
      if (this.readyState !== OPEN) return 1006;
      failed += 1;
      if (failed >= TRIES) return 1006;
      await this.sleep(250 * 2 ** (failed - 1));
    }
  }

  /** The close code an answer other than 200 means, or null to retry. */
  async refused(res) {
    if (res.status === 408 || res.status === 429 || res.status >= 500) return null;
    // 410 (closed) or 403 (an origin refused, 1008) carry the close code to act on.
    const body = await res.json().catch(() => ({}));
    if (Number.isInteger(body.close)) {
      this.closeReason = String(body.reason ?? body.error ?? '');
      return body.close;
    }
    // 404: the relay forgot the connection; 400, 409: start afresh. A dropped connection.
    return 1006;
  }

  sleep(ms) {
    return new Promise((resolve) => this.env.setTimeout(resolve, ms));
  }

  /** Receives until the connection is over: a stream, or long polls once a stream was buffered. */
  async receive() {
    for (let failed = 0; this.readyState === OPEN; ) {
      let verdict;
      try {
        verdict = this.env.shared.buffered ? await this.poll() : await this.stream();
      } catch {
        verdict = null;
      }
      if (this.readyState !== OPEN) return;
      if (verdict === 'again') {
        failed = 0;
        continue;
      }
      if (typeof verdict === 'number') return this.fail(verdict);
      failed += 1;
      if (failed >= TRIES) return this.fail(1006);
      await this.sleep(250 * 2 ** (failed - 1));
    }
  }

  /** 'again', a close code, or null (retry). */
  async poll() {
    const asked = JSON.stringify({ after: this.after, mode: 'poll' });
    const { res, items } = await this.post('http/receive', asked, REQUEST_TIMEOUT, async (res) =>
      res.status === 200 ? { res, items: await res.json() } : { res, items: null },
    );
    if (items === null) return this.refused(res);
    for (const item of items) {
      if (this.deliver(item)) return 'closed';
    }
    return 'again';
  }

  async stream() {
    const abort = new AbortController();
    this.aborts.add(abort);
    let open = false;
    // No `: open` in time: a proxy buffers the stream; long polls from now on.
    let timer = this.env.setTimeout(() => {
      if (open) return;
      this.env.shared.buffered = true;
      abort.abort();
    }, this.env.fallbackAfter);
    try {
      const res = await this.env.fetch(this.url('http/receive'), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Relay-Connection': this.cid },
        body: JSON.stringify({ after: this.after, mode: 'stream' }),
        cache: 'no-store',
        signal: abort.signal,
      });
      if (res.status !== 200) return await this.refused(res);
      const reader = res.body.getReader();
      const text = new TextDecoder();
      let closed = false;
      const sse = new SseReader(
        () => {
          open = true;
        },
        (data) => {
          closed = closed || this.deliver(JSON.parse(data));
        },
      );
      for (;;) {
        if (open) {
          this.env.clearTimeout(timer);
          timer = this.env.setTimeout(() => abort.abort(), REQUEST_TIMEOUT);
        }
        const { value, done } = await reader.read();
        if (done) return 'again';
        sse.feed(text.decode(value, { stream: true }));
        if (closed) return 'closed';
      }
    } catch (e) {
      if (this.env.shared.buffered && !open) return 'again';
      throw e;
    } finally {
      this.env.clearTimeout(timer);
      this.aborts.delete(abort);
      abort.abort();
    }
  }

  /** Hands an item to onmessage once, in order; true when it closed the connection. */
  deliver(item) {
    const pos = Number(item?.pos);
    if (!Number.isSafeInteger(pos) || pos <= this.after) return false;
    if (pos !== this.after + 1) {
      this.fail(1006);
      return true;
    }
    this.after = pos;
    if (Number.isInteger(item.close)) {
      this.fail(item.close, String(item.reason ?? ''));
      return true;
    }
    if (this.readyState !== OPEN) return true;
    if (typeof item.text === 'string') this.onmessage?.({ data: item.text });
    else if (typeof item.binary === 'string') this.onmessage?.({ data: fromBase64(item.binary) });
    return false;
  }

  /** The connection is over with `code`, as a WebSocket's close. */
  fail(code, reason = this.closeReason ?? '') {
    if (this.readyState === CLOSED) return;
    this.stop();
    this.onclose?.(closeEvent(code, reason));
  }

  /** Stops every request; no events after this. */
  stop() {
    this.readyState = CLOSED;
    for (const a of this.aborts) a.abort();
    this.aborts.clear();
  }

  /** As WebSocket.close: what was sent before still goes (a `leave`), then the requests stop. */
  close() {
    if (this.readyState === CLOSED) return;
    this.closing = true;
    if (!this.sending && this.pending.length === 0) this.stop();
    this.onopen = this.onmessage = this.onclose = null;
  }
}

/**
 * Auto: a WebSocket that hands over to an HttpSocket when its upgrade fails,
 * or it says nothing within `fallbackAfter` ms of being opened or written
 * to (then what was written is written again on HTTP: nothing reached the
 * relay's answer, so nothing is lost or doubled there).
 */
class AutoSocket {
  constructor(transports, url) {
    this.t = transports;
    this.readyState = CONNECTING;
    this.binaryType = 'arraybuffer';
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.written = []; // frames sent before the relay said anything
    this.heard = false;
    this.inner = null;
    const ws = new transports.WebSocket(url);
    ws.binaryType = 'arraybuffer';
    this.inner = ws;
    this.timer = transports.setTimeout(() => this.fallBack('the WebSocket did not open in time'), transports.fallbackAfter);
    ws.onopen = () => {
      if (this.inner !== ws) return;
      transports.clearTimeout(this.timer);
      this.readyState = OPEN;
      this.t.now('websocket', '');
      this.onopen?.({});
    };
    ws.onmessage = (ev) => {
      if (this.inner !== ws) return;
      this.heard = true;
      this.written = [];
      transports.clearTimeout(this.timer);
      this.onmessage?.(ev);
    };
    ws.onclose = (ev) => {
      if (this.inner !== ws) return;
      if (!this.heard && ev.code === 1006) this.fallBack('the WebSocket was refused');
      else this.closed(ev);
    };
    ws.onerror = () => {};
  }

  send(data) {
    if (!this.heard) {
      this.written.push(data);
      if (this.written.length === 1) {
        this.t.clearTimeout(this.timer);
        this.timer = this.t.setTimeout(() => this.fallBack('the WebSocket stayed silent'), this.t.fallbackAfter);
      }
    }
    this.inner.send(data);
  }

  fallBack(why) {
    const old = this.inner;
    if (this.heard || !old || this.readyState === CLOSED) return;
    this.t.clearTimeout(this.timer);
    old.onopen = old.onmessage = old.onclose = null;
    try {
      old.close();
    } catch {
      // Already closed.
    }
    // HTTP failing too says nothing against the WebSocket: it goes first next time.
    const http = this.t.http({ failed: () => (this.t.onHttp = false) });
    this.inner = http;
    const replay = this.written;
    http.onopen = () => {
      if (this.inner !== http) return;
      this.t.fellBack(why);
      this.heard = true;
      for (const d of replay) http.send(d);
      this.written = [];
      if (this.readyState === CONNECTING) {
        this.readyState = OPEN;
        this.onopen?.({});
      }
    };
    http.onmessage = (ev) => this.inner === http && this.onmessage?.(ev);
    http.onclose = (ev) => this.inner === http && this.closed(ev);
  }

  closed(ev) {
    this.t.clearTimeout(this.timer);
    this.readyState = CLOSED;
    this.onclose?.(ev);
  }

  close(code) {
    this.t.clearTimeout(this.timer);
    this.readyState = CLOSED;
    const inner = this.inner;
    this.inner = null;
    if (inner) {
      inner.onopen = inner.onmessage = inner.onclose = null;
      inner.close(code);
    }
  }
}

/**
 * The transports of one client: what it uses now, what it learned (HTTP
 * since the WebSocket failed, a buffering proxy), and the WebSocket probes
 * while on HTTP. `onChange({transport, reason})` hears every change;
 * `onBetter()` is asked to move the session onto a WebSocket that opened
 * (it returns whether it did, by opening a new socket).
 */
export class Transports {
  constructor(options, onChange, onBetter) {
    const o = { ...TRANSPORT_DEFAULTS, ...options };
    this.mode = ['auto', 'websocket', 'http'].includes(o.transport) ? o.transport : 'auto';
    this.url = o.url;
    this.fallbackAfter = o.fallbackAfter;
    this.websocketRetry = retryInterval(o.websocketRetry);
    this.WebSocket = o.NativeWebSocket ?? globalThis.WebSocket;
    this.fetch = o.fetch ?? ((...a) => globalThis.fetch(...a));
    this.setTimeout = o.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.clearTimeout = o.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this.onChange = onChange;
    this.onBetter = onBetter;
    /** 'websocket' or 'http': the transport of the current (or last) connection. */
    this.current = 'websocket';
    /** Auto: the WebSocket failed, so connect over HTTP (probes bring it back). */
    this.onHttp = this.mode === 'http';
    this.shared = { buffered: false };
    this.probeTimer = null;
    this.live = null; // the latest HttpSocket
    this.ready = null; // a probe WebSocket that opened, for the next open()
    const t = this;
    /** What client.js creates with `new`: a socket of the transport in use. */
    this.Socket = function Socket(url) {
      return t.open(url);
    };
  }

  open(url) {
    this.stopProbe();
    if (this.ready) {
      const ws = this.ready;
      this.ready = null;
      this.onHttp = false;
      this.now('websocket', 'the WebSocket works again');
      // Already open: client.js hears `open` once it set its handlers.
      Promise.resolve().then(() => ws.onopen?.({}));
      return ws;
    }
    if (this.mode === 'websocket') {
      return new this.WebSocket(url);
    }
    if (this.onHttp) {
      return this.http({
        opened: () => {
          this.now('http', this.mode === 'http' ? 'set to use HTTP' : 'the WebSocket did not work');
          this.probeLater();
        },
        // HTTP failing too says nothing against the WebSocket: it goes first next time.
        failed: () => {
          if (this.mode === 'auto') this.onHttp = false;
        },
      });
    }
    return new AutoSocket(this, url);
  }

  /** A new virtual connection; `hooks.opened()` and `hooks.failed()` hear how its dial went. */
  http(hooks = {}) {
    // The latest virtual connection: probes run only while it is open.
    this.live = new HttpSocket({
      ...hooks,
      base: httpBase(this.url),
      fetch: this.fetch,
      setTimeout: this.setTimeout,
      clearTimeout: this.clearTimeout,
      fallbackAfter: this.fallbackAfter,
      shared: this.shared,
    });
    return this.live;
  }

  /** An AutoSocket fell back to HTTP. */
  fellBack(why) {
    this.onHttp = true;
    this.now('http', why);
    this.probeLater();
  }

  now(transport, reason) {
    if (this.current === transport) return;
    this.current = transport;
    this.onChange?.({ transport, reason, buffered: this.shared.buffered });
  }

  /** Auto, on HTTP: try a WebSocket in `websocketRetry` ms (never with 0). */
  probeLater() {
    if (this.mode !== 'auto') return;
    if (this.websocketRetry === 0 || this.websocketRetry === Infinity) return;
    this.stopProbe();
    this.probeTimer = this.setTimeout(() => this.probe(), this.websocketRetry);
  }

  stopProbe() {
    if (this.probeTimer !== null) this.clearTimeout(this.probeTimer);
    this.probeTimer = null;
  }

  probe() {
    this.probeTimer = null;
    // Nothing on HTTP any more (the session ended, or moved): no probing.
    if (this.live?.readyState !== 1) return;
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch {
      return this.probeLater();
    }
    ws.binaryType = 'arraybuffer';
    const timer = this.setTimeout(() => {
      ws.onopen = ws.onclose = null;
      ws.close();
      this.probeLater();
    }, this.fallbackAfter);
    ws.onerror = () => {};
    ws.onclose = () => {
      this.clearTimeout(timer);
      this.probeLater();
    };
    ws.onopen = () => {
      this.clearTimeout(timer);
      ws.onopen = ws.onclose = null;
      this.ready = ws;
      if (!this.onBetter?.()) {
        // Not now (the session is not open): keep to HTTP, try later.
        this.ready = null;
        ws.close();
        this.probeLater();
      }
    };
  }
}
