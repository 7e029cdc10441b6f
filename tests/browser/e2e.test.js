// relay/static/e2e.js, the browser side of end-to-end encryption, in Node
// (the same WebCrypto and noble code the page runs): the draft's CPace test
// vectors, codes and payload decoding, and the exchange with a real
// `relay host` (Rust) through a real relay, sealed lines both ways, and a
// wrong secret refused on both sides.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { WebSocket } from 'ws';

import { RELAY_BIN, WAIT, kill, startHost, track, waitFor, within } from './harness.js';
import {
  Host,
  Joiner,
  newSecret,
  MISMATCH,
  Tampered,
  generator,
  generatorString,
  isk,
  parseFullCode,
  parsePayload,
  scalar,
  secretPoint,
  share,
  transcript,
} from '../../relay/static/e2e.js';

const hex = (s) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g), (b) => parseInt(b, 16));
const toHex = (b) => Buffer.from(b).toString('hex');

test('the draft-irtf-cfrg-cpace appendix B.3 vectors hold', () => {
  const ci = hex('6f630b425f726573706f6e6465720b415f696e69746961746f72');
  const sid = hex('7e4b4791d6a8ef019b936c79fb7f2c57');
  const prs = new TextEncoder().encode('Password');
  assert.equal(generatorString(prs, ci, sid).length, 172);
  const g = generator(prs, ci, sid);
  assert.equal(toHex(g.toBytes()), 'a6fc82c3b8968fbb2e06fee81ca858586dea50d248f0c7ca6a18b0902a30b36b');
  // The vectors' scalars are 32 bytes little-endian; widen them to 64.
  const wide = (h) => Uint8Array.from([...hex(h), ...new Uint8Array(32)]);
  const ya = scalar(wide('da3d23700a9e5699258aef94dc060dfda5ebb61f02a5ea77fad53f4ff0976d08'));
  const yb = scalar(wide('d2316b454718c35362d83d69df6320f38578ed5984651435e2949762d900b80d'));
  const a = share(ya, g);
  const b = share(yb, g);
  assert.equal(toHex(a), 'd40fb265a7abeaee7939d91a585fe59f7053f982c296ec413c624c669308f87a');
  assert.equal(toHex(b), '08bcf6e9777a9c313a3db6daa510f2d398403319c2341bd506a92e672eb7e307');
  const k = secretPoint(ya, b);
  assert.equal(toHex(k), toHex(secretPoint(yb, a)));
  assert.equal(toHex(k), 'e22b1ef7788f661478f3cddd4c600774fc0f41e6b711569190ff88fa0e607e09');
  const enc = new TextEncoder();
  assert.equal(
    toHex(isk(sid, k, transcript(a, enc.encode('ADa'), b, enc.encode('ADb')))),
    '4c5469a16b2364c4b944ebc1a79e51d1674ad47db26e8718154f59faebfaa52d8346f30aa58377117eb20d527f2cbc5c76381f7fd372e89df8239f87f2e02ed1',
  );
  assert.equal(secretPoint(ya, new Uint8Array(32)), null, 'the identity');
  assert.equal(secretPoint(ya, new Uint8Array(32).fill(0xff)), null, 'not an encoding');
});

test('codes and links are read as the Rust client reads them', () => {
  assert.deepEqual(parseFullCode('6ym9aq-k7p3x'), { relay: '6YM9AQ', secret: 'K7P3X' });
  assert.deepEqual(parseFullCode(' 6YM 9AQK7 P3X '), { relay: '6YM9AQ', secret: 'K7P3X' });
  assert.deepEqual(parseFullCode('https://relay.example/#6YM9AQ-K7P3X'), { relay: '6YM9AQ', secret: 'K7P3X' });
  assert.deepEqual(parseFullCode('6YM9AQ'), { relay: '6YM9AQ', secret: null });
  // 8-character relay codes (issued while the relay is under attack), with and without the secret.
  assert.deepEqual(parseFullCode('k7p3-6ym9-aq4hx'), { relay: 'K7P36YM9', secret: 'AQ4HX' });
  assert.deepEqual(parseFullCode('#K7P3 6YM9'), { relay: 'K7P36YM9', secret: null });
  for (const bad of ['6YM9AQK', '6YM9AQK7P', 'K7P36YM9-AQ4HXY']) assert.equal(parseFullCode(bad), null, bad);
  for (const bad of ['6YM9AQ-K7P3', '6YM9AQ-K7P3XX', '6YM9AQ-K7P3O', '', 'https://x/#']) {
    assert.equal(parseFullCode(bad), null, bad);
  }
});

test('payloads decode strictly', () => {
  assert.equal(parsePayload('hello').kind, 'other');
  assert.equal(parsePayload('{"type":"x"}').kind, 'other');
  assert.equal(parsePayload('{"e2e":"relay-e2e/2","step":"hello"}').kind, 'invalid');
  assert.equal(parsePayload('{"e2e":"relay-e2e/1","step":"hello","share":"AAAA"}').kind, 'invalid');
  assert.equal(parsePayload('{"e2e":"relay-e2e/1","step":"abort","reason":"bored"}').kind, 'invalid');
  const abort = parsePayload('{"e2e":"relay-e2e/1","step":"abort","reason":"mismatch"}');
  assert.deepEqual(abort, { kind: 'handshake', step: 'abort', reason: 'mismatch' });
});

