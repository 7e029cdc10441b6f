// Unit tests of relay/static/client.js in Node, without a browser or a relay:
// the backoff schedule, the close-code table, and the client's state machine
// driven through a fake WebSocket and a fake clock.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { joined, setup } from './fakes.js';
import {
  State,
  backoffDelay,
  browserUrl,
  closeAction,
  codeProblem,
  normalizeCode,
} from '../../relay/static/client.js';

// ---- pure functions ----------------------------------------------------

test('the backoff doubles from 1 s to a 30 s cap, scaled 75-125 %', () => {
  const mid = [1, 2, 3, 4, 5, 6, 7, 8].map((a) => backoffDelay(a, {}, () => 0.5));
  assert.deepEqual(mid, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(1, {}, () => 0), 750);
  assert.equal(backoffDelay(1, {}, () => 1), 1250);
  assert.equal(backoffDelay(6, {}, () => 0), 22500);
  assert.equal(backoffDelay(6, {}, () => 1), 37500);
  assert.equal(backoffDelay(10_000, {}, () => 0.5), 30000);
  // With the real random source every delay stays in its band.
  for (let a = 1; a <= 10; a++) {
    const base = Math.min(30000, 1000 * 2 ** (a - 1));
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(a);
      assert.ok(d >= base * 0.75 && d <= base * 1.25, `attempt ${a}: ${d}`);
    }
  }
});

test('close codes decide reconnect or stop as in PROTOCOL.md', () => {
  for (const code of [1000, 1002, 1008, 1009, 4000, 4001]) assert.equal(closeAction(code), 'stop', String(code));
  for (const code of [1001, 1005, 1006, 1011, 1013]) assert.equal(closeAction(code), 'reconnect', String(code));
  assert.equal(closeAction(1012), 'now');
});

test('codes are normalised like the relay does, and obvious typos caught early', () => {
  assert.equal(normalizeCode(' h4f-7kn '), 'H4F7KN');
  assert.equal(normalizeCode('h4f 7kn'), 'H4F7KN');
  assert.equal(codeProblem('h4f-7kn'), '');
  assert.match(codeProblem(''), /Type the code/);
  assert.match(codeProblem('h4f7k'), /6 characters/);
  // 8 characters while the relay is under attack; 7 and 9 are no code.
  assert.equal(codeProblem('h4f7-kn3x'), '');
  assert.equal(normalizeCode('h4f7 kn3x'), 'H4F7KN3X');
  assert.match(codeProblem('h4f7kn3'), /has 7/);
  assert.match(codeProblem('h4f7kn3xy'), /has 9/);
  assert.equal(codeProblem('h4f7-kn3x-k7p3x'), '', '8 with the secret part');
  assert.match(codeProblem('h4f7k0'), /never contains 0/);
});

test('the WebSocket URL follows the page: ws for http, wss for https', () => {
  assert.equal(browserUrl({ href: 'http://relay.test:8080/' }), 'ws://relay.test:8080/browser');
  assert.equal(browserUrl({ href: 'https://relay.test/?x=1#y' }), 'wss://relay.test/browser');
  assert.equal(browserUrl({ href: 'https://relay.test/pair/' }), 'wss://relay.test/pair/browser');
});

// ---- state machine -----------------------------------------------------

