// Unit tests of relay/static/client.js as a guest of a room (PROTOCOL.md
// "Rooms"), in Node with the fake WebSocket and clock of fakes.js: the name
// in the join, waiting for the host, the guest id, and the ends a guest
// must never retry on its own (DENIED, REMOVED, ROOM_FULL).

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { joined, setup } from './fakes.js';
import { NAME_MAX, State } from '../../relay/static/client.js';

/** Joins with `name`, opens, and answers `waiting` for guest `guestId`; returns the socket. */
function waiting(t, { name = 'Ana', guestId = 3, code = 'h4f-7kn' } = {}) {
  t.client.join(code, { name });
  const ws = t.last();
  ws.open();
  ws.text({ type: 'waiting', guestId });
  return ws;
}

const ended = (t) => t.events.filter(([n]) => n === 'ended').map(([, e]) => e);

test('a guest joins with its name, waits for the host without a connect timeout, then is in with its guestId', () => {
  const t = setup();
  t.client.join('h4f-7kn', { name: '  Ana  ' });
  const ws = t.last();
  ws.open();
  assert.deepEqual(ws.json()[0], { type: 'join', code: 'H4F7KN', name: 'Ana' });
  ws.text({ type: 'waiting', guestId: 3 });
  assert.equal(t.client.state, State.WAITING);
  assert.equal(t.client.guestId, 3);
  assert.deepEqual(t.events.filter(([n]) => n === 'waiting'), [['waiting', { guestId: 3 }]]);
  // What is sent meanwhile waits: a waiting guest's data would be refused.
  t.client.send('early');
  assert.deepEqual(ws.data(), []);
  // The host takes its time: far past the 10 s connect timeout, still waiting,
  // and pings keep the connection checked.
  for (let i = 0; i < 12; i++) {
    t.clock.advance(5000);
    const ping = ws.json().filter((m) => m.type === 'ping').at(-1);
    ws.text({ type: 'pong', ts: ping.ts });
  }
  assert.equal(t.client.state, State.WAITING);
  assert.equal(t.made.length, 1);
  assert.equal(ws.closedWith, undefined);

  ws.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok', guestId: 3 });
  assert.equal(t.client.state, State.CONNECTED);
  assert.deepEqual(t.events.find(([n]) => n === 'joined')[1], { sessionId: 's1', guestId: 3 });
  assert.deepEqual(ws.data(), ['early']);
  assert.equal(t.client.snapshot().guestId, 3);
  assert.deepEqual(t.states, ['connecting', 'waiting', 'connected']);
});

test('a join without a name is the pairing\'s, and a pairing has no guestId', () => {
  const t = setup();
  for (const options of [undefined, null, {}, { name: null }, { name: '' }, { name: '   ' }]) {
    t.client.join('h4f7kn', options);
    t.last().open();
    assert.deepEqual(t.last().json()[0], { type: 'join', code: 'H4F7KN' });
  }
  const u = setup();
  joined(u);
  assert.equal(u.client.guestId, null);
  assert.deepEqual(u.events.find(([n]) => n === 'joined')[1], { sessionId: 's1', guestId: null });
  assert.deepEqual(Object.keys(JSON.parse(u.storage.getItem('relay.session'))), ['sessionId', 'resumeToken', 'received', 'sent']);
});

test('a name longer than the relay takes is refused before anything is sent', () => {
  const t = setup();
  assert.throws(() => t.client.join('h4f7kn', { name: 'é'.repeat(NAME_MAX + 1) }),
    (e) => e.code === 'NAME_TOO_LONG' && /at most 64 characters; this one has 65/.test(e.message));
  assert.equal(t.made.length, 0);
  assert.equal(t.client.state, State.DISCONNECTED);
  // Counted in characters, as the relay counts: 64 emoji are fine.
  t.client.join('h4f7kn', { name: '🙂'.repeat(NAME_MAX) });
  t.last().open();
  assert.equal(t.last().json()[0].name, '🙂'.repeat(NAME_MAX));
});

test('DENIED while waiting ends the session with what to join again with; never retried', () => {
  const t = setup();
  const ws = waiting(t);
  t.client.send('queued');
  ws.text({ type: 'error', code: 'DENIED', message: 'The host did not let you in.' });
  ws.drop(1000);
  assert.equal(t.client.state, State.DISCONNECTED);
  assert.deepEqual(ended(t), [{
    code: 'DENIED', message: 'The host did not let you in.', closeCode: undefined,
    peerAway: false, unsent: 1, join: 'H4F7KN', name: 'Ana',
  }]);
  assert.equal(t.client.reconnect(), false);
  t.clock.advance(600_000);
  assert.equal(t.made.length, 1, 'no new attempt');
  assert.throws(() => t.client.send('x'), { code: 'SESSION_OVER' });
  // The person may ask again.
  waiting(t, { guestId: 4 });
  assert.equal(t.client.state, State.WAITING);
  assert.equal(t.client.guestId, 4);
});

