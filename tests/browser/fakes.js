// Fakes for the unit tests of relay/static/client.js: a clock whose timers
// run only when a test advances it, WebSockets a test drives by hand, and an
// in-memory sessionStorage. No browser, no relay.

import assert from 'node:assert/strict';

import { RelayClient, normalizeCode } from '../../relay/static/client.js';

// ---- fakes -------------------------------------------------------------

/** A clock whose timers run only when the test advances it. */
export class FakeClock {
  constructor() {
    this.t = 1_000_000;
    this.timers = new Map();
    this.next = 1;
  }
  now = () => this.t;
  setTimeout = (fn, ms) => {
    const id = this.next++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  /** Runs every timer due within `ms`, in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let first = null;
      for (const [id, tm] of this.timers) {
        if (tm.at <= end && (first === null || tm.at < first[1].at)) first = [id, tm];
      }
      if (!first) break;
      this.timers.delete(first[0]);
      this.t = first[1].at;
      first[1].fn();
    }
    this.t = end;
  }
  /** The delay of the only pending timer that is not the ping timer (by elimination: the latest). */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t);
  }
}

/** A WebSocket the test drives: records what the client sends. */
export function fakeSockets() {
  const made = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      this.closedWith = undefined;
      made.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('not open');
      this.sent.push(data);
    }
    close(code) {
      this.closedWith = code ?? 'none';
      this.readyState = 3;
    }
    // Test side.
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    text(obj) {
      this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
    }
    binary(bytes) {
      this.onmessage?.({ data: new Uint8Array(bytes).buffer });
    }
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** Sent control messages, parsed. */
    json() {
      return this.sent.filter((s) => typeof s === 'string').map((s) => JSON.parse(s));
    }
    /** Sent data frames: text payloads and binary as arrays. */
    data() {
      return this.sent
        .map((s) => (typeof s === 'string' ? JSON.parse(s) : { bin: [...s] }))
        .filter((m) => m.type === 'data' || m.bin)
        .map((m) => m.payload ?? m.bin);
    }
  }
  return { FakeWebSocket, made };
}

export class MemoryStorage {
  constructor() {
    this.m = new Map();
  }
  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    this.m.set(k, String(v));
  }
  removeItem(k) {
    this.m.delete(k);
  }
}

export function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, made } = fakeSockets();
  const storage = new MemoryStorage();
  const client = new RelayClient({
    url: 'ws://relay.test/browser',
    WebSocket: FakeWebSocket,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    storage,
    ...options,
  });
  const states = [];
  const events = [];
  client.on('state', (s) => states.push(s.state));
  for (const name of ['waiting', 'joined', 'resumed', 'data', 'peer', 'latency', 'error', 'ended', 'gaveup', 'lost']) {
    client.on(name, (v) => events.push([name, v]));
  }
  const last = () => made[made.length - 1];
  return { clock, made, last, storage, client, states, events };
}

/** Joins and answers `joined`; returns the socket. */
export function joined(t, code = 'h4f-7kn') {
  t.client.join(code);
  const ws = t.last();
  ws.open();
  assert.deepEqual(ws.json()[0], { type: 'join', code: normalizeCode(code) });
  ws.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok' });
  return ws;
}