test('join, exchange data, latency from ping/pong', () => {
  const t = setup();
  assert.equal(t.client.state, State.DISCONNECTED);
  t.client.join('h4f-7kn');
  assert.equal(t.client.state, State.CONNECTING);
  const ws = t.last();
  assert.equal(ws.url, 'ws://relay.test/browser');
  ws.open();
  ws.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok' });
  assert.equal(t.client.state, State.CONNECTED);
  assert.deepEqual(t.states, ['connecting', 'connected']);
  // A ping goes out at once; its pong gives the latency.
  const ping = ws.json().find((m) => m.type === 'ping');
  assert.equal(ping.ts, t.clock.now());
  t.clock.advance(42);
  ws.text({ type: 'pong', ts: ping.ts });
  assert.equal(t.client.latency, 42);

  t.client.send('hello');
  t.client.send(new Uint8Array([1, 2, 3]));
  assert.deepEqual(ws.data(), ['hello', [1, 2, 3]]);
  assert.equal(ws.sent.at(-2), '{"type":"data","payload":"hello"}');
  ws.text({ type: 'data', payload: 'from mac' });
  ws.binary([9, 8]);
  const data = t.events.filter(([n]) => n === 'data').map(([, d]) => d.text ?? [...d.bytes]);
  assert.deepEqual(data, ['from mac', [9, 8]]);
  assert.equal(t.client.received, 2);
  // Stored for a reload.
  assert.deepEqual(JSON.parse(t.storage.getItem('relay.session')), {
    sessionId: 's1',
    resumeToken: 'tok',
    received: 2,
    sent: 2,
  });
  // Pings repeat.
  t.clock.advance(5000);
  assert.equal(ws.json().filter((m) => m.type === 'ping').length, 2);
});

test('a drop reconnects with backoff, resumes, re-sends what the relay lacks, then the queue', () => {
  const t = setup();
  const ws1 = joined(t);
  t.client.send('a');
  t.client.send('b');
  t.client.send('c');
  ws1.text({ type: 'data', payload: 'm1' });
  ws1.drop(1006);
  assert.equal(t.client.state, State.RECONNECTING);
  assert.equal(t.client.attempt, 1);
  // Sent while away: queued.
  t.client.send('d');
  assert.equal(t.client.snapshot().queued, 1);
  // The first retry comes after 1 s (random 0.5 → exactly the base).
  t.clock.advance(999);
  assert.equal(t.made.length, 1);
  t.clock.advance(1);
  assert.equal(t.made.length, 2);
  const ws2 = t.last();
  // It fails too: the next waits 2 s.
  ws2.drop(1006);
  assert.equal(t.client.attempt, 2);
  t.clock.advance(1999);
  assert.equal(t.made.length, 2);
  t.clock.advance(1);
  const ws3 = t.last();
  ws3.open();
  assert.deepEqual(ws3.json()[0], { type: 'resume', sessionId: 's1', resumeToken: 'tok', lastSeq: 1 });
  // The relay got only 'a': 'b' and 'c' go again, before 'd'.
  ws3.text({ type: 'resumed', sessionId: 's1', lastSeq: 1 });
  assert.equal(t.client.state, State.CONNECTED);
  assert.equal(t.client.attempt, 0, 'attempts reset on success');
  assert.deepEqual(ws3.data(), ['b', 'c', 'd']);
  assert.equal(t.client.sent, 4);
  const resumed = t.events.find(([n]) => n === 'resumed')[1];
  assert.deepEqual(resumed, { lastSeq: 1, resent: 2, lost: 0 });
  // A later resume that shows everything accepted re-sends nothing.
  ws3.drop(1001);
  t.clock.advance(1000);
  const ws4 = t.last();
  ws4.open();
  ws4.text({ type: 'resumed', sessionId: 's1', lastSeq: 4 });
  assert.deepEqual(ws4.data(), []);
  assert.deepEqual(t.states, [
    'connecting',
    'connected',
    'reconnecting',
    'reconnecting',
    'connected',
    'reconnecting',
    'connected',
  ]);
});

test('1012 (drain) reconnects at once with a little jitter; SHUTTING_DOWN on resume keeps trying', () => {
  const t = setup({ random: () => 0.2 });
  const ws1 = joined(t);
  ws1.text({ type: 'error', code: 'SHUTTING_DOWN', message: 'draining' });
  ws1.drop(1012);
  assert.equal(t.client.state, State.RECONNECTING);
  t.clock.advance(100); // 0.2 × 500 ms
  const ws2 = t.last();
  assert.notEqual(ws2, ws1);
  ws2.open();
  // This node drains too: the next try backs off instead of hammering.
  ws2.text({ type: 'error', code: 'SHUTTING_DOWN', message: 'draining' });
  ws2.drop(1012);
  assert.equal(t.client.attempt, 2);
  const before = t.made.length;
  t.clock.advance(2000 * 0.85 - 1);
  assert.equal(t.made.length, before);
  t.clock.advance(1);
  assert.equal(t.made.length, before + 1);
});

