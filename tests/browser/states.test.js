// What a person sees when things go wrong (issue 17): each state of the page
// (relay/static/index.html + client.js) in real headless Chromium against
// real relay processes, with a Mac-side WebSocket client and, where a test
// must make the relay unreachable or hang, a TCP proxy in front of it. Each
// state is saved as a screenshot in target/test-artifacts/ (states-*.png), at
// desktop width and, for the cards and the banner, 390 px wide.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  DESKTOP,
  RECONNECT_WAIT,
  Mac,
  Node,
  incoming,
  screenshot,
  sendFromPage,
  startProxy,
  state,
  bannerShown,
  tail,
  waitFor,
  waitIncoming,
  chromiumForFile,
  text,
  tone,
} from './harness.js';

const openPage = chromiumForFile('states');

// ---- helpers -------------------------------------------------------------------

const focused = (page) => page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
const tagOf = (page, body) => page.$$eval('#log li.out', (lis, b) => {
  const li = lis.find((l) => l.querySelector('.body')?.textContent === b);
  return li ? { tag: li.querySelector('.tag')?.textContent ?? '', cls: li.className } : null;
}, body);

/** Screenshot `states-<name>.png` (and `-390`), checked for accessibility; see harness.js `shot`. */
const shot = (page, name, options) => screenshot(page, `states-${name}`, options);

/** A single relay node (sessions in memory), with extra settings. */
async function startNode(t, env = {}) {
  const node = new Node('single', '', env);
  t.after(() => node.sigkill());
  await node.start();
  return node;
}

async function registeredMac(t, port) {
  const mac = await new Mac(`ws://127.0.0.1:${port}/mac`).opened();
  t.after(() => mac.close());
  mac.send({ type: 'register' });
  const reg = await mac.expect('registered');
  mac.registered = reg;
  return mac;
}

async function newPage(t) {
  const page = await openPage();
  await page.setViewportSize(DESKTOP);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  t.after(async () => {
    await page.close().catch(() => {});
    assert.deepEqual(errors, [], 'no uncaught errors in the page');
  });
  return page;
}

async function typeCode(page, code) {
  await page.getByLabel('Code shown on the Mac').fill(code);
  await page.getByRole('button', { name: 'Connect' }).click();
}

async function pair(page, port, mac) {
  await page.goto(`http://127.0.0.1:${port}/`);
  await typeCode(page, mac.registered.code);
  await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
  await mac.expect('peer_joined');
}

/** Runs `body`; on failure prints the node's log tail. */
async function withLogs(nodes, body) {
  try {
    await body();
  } catch (e) {
    for (const n of nodes) console.error(`---- ${n.id} log (last lines) ----\n${tail(n.logs, 60)}`);
    throw e;
  }
}

// ---- the states ------------------------------------------------------------------

test('first join: connecting (yellow), then "cannot reach the relay", not "waiting for the Mac"; then connected (green)', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs([node], async () => {
    const target = { port: node.port };
    const proxy = await startProxy(target);
    t.after(() => proxy.close());
    const mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await page.goto(`http://127.0.0.1:${proxy.port}/`);
    assert.equal(await tone(page), 'disconnected', 'not connected yet: red');

    // The WebSocket handshake hangs: connecting.
    proxy.mode = 'hold';
    await typeCode(page, mac.registered.code);
    await waitFor(async () => (await state(page)) === 'connecting', 'the page to be connecting');
    assert.equal(await tone(page), 'connecting');
    assert.equal(await text(page, '#status'), 'Connecting…');
    assert.equal(await text(page, '#ov-waiting-title'), 'Connecting to the relay');
    await shot(page, 'connecting', { narrow: true });

    // Nothing listens: the page says the relay cannot be reached, and keeps trying.
    proxy.mode = 'refuse';
    proxy.cut();
    await waitFor(() => bannerShown(page), 'the banner');
    assert.equal(await text(page, '#banner strong'), 'Cannot reach the relay. Retrying…');
    assert.equal(await text(page, '#ov-waiting-title'), 'Cannot reach the relay');
    assert.equal(await text(page, '#status'), 'Cannot reach the relay. Retrying…');
    assert.equal(await tone(page), 'connecting', 'retrying is yellow');
    assert.ok(!(await page.textContent('body')).includes('Waiting for the Mac'));
    await shot(page, 'unreachable', { narrow: true });

    // The relay is reachable again: Try now joins.
    proxy.mode = 'pass';
    await page.getByRole('button', { name: 'Try now' }).click();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
    await mac.expect('peer_joined');
    assert.equal(await tone(page), 'connected');
    assert.equal(await bannerShown(page), false);
    await sendFromPage(page, 'b1');
    mac.data('m1');
    await waitIncoming(page, ['m1'], 'the page to show m1');
    await waitFor(() => mac.payloads().includes('b1'), 'the Mac to get b1');
    await waitFor(async () => /^\d+ ms$/.test(await text(page, '#latency')), 'the latency');
    await shot(page, 'connected', { narrow: true });
  });
});

