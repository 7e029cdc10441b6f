// The HTTP transport against WebSocket, on one relay in one run (issue 14):
// throughput and latency of one pair whose browser is on a WebSocket, on
// HTTP streaming and on HTTP long polling (the mac on a WebSocket always),
// both directions; then the memory per waiting HTTP client (a registered
// mac with a long poll open) beside that of an idle registered WebSocket.
// Timestamps ride in the frames, so latency is end to end on one clock.
//
// Usage: node http-bench.mjs HOST:PORT RELAY_PID [frames] [size] [idle] [OTHER_HOST:PORT]
// Prints one JSON object. With PHASE=idle-websocket or PHASE=idle-http in
// the environment it measures only that client's memory (PHASE=idle-http-stream:
// the same with an event stream open instead of a long poll; give each a fresh
// relay: a process that already grew reuses what it freed, and under-counts).
// With OTHER_HOST:PORT (another node of the same
// cluster) every HTTP request after the open goes there: each one takes the
// no-sticky hop, which is what that run measures.
import fs from 'node:fs';
import WebSocket from 'ws';

const [hostport, pid, framesArg, sizeArg, idleArg, other] = process.argv.slice(2);
const FRAMES = Number(framesArg ?? 20000);
const SIZE = Number(sizeArg ?? 1024);
const IDLE = Number(idleArg ?? 2000);
const base = `http://${hostport}`;
const later = other ? `http://${other}` : base;
// Node's fetch opens as many sockets per origin as there are requests in
// flight, so every waiting poll has its own.

const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const now = () => performance.now();

