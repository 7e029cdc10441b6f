// Unit tests of relay/static/transport.js in Node: reading a receive stream,
// items both ways, and a virtual connection's uplink and downlink driven by
// a scripted fetch (what the relay answers is PROTOCOL.md's "HTTP
// transport"). The real relay and proxies are in http-fallback.test.js and
// tests/http_clients.rs.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { HttpSocket, SseReader, TRANSPORT_DEFAULTS, Transports, httpBase, parseInterval, toItem } from '../../relay/static/transport.js';

test('a stream is read across chunks and every kind of line end', () => {
  const got = [];
  const sse = new SseReader(() => got.push('open'), (d) => got.push(d));
  const stream = ': open\r\n\r\ndata: {"text":"a","pos":1}\r\n\r\n: keep\n\ndata: x\ndata: y\r\rdata:z\n\n';
  for (const ch of stream) sse.feed(ch);
  assert.deepEqual(got, ['open', '{"text":"a","pos":1}', 'x\ny', 'z']);
  const whole = [];
  new SseReader(() => whole.push('open'), (d) => whole.push(d)).feed(stream);
  assert.deepEqual(whole, got);
});

test('the HTTP base is the WebSocket endpoint without its role', () => {
  assert.equal(httpBase('ws://127.0.0.1:8080/browser'), 'http://127.0.0.1:8080/');
  assert.equal(httpBase('wss://example.com/relay/browser'), 'https://example.com/relay/');
});

test('frames go up as items that keep every byte', () => {
  const text = '{"type":"data","payload":"a\\r\\nb é \\"q\\""}';
  assert.deepEqual(JSON.parse(toItem(text)), { text });
  const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
  const b64 = JSON.parse(toItem(bytes)).binary;
  assert.deepEqual(Uint8Array.from(Buffer.from(b64, 'base64')), bytes);
  assert.equal(JSON.parse(toItem(bytes.buffer)).binary, b64);
});

/**
 * A scripted relay: `answer(path, body)` returns [status, json, headers];
 * every request is recorded. Timers run at once (retries do not wait).
 */
function socketWith(answer) {
  const requests = [];
  const fetch = async (url, init) => {
    const path = new URL(url).pathname;
    const body = init.body ? JSON.parse(init.body || 'null') : null;
    requests.push({ path, body, cid: init.headers['Relay-Connection'] });
    const [status, json, headers = {}] = await answer(path, body, requests.length);
    return new Response(JSON.stringify(json), { status, headers });
  };
  const env = {
    base: 'http://relay.test/',
    fetch,
    setTimeout: (fn) => setTimeout(fn, 0),
    clearTimeout: (id) => clearTimeout(id),
    fallbackAfter: 1000,
    shared: { buffered: true },
  };
  const s = new HttpSocket(env);
  const events = [];
  s.onopen = () => events.push('open');
  s.onmessage = (ev) => events.push(typeof ev.data === 'string' ? ev.data : new Uint8Array(ev.data));
  s.onclose = (ev) => events.push({ close: ev.code, reason: ev.reason });
  return { s, requests, events };
}

const until = async (check, what) => {
  for (let i = 0; i < 500; i += 1) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`never ${what}`);
};

test('a lost answer sends the same batch again, and a poll delivers items once, in order', async () => {
  let sends = 0;
  let polls = 0;
  const { s, requests, events } = socketWith(async (path, body) => {
    if (path === '/http/browser') return [200, { connection: 'cid-1' }];
    if (path === '/http/send') {
      sends += 1;
      // The first answer is lost on the way.
      return sends === 1 ? [502, { error: 'bad gateway' }] : [200, { batch: body.batch }];
    }
    polls += 1;
    if (polls === 1) return [200, [{ text: 'a', pos: 1 }, { binary: 'AAH/', pos: 2 }]];
    // The same items again (a retry), then a new one and the close.
    if (polls === 2) return [200, [{ text: 'a', pos: 1 }, { binary: 'AAH/', pos: 2 }, { text: 'b', pos: 3 }]];
    // The close once the batch was taken (an empty poll meanwhile).
    if (sends < 2) {
      await new Promise((r) => setTimeout(r, 1)); // a relay's wait, shortened
      return [200, []];
    }
    return [200, [{ close: 1000, reason: 'over', pos: 4 }]];
  });
  await until(() => events.includes('open'), 'open');
  s.send('{"type":"join","code":"H4F7KN"}');
  await until(() => events.some((e) => e?.close), 'closed');
  const batches = requests.filter((r) => r.path === '/http/send').map((r) => r.body.batch);
  assert.deepEqual(batches, [1, 1], 'the retry kept its number');
  assert.ok(requests.filter((r) => r.path !== '/http/browser').every((r) => r.cid === 'cid-1'));
  const afters = requests.filter((r) => r.path === '/http/receive').map((r) => r.body.after);
  assert.deepEqual(afters.slice(0, 3), [0, 2, 3]);
  assert.equal(afters.at(-1), 3);
  assert.deepEqual(events, ['open', 'a', new Uint8Array([0, 1, 255]), 'b', { close: 1000, reason: 'over' }]);
});