test('the reconnect banner counts down; Try now keeps the focus and the attempt count, and says it is trying', { timeout: 120_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs([node], async () => {
    const proxy = await startProxy({ port: node.port });
    t.after(() => proxy.close());
    const mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await pair(page, proxy.port, mac);

    proxy.mode = 'refuse';
    proxy.cut();
    await waitFor(() => bannerShown(page), 'the banner');
    assert.equal(await text(page, '#banner strong'), 'Connection lost. Reconnecting…');
    assert.equal(await tone(page), 'connecting');
    // Attempt 3 waits 4 s (± 25 %): long enough to see the countdown move.
    const attempt = async () => Number((await text(page, '#banner')).match(/Attempt (\d+)\./)?.[1]);
    await waitFor(async () => (await attempt()) >= 3, 'attempt 3', RECONNECT_WAIT);
    const n = await attempt();
    const secs = async () => Number((await text(page, '#banner-countdown')).match(/^Next try in (\d+) s\.$/)?.[1]);
    const first = await secs();
    assert.ok(first >= 1, `a countdown is shown: ${await text(page, '#banner-countdown')}`);
    await waitFor(async () => (await attempt()) === n && (await secs()) < first, 'the countdown to go down');

    // Try now, from the keyboard, while the relay hangs: "trying", same attempt, focus kept.
    proxy.mode = 'hold';
    await page.focus('#try-now');
    await page.keyboard.press('Enter');
    await waitFor(async () => (await text(page, '#banner-countdown')) === 'Trying now…', '"Trying now…"');
    assert.equal(await text(page, '#try-now'), 'Trying…');
    assert.equal(await page.getAttribute('#try-now', 'aria-disabled'), 'true');
    assert.equal(await attempt(), n, 'Try now does not reset the attempt count');
    assert.equal(await focused(page), 'try-now');
    await page.keyboard.press('Enter'); // ignored while trying
    assert.equal(await attempt(), n);
    await shot(page, 'banner-trying', { narrow: true });

    // The hanging attempt times out (10 s): the next one is counted, the focus is still on the button.
    await waitFor(async () => (await attempt()) === n + 1, `attempt ${n + 1}`, RECONNECT_WAIT);
    assert.equal(await focused(page), 'try-now', 'focus stays on Try now across attempts');
    assert.equal(await text(page, '#try-now'), 'Try now');
    assert.match(await text(page, '#banner-countdown'), /^Next try in \d+ s\.$/);
    await shot(page, 'banner', { narrow: true });

    // Back: Try now reconnects, the banner goes, the focus lands on the message box (not <body>).
    proxy.mode = 'pass';
    await page.keyboard.press('Enter');
    await waitFor(async () => (await state(page)) === 'connected' && !(await bannerShown(page)), 'the page to reconnect');
    assert.equal(await focused(page), 'message');
    assert.equal(await tone(page), 'connected');
  });
});