function wsOpen(path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${hostport}${path}`, { perMessageDeflate: false });
    ws.queue = [];
    ws.waiters = [];
    ws.on('message', (data, binary) => {
      const m = binary ? data : data.toString();
      const w = ws.waiters.shift();
      if (w) w(m); else ws.queue.push(m);
    });
    ws.next = () => (ws.queue.length ? Promise.resolve(ws.queue.shift()) : new Promise((r) => ws.waiters.push(r)));
    ws.on('open', () => resolve(ws));
    ws.on('error', reject);
  });
}

async function expectType(next, type) {
  for (;;) {
    const m = await next();
    if (typeof m === 'string') {
      const v = JSON.parse(m);
      if (v.type === type) return v;
    }
  }
}

async function post(path, body, cid) {
  const headers = { 'content-type': 'application/json' };
  if (cid) headers['relay-connection'] = cid;
  const res = await fetch((cid ? later : base) + path, { method: 'POST', headers, body: body === undefined ? '' : JSON.stringify(body) });
  return res;
}

// A virtual connection: numbered batches up, items down by stream or poll.
class Http {
  static async open(role, mode) {
    const h = new Http();
    h.cid = (await (await post(`/http/${role}`)).json()).connection;
    h.mode = mode; h.batch = 0; h.after = 0; h.queue = []; h.waiters = []; h.running = true;
    h.loop();
    return h;
  }
  async send(frames) {
    this.batch += 1;
    const res = await post('/http/send', { batch: this.batch, frames }, this.cid);
    if (res.status !== 200) throw new Error(`send ${res.status} ${await res.text()}`);
    await res.arrayBuffer();
  }
  take(item) {
    this.after = item.pos;
    const m = item.text !== undefined ? item.text : item.binary !== undefined ? Buffer.from(item.binary, 'base64') : null;
    if (m === null) return;
    const w = this.waiters.shift();
    if (w) w(m); else this.queue.push(m);
  }
  next() { return this.queue.length ? Promise.resolve(this.queue.shift()) : new Promise((r) => this.waiters.push(r)); }
  async loop() {
    while (this.running) {
      const res = await post('/http/receive', { after: this.after, mode: this.mode }, this.cid);
      if (res.status !== 200) return;
      if (this.mode === 'poll') {
        for (const item of await res.json()) this.take(item);
        continue;
      }
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, end); buf = buf.slice(end + 2);
          if (ev.startsWith('data: ')) this.take(JSON.parse(ev.slice(6)));
        }
      }
    }
  }
}

async function pair(kind) {
  const mac = await wsOpen('/mac');
  mac.send(JSON.stringify({ type: 'register' }));
  const { code } = await expectType(mac.next, 'registered');
  let browser;
  if (kind === 'websocket') {
    browser = await wsOpen('/browser');
    browser.send(JSON.stringify({ type: 'join', code }));
  } else {
    browser = await Http.open('browser', kind);
    await browser.send([{ text: JSON.stringify({ type: 'join', code }) }]);
  }
  await expectType(() => browser.next(), 'joined');
  await expectType(mac.next, 'peer_joined');
  return { mac, browser };
}

function frame(seq) {
  const b = Buffer.alloc(SIZE);
  b.writeDoubleLE(now(), 0);
  b.writeUInt32LE(seq, 8);
  return b;
}

function summary(lat, t0, t1) {
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  const secs = (t1 - t0) / 1000;
  return { frames_per_s: Math.round(lat.length / secs), mib_per_s: +((lat.length * SIZE) / secs / 1048576).toFixed(1), p50_ms: +q(0.5).toFixed(2), p99_ms: +q(0.99).toFixed(2) };
}

// Mac (WebSocket) to browser: as fast as the mac's socket takes them.
async function down(kind) {
  const { mac, browser } = await pair(kind);
  const lat = [];
  const t0 = now();
  const reading = (async () => {
    for (let i = 0; i < FRAMES; i++) {
      for (;;) {
        const m = await browser.next();
        if (typeof m !== 'string') { lat.push(now() - m.readDoubleLE(0)); break; }
      }
    }
  })();
  for (let i = 0; i < FRAMES; i++) {
    while (mac.bufferedAmount > 1 << 20) await new Promise((r) => setTimeout(r, 1));
    mac.send(frame(i));
  }
  await reading;
  const r = summary(lat, t0, now());
  mac.terminate(); if (browser.terminate) browser.terminate(); else browser.running = false;
  return r;
}

// Browser to mac (WebSocket): the HTTP browser sends batches of 32, one at a time.
async function up(kind) {
  const { mac, browser } = await pair(kind);
  const lat = [];
  const t0 = now();
  const reading = (async () => {
    for (let i = 0; i < FRAMES; i++) {
      for (;;) {
        const m = await mac.next();
        if (typeof m !== 'string') { lat.push(now() - m.readDoubleLE(0)); break; }
      }
    }
  })();
  if (kind === 'websocket') {
    for (let i = 0; i < FRAMES; i++) {
      while (browser.bufferedAmount > 1 << 20) await new Promise((r) => setTimeout(r, 1));
      browser.send(frame(i));
    }
  } else {
    for (let i = 0; i < FRAMES; i += 32) {
      const batch = [];
      for (let j = i; j < Math.min(FRAMES, i + 32); j++) batch.push({ binary: frame(j).toString('base64') });
      await browser.send(batch);
    }
  }
  await reading;
  const r = summary(lat, t0, now());
  mac.terminate(); if (browser.terminate) browser.terminate(); else browser.running = false;
  return r;
}

// Round trip, one frame at a time: the mac sends, the browser echoes it
// back; what a person typing sees, without the queueing of a burst.
async function rtt(kind) {
  const { mac, browser } = await pair(kind);
  const lat = [];
  const n = Math.min(1000, FRAMES);
  const t0 = now();
  for (let i = 0; i < n; i++) {
    mac.send(frame(i));
    let m;
    do m = await browser.next(); while (typeof m === 'string');
    if (kind === 'websocket') browser.send(m); else await browser.send([{ binary: m.toString('base64') }]);
    do m = await mac.next(); while (typeof m === 'string');
    lat.push(now() - m.readDoubleLE(0));
  }
  const r = summary(lat, t0, now());
  delete r.mib_per_s; r.round_trips_per_s = r.frames_per_s; delete r.frames_per_s;
  mac.terminate(); if (browser.terminate) browser.terminate(); else browser.running = false;
  return r;
}

// Memory per waiting client: registered macs, each with a long poll open
// (HTTP) or its socket (WebSocket), RSS before and after.
async function idle(kind) {
  global.gc?.();
  await new Promise((r) => setTimeout(r, 500));
  const before = rss();
  const held = [];
  for (let i = 0; i < IDLE; i += 100) {
    await Promise.all(Array.from({ length: Math.min(100, IDLE - i) }, async () => {
      if (kind === 'websocket') {
        const ws = await wsOpen('/mac');
        ws.send(JSON.stringify({ type: 'register' }));
        await expectType(ws.next, 'registered');
        held.push(ws);
      } else {
        const h = await Http.open('mac', kind);
        await h.send([{ text: JSON.stringify({ type: 'register' }) }]);
        await expectType(() => h.next(), 'registered');
        held.push(h);
      }
    }));
  }
  await new Promise((r) => setTimeout(r, 1500));
  const after = rss();
  for (const h of held) { if (h.terminate) h.terminate(); else h.running = false; }
  return { clients: IDLE, bytes_each: Math.round((after - before) / IDLE) };
}

const phase = process.env.PHASE;
if (phase === 'idle-websocket') {
  console.log(JSON.stringify(await idle('websocket')));
} else if (phase === 'idle-http') {
  console.log(JSON.stringify(await idle('poll')));
} else if (phase === 'idle-http-stream') {
  console.log(JSON.stringify(await idle('stream')));
} else {
  const out = { frames: FRAMES, size: SIZE, down: {}, up: {}, rtt: {} };
  for (const kind of ['websocket', 'stream', 'poll']) out.down[kind] = await down(kind);
  for (const kind of ['websocket', 'stream']) out.up[kind === 'stream' ? 'http' : kind] = await up(kind);
  for (const kind of ['websocket', 'stream', 'poll']) out.rtt[kind] = await rtt(kind);
  console.log(JSON.stringify(out, null, 1));
}
process.exit(0);