test('a 410 closes with its code, and a gap in positions drops the connection', async () => {
  const gone = socketWith(async (path) => {
    if (path === '/http/browser') return [200, { connection: 'c' }];
    return [410, { error: 'replaced', close: 4001, reason: 'replaced' }];
  });
  await until(() => gone.events.some((e) => e?.close), 'closed');
  assert.deepEqual(gone.events.at(-1), { close: 4001, reason: 'replaced' });

  const gap = socketWith(async (path) => {
    if (path === '/http/browser') return [200, { connection: 'c' }];
    return [200, [{ text: 'a', pos: 1 }, { text: 'c', pos: 3 }]];
  });
  await until(() => gap.events.some((e) => e?.close), 'closed');
  assert.deepEqual(gap.events, ['open', 'a', { close: 1006, reason: '' }]);
});

test('a relay that does not open the connection is a dropped attempt, or a stop when it says a close code', async () => {
  const { events } = socketWith(async () => [404, { error: 'not found' }]);
  await until(() => events.length > 0, 'closed');
  assert.deepEqual(events, [{ close: 1006, reason: '' }]);
  // An origin the relay refuses: 403 with close 1008, which stops a client.
  const origin = socketWith(async () => [403, { error: 'origin not allowed', close: 1008 }]);
  await until(() => origin.events.length > 0, 'closed');
  assert.deepEqual(origin.events, [{ close: 1008, reason: 'origin not allowed' }]);
});

/** A WebSocket the test opens and closes by hand. */
class FakeWebSocket {
  static made = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.made.push(this);
  }
  send(d) {
    this.sent.push(d);
  }
  close() {
    this.closed = true;
  }
}

/** A relay's HTTP side that opens connections, takes batches and polls empty. */
function relayFetch(log) {
  return async (url, init) => {
    const path = new URL(url).pathname;
    const body = init.body ? JSON.parse(init.body) : null;
    log.push({ path, body });
    if (path === '/http/browser') return new Response('{"connection":"c"}', { status: 200 });
    if (path === '/http/send') return new Response(JSON.stringify({ batch: body.batch }), { status: 200 });
    await new Promise((r) => setTimeout(r, 5));
    return new Response('[]', { status: 200 });
  };
}

function transports(log, better) {
  FakeWebSocket.made = [];
  const changes = [];
  const t = new Transports(
    { url: 'ws://relay.test/browser', NativeWebSocket: FakeWebSocket, fetch: relayFetch(log), fallbackAfter: 30, websocketRetry: 30 },
    (c) => changes.push(c.transport),
    better,
  );
  t.shared.buffered = true; // poll: the scripted relay has no stream
  return { t, changes };
}

test('auto falls back when the upgrade is refused, and a probe that opens takes the session back', async () => {
  const log = [];
  let offered = 0;
  const { t, changes } = transports(log, () => {
    offered += 1;
    return true;
  });
  const s = new t.Socket('ws://relay.test/browser');
  const events = [];
  s.onopen = () => events.push('open');
  // The proxy refuses the upgrade: the browser reports a close 1006.
  FakeWebSocket.made[0].onclose({ code: 1006 });
  await until(() => events.includes('open'), 'open over HTTP');
  assert.deepEqual(changes, ['http']);
  s.send('{"type":"join","code":"H4F7KN"}');
  await until(() => log.some((r) => r.path === '/http/send'), 'a batch');
  assert.deepEqual(log.find((r) => r.path === '/http/send').body.frames, [{ text: '{"type":"join","code":"H4F7KN"}' }]);
  // A probe opens: the client is offered the WebSocket and opens its next socket on it.
  await until(() => FakeWebSocket.made.length === 2, 'a probe');
  const probe = FakeWebSocket.made[1];
  probe.onopen();
  assert.equal(offered, 1);
  s.close();
  const next = new t.Socket('ws://relay.test/browser');
  assert.equal(next, probe);
  let opened = false;
  next.onopen = () => (opened = true);
  await until(() => opened, 'the open of the adopted WebSocket');
  assert.deepEqual(changes, ['http', 'websocket']);
});