test('UNAVAILABLE answering a resume keeps reconnecting', () => {
  const t = setup();
  const ws1 = joined(t);
  ws1.drop(1006);
  t.clock.advance(1000);
  const ws2 = t.last();
  ws2.open();
  ws2.text({ type: 'error', code: 'UNAVAILABLE', message: 'redis down' });
  assert.equal(ws2.closedWith, 'none', 'closed without 1000 so the session is kept');
  assert.equal(t.client.state, State.RECONNECTING);
  t.clock.advance(2000);
  const ws3 = t.last();
  ws3.open();
  ws3.text({ type: 'resumed', sessionId: 's1', lastSeq: 0 });
  assert.equal(t.client.state, State.CONNECTED);
});

for (const code of ['RESUME_EXPIRED', 'INVALID_RESUME', 'MAC_DISCONNECTED']) {
  test(`${code} answering a resume ends the session`, () => {
    const t = setup();
    const ws1 = joined(t);
    ws1.drop(1006);
    t.clock.advance(1000);
    const ws2 = t.last();
    ws2.open();
    ws2.text({ type: 'error', code, message: 'why' });
    assert.equal(t.client.state, State.DISCONNECTED);
    assert.equal(t.client.ended.code, code);
    assert.equal(t.storage.getItem('relay.session'), null, 'forgotten');
    assert.throws(() => t.client.send('x'), { code: 'SESSION_OVER' });
    t.clock.advance(120_000);
    assert.equal(t.last(), ws2, 'no more attempts');
  });
}

test('MAC_DISCONNECTED then close 1000: session over, no reconnect', () => {
  const t = setup();
  const ws = joined(t);
  ws.text({ type: 'error', code: 'MAC_DISCONNECTED', message: 'The Mac left.' });
  ws.drop(1000);
  assert.equal(t.client.state, State.DISCONNECTED);
  assert.deepEqual(
    t.events.filter(([n]) => n === 'ended').map(([, e]) => e.code),
    ['MAC_DISCONNECTED'],
  );
  t.clock.advance(120_000);
  assert.equal(t.made.length, 1);
});

for (const [code, expect] of [
  [1000, 'CLOSED_1000'],
  [1008, 'CLOSED_1008'],
  [1009, 'MESSAGE_TOO_LARGE'],
  [4000, 'CLOSED_4000'],
  [4001, 'CLOSED_4001'],
]) {
  test(`close ${code} stops (${expect})`, () => {
    const t = setup();
    const ws = joined(t);
    if (code === 1009) ws.text({ type: 'error', code: 'MESSAGE_TOO_LARGE', message: 'too big' });
    ws.drop(code);
    assert.equal(t.client.state, State.DISCONNECTED);
    assert.equal(t.client.ended.code, expect);
    t.clock.advance(120_000);
    assert.equal(t.made.length, 1);
  });
}

for (const code of [1001, 1011, 1013]) {
  test(`close ${code} reconnects with backoff`, () => {
    const t = setup();
    joined(t).drop(code);
    assert.equal(t.client.state, State.RECONNECTING);
    t.clock.advance(999);
    assert.equal(t.made.length, 1);
    t.clock.advance(1);
    assert.equal(t.made.length, 2);
  });
}

test('a refused join stops and says why; the code can be typed again', () => {
  const t = setup();
  t.client.join('h4f7kn');
  const ws = t.last();
  ws.open();
  ws.text({ type: 'error', code: 'INVALID_CODE', message: 'No session has this code.' });
  assert.equal(t.client.state, State.DISCONNECTED);
  const err = t.events.find(([n]) => n === 'error')[1];
  assert.equal(err.code, 'INVALID_CODE');
  assert.equal(err.fatal, true);
  t.clock.advance(60_000);
  assert.equal(t.made.length, 1);
  joined(t, 'h4f7kp');
  assert.equal(t.client.state, State.CONNECTED);
});