test('ROOM_FULL ends the join: the client closes the connection the relay keeps, and does not retry', () => {
  const t = setup();
  t.client.join('h4f7kn', { name: 'Cy' });
  const ws = t.last();
  ws.open();
  ws.text({ type: 'error', code: 'ROOM_FULL', message: 'This session is full.' });
  assert.equal(ws.closedWith, 'none');
  assert.equal(t.client.state, State.DISCONNECTED);
  const [e] = ended(t);
  assert.equal(e.code, 'ROOM_FULL');
  assert.equal(e.join, 'H4F7KN');
  assert.equal(e.name, 'Cy');
  assert.equal(t.events.filter(([n]) => n === 'error').length, 0, 'an end, not a refused code');
  t.clock.advance(600_000);
  assert.equal(t.made.length, 1);
  // Tried again by the person, with the same code and name: in.
  t.client.join(e.join, { name: e.name });
  const ws2 = t.last();
  ws2.open();
  assert.deepEqual(ws2.json()[0], { type: 'join', code: 'H4F7KN', name: 'Cy' });
  ws2.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok', guestId: 2 });
  assert.equal(t.client.state, State.CONNECTED);
});

test('REMOVED in the room ends the session, whatever the close code after it', () => {
  const t = setup();
  const ws = waiting(t);
  ws.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok', guestId: 3 });
  ws.text({ type: 'data', payload: 'm1' });
  ws.text({ type: 'error', code: 'REMOVED', message: 'The host removed you from this session.' });
  assert.equal(t.client.state, State.DISCONNECTED);
  const [e] = ended(t);
  assert.equal(e.code, 'REMOVED');
  assert.equal(e.join, undefined, 'it was in: nothing to join again with');
  assert.equal(t.storage.getItem('relay.session'), null, 'the token is forgotten');
  ws.drop(1006); // the drop after it changes nothing
  t.clock.advance(600_000);
  assert.equal(t.made.length, 1);
});

test('REMOVED answering a resume ends the session instead of retrying', () => {
  const t = setup();
  const ws = waiting(t);
  ws.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok', guestId: 3 });
  ws.drop(1006);
  t.clock.advance(1000);
  const ws2 = t.last();
  ws2.open();
  assert.deepEqual(ws2.json()[0], { type: 'resume', sessionId: 's1', resumeToken: 'tok', lastSeq: 0 });
  ws2.text({ type: 'error', code: 'REMOVED', message: 'The host removed you from this session.' });
  assert.equal(t.client.ended.code, 'REMOVED');
  t.clock.advance(600_000);
  assert.equal(t.made.length, 2);
});

test('a waiting guest removed, or whose host left, ends; one whose connection drops asks again', () => {
  for (const code of ['REMOVED', 'MAC_DISCONNECTED']) {
    const t = setup();
    waiting(t).text({ type: 'error', code, message: 'why' });
    assert.equal(t.client.ended.code, code);
    assert.equal(ended(t)[0].join, 'H4F7KN');
  }
  // A waiting guest has no token: after a drop it joins again with its code and name.
  const t = setup();
  waiting(t).drop(1006);
  assert.equal(t.client.state, State.RECONNECTING);
  t.clock.advance(1000);
  const ws2 = t.last();
  ws2.open();
  assert.deepEqual(ws2.json()[0], { type: 'join', code: 'H4F7KN', name: 'Ana' });
  ws2.text({ type: 'waiting', guestId: 5 });
  assert.equal(t.client.state, State.WAITING);
  assert.equal(t.client.guestId, 5);
});

test('a waiting guest that leaves says so; a silent relay while waiting is noticed', () => {
  const t = setup();
  const ws = waiting(t);
  t.client.leave();
  assert.equal(ws.json().at(-1).type, 'leave');
  assert.equal(ws.closedWith, 1000);
  assert.equal(t.client.ended.code, 'LEFT');

  const u = setup();
  const w = waiting(u);
  u.clock.advance(20_000); // pings go unanswered
  assert.equal(w.closedWith, 'none');
  assert.equal(u.client.state, State.RECONNECTING);
});

test('a guest\'s id is kept across a reload, with its session', () => {
  const t = setup();
  const ws = waiting(t);
  ws.text({ type: 'joined', sessionId: 's1', resumeToken: 'tok', guestId: 3 });
  ws.text({ type: 'data', payload: 'x' });
  const again = setup({ storage: t.storage });
  assert.equal(again.client.resume(), true);
  assert.equal(again.client.guestId, 3);
  const w = again.last();
  w.open();
  assert.deepEqual(w.json()[0], { type: 'resume', sessionId: 's1', resumeToken: 'tok', lastSeq: 1 });
});