test('the Mac away: an inline card that hides no message, sent messages "held until the Mac is back"', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs([node], async () => {
    let mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await pair(page, node.port, mac);
    const sent = Array.from({ length: 14 }, (_, i) => `m${i + 1}`);
    for (const m of sent) mac.data(m);
    await waitIncoming(page, sent, 'the page to show m1-m14');

    const reg = mac.registered;
    await mac.close();
    await waitFor(() => page.isVisible('#ov-away'), 'the "Mac is away" card');
    assert.equal(await text(page, '#status'), 'Connected. The Mac is away.');
    assert.equal(await tone(page), 'connecting');
    await sendFromPage(page, 'b1');
    await sendFromPage(page, 'b2');
    assert.deepEqual(await tagOf(page, 'b1'), { tag: 'held until the Mac is back', cls: 'msg out held' });
    // Scrolled to the top, the first message is in view: no card covers it.
    await page.$eval('#log', (l) => { l.scrollTop = 0; });
    await shot(page, 'away', { narrow: true, card: '#ov-away' });

    mac = new Mac(`ws://127.0.0.1:${node.port}/mac`);
    t.after(() => mac.close());
    await mac.opened();
    mac.send({ type: 'resume', sessionId: reg.sessionId, resumeToken: reg.resumeToken, lastSeq: 0 });
    await mac.expect('resumed');
    await waitFor(() => mac.payloads().includes('b2'), 'the Mac to get b1, b2');
    assert.deepEqual(mac.payloads(), ['b1', 'b2']);
    await waitFor(async () => !(await page.isVisible('#ov-away')), 'the card to go');
    assert.deepEqual(await tagOf(page, 'b1'), { tag: '', cls: 'msg out' });
    assert.equal(await tone(page), 'connected');
  });
});

test('a frozen relay (SIGSTOP): the latency turns stale instead of showing the last round trip', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t);
  t.after(() => node.sigcont());
  await withLogs([node], async () => {
    const mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await pair(page, node.port, mac);
    await waitFor(async () => /^\d+ ms$/.test(await text(page, '#latency')), 'the latency');

    node.sigstop();
    await waitFor(async () => (await page.getAttribute('#latency', 'data-stale')) === 'true', 'the latency to turn stale');
    assert.match(await text(page, '#latency'), /^no answer for \d+ s$/);
    assert.equal(await text(page, '#status'), 'Connected, but the relay is not answering…');
    assert.equal(await tone(page), 'connecting');
    await shot(page, 'stale-latency');

    node.sigcont();
    await waitFor(async () => (await state(page)) === 'connected' && /^\d+ ms$/.test(await text(page, '#latency')),
      'a fresh latency', RECONNECT_WAIT);
    assert.equal(await tone(page), 'connected');
  });
});

test('a restarted relay lost the session: the page says so, marks what was waiting not delivered, and takes a new code', { timeout: 120_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs([node], async () => {
    const mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await pair(page, node.port, mac);
    mac.data('m1');
    await waitIncoming(page, ['m1'], 'the page to show m1');

    await node.sigkill();
    await waitFor(() => bannerShown(page), 'the banner');
    await sendFromPage(page, 'b1');
    assert.equal((await tagOf(page, 'b1')).tag, 'waiting to send');
    await node.restart();
    await waitFor(() => page.isVisible('#ov-over'), 'the "Session over" card', RECONNECT_WAIT);
    assert.match(await text(page, '#ov-over-text'), /^The relay no longer knows this session: it was restarted or lost it/);
    assert.match(await text(page, '#ov-over-next'), /new code .*enter it here/);
    assert.deepEqual(await tagOf(page, 'b1'), { tag: 'not delivered', cls: 'msg out undelivered' });
    assert.ok((await page.textContent('#log')).includes('1 message you sent did not reach the Mac.'));
    assert.equal(await tone(page), 'error', 'a lost session is an error: gray');
    assert.equal(await focused(page), 'ov-over-title');
    await shot(page, 'relay-restarted', { narrow: true, card: '#ov-over' });

    // The Mac registers again; the page offers to enter its new code.
    const mac2 = await registeredMac(t, node.port);
    await page.getByRole('button', { name: 'Enter a new code' }).click();
    assert.match(await text(page, '#join-note'), /new code/);
    await typeCode(page, mac2.registered.code);
    await waitFor(async () => (await state(page)) === 'connected', 'the page to join the new session');
    await mac2.expect('peer_joined');
  });
});