test('the connect timeout (10 s) abandons an attempt and retries', () => {
  const t = setup();
  t.client.join('h4f7kn');
  const ws1 = t.last(); // never opens
  t.clock.advance(9999);
  assert.equal(t.client.state, State.CONNECTING);
  t.clock.advance(1);
  assert.equal(ws1.closedWith, 'none');
  assert.equal(t.client.state, State.RECONNECTING);
  assert.equal(t.events.find(([n]) => n === 'error')[1].code, 'CONNECT_TIMEOUT');
  t.clock.advance(1000);
  const ws2 = t.last();
  ws2.open();
  // The join is tried again with the same code.
  assert.deepEqual(ws2.json()[0], { type: 'join', code: 'H4F7KN' });
});

test('a capped client gives up, and a manual reconnect starts again', () => {
  const t = setup({ maxRetries: 2 });
  joined(t).drop(1006);
  t.clock.advance(1000);
  t.last().drop(1006);
  t.clock.advance(2000);
  t.last().drop(1006);
  assert.equal(t.client.state, State.DISCONNECTED);
  assert.equal(t.client.gaveUp, true);
  assert.deepEqual(t.events.find(([n]) => n === 'gaveup')[1], { attempts: 2 });
  t.clock.advance(120_000);
  assert.equal(t.made.length, 3);
  // Still queues (the session is not over) and the Retry button works.
  t.client.send('kept');
  assert.equal(t.client.reconnect(), true);
  assert.equal(t.client.state, State.RECONNECTING);
  const ws = t.last();
  assert.equal(t.made.length, 4);
  ws.open();
  ws.text({ type: 'resumed', sessionId: 's1', lastSeq: 0 });
  assert.deepEqual(ws.data(), ['kept']);
  assert.equal(t.client.gaveUp, false);
});

test('manual reconnect drops a live connection and resumes at once', () => {
  const t = setup();
  const ws1 = joined(t);
  t.client.reconnect();
  assert.equal(ws1.closedWith, 'none');
  assert.equal(t.made.length, 2);
  t.last().open();
  assert.equal(t.last().json()[0].type, 'resume');
});

test('the queue is bounded and says so when full', () => {
  const t = setup({ queueFrames: 2 });
  joined(t).drop(1006);
  t.client.send('1');
  t.client.send('2');
  assert.throws(() => t.client.send('3'), (e) => e.code === 'QUEUE_FULL' && /queue is full/.test(e.message));
  assert.throws(() => t.client.send('x'.repeat(2 << 20)), { code: 'MESSAGE_TOO_LARGE' });
});

test('frames kept to re-send are bounded; what fell out is reported as lost', () => {
  const frame = '{"type":"data","payload":"1"}';
  const t = setup({ keepBytes: 3 * (64 + frame.length) });
  const ws1 = joined(t);
  for (let i = 1; i <= 5; i++) t.client.send(String(i));
  assert.equal(t.client.snapshot().kept, 3);
  ws1.drop(1006);
  t.clock.advance(1000);
  const ws2 = t.last();
  ws2.open();
  ws2.text({ type: 'resumed', sessionId: 's1', lastSeq: 1 });
  // 2 fell out of the buffer; 3, 4, 5 are sent again.
  assert.deepEqual(ws2.data(), ['3', '4', '5']);
  assert.deepEqual(t.events.find(([n]) => n === 'lost'), ['lost', 1]);
  assert.equal(t.client.sent, 4);
});

test('a reload resumes from sessionStorage with the received count', () => {
  const t = setup();
  const ws1 = joined(t);
  ws1.text({ type: 'data', payload: 'x' });
  ws1.text({ type: 'data', payload: 'y' });
  const again = setup({ storage: t.storage });
  assert.equal(again.client.resume(), true);
  const ws = again.last();
  ws.open();
  assert.deepEqual(ws.json()[0], { type: 'resume', sessionId: 's1', resumeToken: 'tok', lastSeq: 2 });
  assert.equal(setup().client.resume(), false, 'nothing stored, nothing to resume');
});