test('a JS host and joiner agree with the same secret and not with another', async () => {
  const run = async (hostSecret, joinerSecret) => {
    const host = new Host('6YM9AQ', hostSecret);
    const hello = parsePayload(host.start());
    assert.equal(hello.step, 'hostHello');
    const joiner = new Joiner('6YM9AQ', joinerSecret);
    const [jh, jc] = (await joiner.answer(hello.sid, hello.share)).map(parsePayload);
    await host.onShare(jh.share);
    const ok = await host.confirm(jc.tag);
    if (!ok) return null;
    return { host: ok.channel, joiner: await joiner.confirm(parsePayload(ok.payload).tag) };
  };
  const pair = await run('K7P3X', 'K7P3X');
  const sealed = await pair.host.seal('hi', pair.host.take());
  assert.deepEqual(await pair.joiner.open(sealed), { text: 'hi' });
  const back = await pair.joiner.seal(Uint8Array.of(1, 2), pair.joiner.take());
  assert.deepEqual(await pair.host.open(back), { bytes: Uint8Array.of(1, 2) });
  // Altered: the last byte flipped.
  const next = await pair.host.seal('x', pair.host.take());
  next[next.length - 1] ^= 1;
  await assert.rejects(pair.joiner.open(next), Tampered);
  assert.equal(await run('K7P3X', 'K7P3Y'), null);
  const s = newSecret();
  assert.match(s, /^[346789ABCDEFGHJKLMNPQRTUVWXY]{5}$/);
});

// ---- against a real relay and `relay host` --------------------------------

/** Starts a single relay node; returns its address. */
async function relay() {
  const child = track(
    spawn(RELAY_BIN, [], {
      env: { RELAY_LISTEN: '127.0.0.1:0', RELAY_LOG_FORMAT: 'json', RELAY_JOIN_RATE: '0' },
      stdio: ['ignore', 'ignore', 'pipe'],
    }),
  );
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c) => (log += c));
  const addr = await waitFor(() => log.match(/"relay listening","addr":"([^"]+)"/)?.[1], 'the relay to listen');
  return { child, addr, log: () => log };
}

/** A joiner speaking the protocol with ws and e2e.js, as the page will. */
class Browser {
  constructor(addr) {
    this.got = [];
    this.ws = new WebSocket(`ws://${addr}/browser`);
    this.ws.on('message', (data, isBinary) => this.got.push(isBinary ? { binary: new Uint8Array(data) } : JSON.parse(data.toString())));
    this.ws.on('error', () => {});
  }

  async next(pred, what) {
    const m = await waitFor(() => this.got.find(pred), what);
    this.got.splice(this.got.indexOf(m), 1);
    return m;
  }

  data(payload) {
    this.ws.send(JSON.stringify({ type: 'data', payload }));
  }
}

const processes = [];
after(async () => {
  for (const p of processes) await kill(p);
});

async function exchange(secret) {
  const r = await relay();
  processes.push(r.child);
  const h = await startHost(Number(r.addr.split(':').pop()), [], processes);
  const [relayCode, realSecret] = h.code.split('-');
  const b = new Browser(r.addr);
  await waitFor(() => b.ws.readyState === WebSocket.OPEN, 'the browser connection');
  b.ws.send(JSON.stringify({ type: 'join', code: relayCode }));
  await b.next((m) => m.type === 'joined', 'joined');
  const hello = parsePayload((await b.next((m) => m.type === 'data', 'the host hello')).payload);
  assert.equal(hello.step, 'hostHello');
  const joiner = new Joiner(relayCode, secret ?? realSecret);
  const [myHello, myConfirm] = await joiner.answer(hello.sid, hello.share);
  b.data(myHello);
  b.data(myConfirm);
  const reply = parsePayload((await b.next((m) => m.type === 'data', 'the host confirm')).payload);
  return { r, h, b, joiner, reply };
}

test('the page side and relay host (Rust) agree on a key and talk sealed both ways', { timeout: 4 * WAIT }, async () => {
  const { r, h, b, joiner, reply } = await exchange(null);
  assert.equal(reply.step, 'confirm');
  const channel = await joiner.confirm(reply.tag);
  assert.ok(channel, 'the host tag verifies');
  await waitFor(() => h.out.err.includes('end-to-end encrypted: the browser'), 'the host to say it is encrypted');

  h.child.stdin.write('from rust é\n');
  const frame = await b.next((m) => m.binary, 'a sealed frame');
  assert.deepEqual(await channel.open(frame.binary), { text: 'from rust é' });
  // A replay of the same frame does not open.
  await assert.rejects(channel.open(frame.binary), Tampered);

  b.ws.send(await channel.seal('from the page', channel.take()), { binary: true });
  await waitFor(() => h.out.out.includes('from the page\n'), 'the host to print the sealed line');
  assert.ok(!r.log().includes('from the page') && !r.log().includes('from rust'), 'the relay logged no plaintext');
  h.child.stdin.end();
  await within(h.exited, WAIT, 'the host to exit');
});

test('a wrong secret is refused by relay host, which says so and exits 6', { timeout: 4 * WAIT }, async () => {
  const { h, reply } = await exchange('33333');
  // (1 in 17 million that 33333 is the real secret.)
  assert.deepEqual(reply, { kind: 'handshake', step: 'abort', reason: 'mismatch' });
  await waitFor(() => h.out.err.includes(MISMATCH), 'the host to say the code was mistyped');
  const code = await within(h.exited, WAIT, 'the host to exit');
  assert.equal(code, 6);
});