test('a Mac that stops answering: "the Mac stopped answering", held messages not delivered', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t, { RELAY_GRACE: '3s' });
  await withLogs([node], async () => {
    const mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await pair(page, node.port, mac);
    mac.data('m1');
    await waitIncoming(page, ['m1'], 'the page to show m1');

    await mac.close(); // gone without a word, never back
    await waitFor(() => page.isVisible('#ov-away'), 'the "Mac is away" card');
    await sendFromPage(page, 'b1');
    await sendFromPage(page, 'b2');
    await waitFor(() => page.isVisible('#ov-over'), 'the "Session over" card (grace 3 s)');
    assert.equal(await text(page, '#ov-over-text'),
      'The Mac stopped answering and did not come back in time, so the session ended.');
    assert.notEqual(await text(page, '#ov-over-text'), 'The Mac ended the session.');
    for (const b of ['b1', 'b2']) {
      assert.deepEqual(await tagOf(page, b), { tag: 'not delivered', cls: 'msg out undelivered' });
    }
    assert.ok((await page.textContent('#log')).includes('2 messages you sent did not reach the Mac.'));
    assert.equal(await page.isVisible('#ov-away'), false);
    assert.equal(await page.isVisible('#composer'), false, 'read-only');
    assert.equal(await tone(page), 'disconnected', 'over: red');
    await shot(page, 'mac-gone', { narrow: true, card: '#ov-over' });
  });
});

test('a reload keeps the conversation (bounded), and its note goes once the session is back', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs([node], async () => {
    const mac = await registeredMac(t, node.port);
    const page = await newPage(t);
    await pair(page, node.port, mac);
    mac.data('m1');
    await waitIncoming(page, ['m1'], 'the page to show m1');
    await sendFromPage(page, 'b1');
    mac.binary('m2');
    await waitIncoming(page, ['m2'], 'the page to show m2');
    await waitFor(() => mac.payloads().includes('b1'), 'the Mac to get b1');
    const entries = (p) => p.$$eval('#log li', (lis) => lis.map((l) => l.textContent));
    const before = await entries(page);

    await page.reload();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to resume after the reload');
    await mac.expect('peer_resumed');
    await waitFor(async () => (await page.locator('#log li[data-reload]').count()) === 0, 'the reload note to go');
    assert.deepEqual(await entries(page), before, 'the conversation is back as it was');
    mac.data('m3');
    await waitIncoming(page, ['m3'], 'the page to show m3');
    assert.deepEqual(await incoming(page), ['m1', 'm2', 'm3'], 'nothing lost, nothing twice');
    await shot(page, 'reloaded');

    // Bounded: a long conversation keeps only its recent part across a reload.
    const many = Array.from({ length: 600 }, (_, i) => `n${i}`);
    for (const m of many) mac.data(m);
    await waitIncoming(page, ['n599'], 'the page to show n599');
    await page.reload();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to resume after the second reload');
    const shown = await incoming(page);
    assert.equal(shown.at(-1), 'n599');
    assert.ok(shown.length <= 500, `at most 500 entries kept, got ${shown.length}`);
    assert.equal(await text(page, '#log li:first-child'), 'Earlier messages are not kept across a reload.');
    assert.deepEqual(shown.slice(-3), ['n597', 'n598', 'n599'], 'in order');
  });
});