test('peer events and a silent relay (no pong) is dropped and retried', () => {
  const t = setup();
  const ws = joined(t);
  ws.text({ type: 'peer_disconnected' });
  assert.equal(t.client.peerPresent, false);
  ws.text({ type: 'peer_resumed' });
  assert.equal(t.client.peerPresent, true);
  assert.deepEqual(
    t.events.filter(([n]) => n === 'peer').map(([, p]) => p.present),
    [false, true],
  );
  // No pong ever: after the pong timeout the connection counts as dead.
  t.clock.advance(20_000);
  assert.equal(ws.closedWith, 'none');
  assert.equal(t.client.state, State.RECONNECTING);
});

test('leave sends leave, closes with 1000 and ends the session', () => {
  const t = setup();
  const ws = joined(t);
  t.client.leave();
  assert.equal(ws.json().at(-1).type, 'leave');
  assert.equal(ws.closedWith, 1000);
  assert.equal(t.client.ended.code, 'LEFT');
  assert.equal(t.storage.getItem('relay.session'), null);
});

test('"try now" while reconnecting is one more attempt: the count goes on', () => {
  const t = setup();
  const attempts = [];
  t.client.on('attempt', (a) => attempts.push(a));
  joined(t).drop(1006);
  t.clock.advance(1000); // attempt 1 starts
  t.last().drop(1006); // and fails: attempt 2 waits 2 s
  assert.equal(t.client.attempt, 2);
  assert.equal(t.client.reconnect(), true);
  assert.equal(t.client.attempt, 2, 'not reset by the manual try');
  t.last().drop(1006);
  assert.equal(t.client.attempt, 3);
  assert.equal(t.client.state, State.RECONNECTING);
  assert.deepEqual(attempts, [
    { attempt: 1, manual: false },
    { attempt: 2, manual: true },
  ]);
  // Only one attempt at a time: the manual try cancelled the scheduled one.
  assert.equal(t.made.length, 3);
  t.clock.advance(4 * 1000);
  assert.equal(t.made.length, 4);
});

test('a ping unanswered for pongLate makes the latency stale; the next pong ends it', () => {
  const t = setup();
  const stale = [];
  t.client.on('stale', (s) => stale.push(s));
  const ws = joined(t);
  const ping = ws.json().find((m) => m.type === 'ping');
  ws.text({ type: 'pong', ts: ping.ts });
  assert.equal(t.client.latencyStale, false);
  t.clock.advance(5000); // the next ping goes out and is not answered
  const second = ws.json().filter((m) => m.type === 'ping')[1];
  assert.ok(second);
  t.clock.advance(1999);
  assert.deepEqual(stale, []);
  t.clock.advance(1);
  assert.deepEqual(stale, [{ since: second.ts }]);
  assert.equal(t.client.latencyStale, true);
  ws.text({ type: 'pong', ts: second.ts });
  assert.equal(t.client.latencyStale, false);
  assert.equal(t.events.filter(([n]) => n === 'latency').length, 2);
});

test('the end says whether the Mac was away and how many queued frames were never sent', () => {
  const t = setup();
  const ws = joined(t);
  ws.text({ type: 'peer_disconnected' });
  ws.drop(1006);
  t.client.send('a');
  t.client.send('b');
  t.clock.advance(1000);
  const ws2 = t.last();
  ws2.open();
  ws2.text({ type: 'error', code: 'MAC_DISCONNECTED', message: 'The Mac ended the session.' });
  const [, ended] = t.events.find(([n]) => n === 'ended');
  assert.equal(ended.code, 'MAC_DISCONNECTED');
  assert.equal(ended.peerAway, true);
  assert.equal(ended.unsent, 2);

  const u = setup();
  const w = joined(u);
  w.text({ type: 'error', code: 'MAC_DISCONNECTED', message: 'The Mac ended the session.' });
  assert.equal(u.events.find(([n]) => n === 'ended')[1].peerAway, false);
});