test('a WebSocket that stays silent falls back, and what was written goes again over HTTP', async () => {
  const log = [];
  const { t, changes } = transports(log, () => false);
  const s = new t.Socket('ws://relay.test/browser');
  const ws = FakeWebSocket.made[0];
  const events = [];
  s.onopen = () => events.push('open');
  ws.onopen();
  assert.deepEqual(events, ['open']);
  s.send('{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":3}');
  assert.equal(ws.sent.length, 1);
  // Nothing comes back: HTTP takes over without a second open.
  await until(() => log.some((r) => r.path === '/http/send'), 'the frame again over HTTP');
  assert.ok(ws.closed);
  assert.deepEqual(changes, ['http']);
  assert.deepEqual(events, ['open']);
  assert.equal(log.find((r) => r.path === '/http/send').body.frames[0].text, ws.sent[0]);
  s.close();
});

test('websocket mode never falls back; http mode never tries the WebSocket', async () => {
  FakeWebSocket.made = [];
  const ws = new Transports({ url: 'ws://relay.test/browser', NativeWebSocket: FakeWebSocket, transport: 'websocket' });
  assert.ok(new ws.Socket('ws://relay.test/browser') instanceof FakeWebSocket);
  const log = [];
  const changes = [];
  const only = new Transports(
    { url: 'ws://relay.test/browser', NativeWebSocket: FakeWebSocket, fetch: relayFetch(log), transport: 'http' },
    (c) => changes.push(c.transport),
  );
  only.shared.buffered = true;
  const s = new only.Socket('ws://relay.test/browser');
  let open = false;
  s.onopen = () => (open = true);
  await until(() => open, 'open over HTTP');
  assert.equal(FakeWebSocket.made.length, 1, 'only the websocket-mode socket');
  assert.deepEqual(changes, ['http']);
  s.close();
});

/**
 * Auto transports whose WebSocket is refused, on the HTTP fallback, with
 * `websocketRetry` as given. Timers of a second or more are held (the
 * test runs them), shorter ones run; `delays` has every timer's ms.
 */
async function onFallback(websocketRetry) {
  FakeWebSocket.made = [];
  const delays = [];
  const held = [];
  const log = [];
  const changes = [];
  const t = new Transports(
    {
      url: 'ws://relay.test/browser',
      NativeWebSocket: FakeWebSocket,
      fetch: relayFetch(log),
      fallbackAfter: 30,
      websocketRetry,
      setTimeout: (fn, ms) => {
        delays.push(ms);
        if (ms >= 1000) return held.push({ fn, ms });
        return setTimeout(fn, ms);
      },
      clearTimeout: (id) => clearTimeout(id),
    },
    (c) => changes.push(c.transport),
    () => false,
  );
  t.shared.buffered = true;
  const s = new t.Socket('ws://relay.test/browser');
  FakeWebSocket.made[0].onclose({ code: 1006 });
  await until(() => changes.includes('http'), 'the fallback');
  return { t, s, delays, held, log };
}

test('how often the fallback tries the WebSocket again is an option; 0 never tries, a bad value is the default', async () => {
  const every = await onFallback(15_000);
  assert.deepEqual(every.delays.filter((ms) => ms === 15_000), [15_000]);
  // The probe runs when its time comes, is refused, and the next waits as long.
  every.held.find((h) => h.ms === 15_000).fn();
  assert.equal(FakeWebSocket.made.length, 2, 'a probe');
  FakeWebSocket.made[1].onclose({ code: 1006 });
  assert.deepEqual(every.delays.filter((ms) => ms === 15_000), [15_000, 15_000]);
  every.s.close();

  const never = await onFallback(0);
  assert.equal(never.t.websocketRetry, 0);
  // A few polls later still no probe, and none waiting.
  const polls = () => never.log.filter((r) => r.path === '/http/receive').length;
  await until(() => polls() >= 3, 'polls');
  assert.equal(FakeWebSocket.made.length, 1, 'no probe');
  assert.ok(!never.delays.includes(0), 'no probe timer');
  never.s.close();

  for (const bad of [-1, 1.5, Number.NaN, '15000', null]) {
    const t = new Transports({ url: 'ws://relay.test/browser', websocketRetry: bad });
    assert.equal(t.websocketRetry, TRANSPORT_DEFAULTS.websocketRetry, String(bad));
  }
  assert.equal(new Transports({ url: 'ws://relay.test/browser' }).websocketRetry, 60_000);
});

test('a retry interval is read as a person writes it', () => {
  assert.equal(parseInterval('30'), 30_000);
  assert.equal(parseInterval('30s'), 30_000);
  assert.equal(parseInterval(' 2m '), 120_000);
  assert.equal(parseInterval('500ms'), 500);
  assert.equal(parseInterval('0'), 0);
  for (const bad of ['', null, undefined, 'abc', '-5', '1.5s', '5h', '30 seconds']) {
    assert.equal(parseInterval(bad), undefined, String(bad));
  }
});
