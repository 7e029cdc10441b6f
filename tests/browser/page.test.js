// The browser page (relay/static/index.html + client.js) in real headless
// Chromium against a real relay cluster: a Redis, two relay nodes sharing it,
// the page on node 1 through a TCP proxy this test controls, and a Mac-side
// WebSocket client on node 2. The page pairs, messages go both ways, node 1 is
// killed (SIGKILL) and started again on the same port: the page shows the
// "Connection lost" banner meanwhile, the banner goes away by itself, and
// every message sent by either side before, during and after the outage
// arrives exactly once, in order. Screenshots go to target/test-artifacts/.
//
// Needs: the debug relay binary (RELAY_BIN, default target/debug/relay),
// redis-server and /usr/bin/chromium (`make deps`). Every process started here
// is killed at the end, also on failure; every wait is bounded.


import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  ARTIFACTS,
  WAIT,
  RECONNECT_WAIT,
  sleep,
  waitFor,
  kill,
  tail,
  startRedis,
  Node,
  startProxy,
  Mac,
  incoming,
  state,
  bannerShown,
  needBinaries,
  openBrowser,
  sendFromPage,
  waitIncoming,
} from './harness.js';

// ---- the test ------------------------------------------------------------------

test('the page pairs, survives its relay node dying, and loses no message', { timeout: 150_000 }, async () => {
  needBinaries();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-browser-test-'));
  let redis;
  let proxy;
  let browser;
  let mac;
  const nodes = [];
  let pageErrors = [];
  const consoleLines = [];
  try {
    redis = await startRedis(tmp);
    const node2 = await new Node('node-2', redis.url).start();
    nodes.push(node2);
    const node1 = await new Node('node-1', redis.url).start();
    nodes.push(node1);
    const target = { port: node1.port };
    proxy = await startProxy(target);

    // The Mac registers on node 2.
    mac = await new Mac(`ws://127.0.0.1:${node2.port}/mac`).opened();
    mac.send({ type: 'register' });
    const { code } = await mac.expect('registered');
    assert.match(code, /^[346789ABCDEFGHJKLMNPQRTUVWXY]{6}$/);

    // The browser opens the page on node 1 (through the proxy).
    browser = await openBrowser('page');
    const { page } = browser;
    pageErrors = browser.errors;
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    await page.goto(`http://127.0.0.1:${proxy.port}/`);
    assert.equal(await page.title(), 'Relay · connect to your Mac');
    assert.equal(await state(page), 'disconnected');

    // Type the code as a person might: lower case, with a dash.
    const typed = `${code.slice(0, 3)}-${code.slice(3)}`.toLowerCase();
    await page.getByLabel('Code shown on the Mac').fill(typed);
    await page.getByRole('button', { name: 'Connect' }).click();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
    await mac.expect('peer_joined');
    assert.equal(await page.isVisible('#ov-waiting'), false);
    await waitFor(async () => /^\d+ ms$/.test(await page.textContent('#latency')), 'the latency');

    // Messages both ways.
    await sendFromPage(page, 'b1');
    await sendFromPage(page, 'b2');
    mac.data('m1');
    mac.binary('m2');
    await waitFor(() => mac.payloads().length === 2, 'the Mac to get b1, b2');
    await waitIncoming(page, ['m1', 'm2'], 'the page to show m1, m2');
    assert.match(await page.locator('#log li.msg.in').nth(1).textContent(), /binary, 2 bytes/);

    // Node 1 dies. The page loses its connection and says so.
    await node1.sigkill();
    mac.data('m3'); // sent before node 2 knows
    await waitFor(() => bannerShown(page), 'the "Connection lost" banner');
    assert.equal(await page.textContent('#banner strong'), 'Connection lost. Reconnecting…');
    assert.equal(await page.getAttribute('#banner', 'role'), 'status');
    assert.equal(await state(page), 'reconnecting');
    await sendFromPage(page, 'b3');
    await sendFromPage(page, 'b4');
    assert.equal(await page.locator('#log li.queued').count(), 2, 'sent while away: queued');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-banner.png') });
    await mac.expect('peer_disconnected');
    mac.data('m4');
    mac.binary('m5');
    assert.ok(await bannerShown(page), 'still down: the banner stays');

    // Node 1 comes back on the same port: the page resumes by itself.
    await node1.restart();
    target.port = node1.port;
    await waitFor(async () => !(await bannerShown(page)) && (await state(page)) === 'connected',
      'the banner to go away', RECONNECT_WAIT);
    await mac.expect('peer_resumed');
    await waitIncoming(page, ['m3', 'm4', 'm5'], 'the page to show m3-m5');
    await waitFor(() => mac.payloads().length === 4, 'the Mac to get b3, b4');
    assert.equal(await page.locator('#log li.queued').count(), 0);

    // And after.
    await sendFromPage(page, 'b5');
    mac.data('m6');
    await waitIncoming(page, ['m6'], 'the page to show m6');
    await waitFor(() => mac.payloads().length === 5, 'the Mac to get b5');

    // The Mac drops: the page shows it away; it comes back (resume) and nothing is lost.
    const registered = mac.got.find((m) => m.type === 'registered');
    await mac.close();
    await waitFor(() => page.isVisible('#ov-away'), 'the "Mac is away" overlay');
    await sendFromPage(page, 'b6');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-away.png') });
    const macReceived = mac.dataCount();
    const before = mac.payloads();
    mac = await new Mac(`ws://127.0.0.1:${node2.port}/mac`).opened();
    mac.send({ type: 'resume', sessionId: registered.sessionId, resumeToken: registered.resumeToken, lastSeq: macReceived });
    await mac.expect('resumed');
    await waitFor(() => mac.payloads().includes('b6'), 'the Mac to get b6 after resuming');
    await waitFor(async () => !(await page.isVisible('#ov-away')), 'the "Mac is away" overlay to go');
    mac.data('m7');
    await waitIncoming(page, ['m7'], 'the page to show m7');

    // Exactly once, in order, both ways.
    await sleep(300);
    assert.deepEqual([...before, ...mac.payloads()], ['b1', 'b2', 'b3', 'b4', 'b5', 'b6']);
    assert.deepEqual(await incoming(page), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7']);
    assert.ok((await page.textContent('#log')).includes('Connection back.'));
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser.png') });

    // The Mac leaves: session over, read-only.
    mac.send({ type: 'leave' });
    await waitFor(() => page.isVisible('#ov-over'), 'the "Session over" overlay');
    assert.equal(await page.textContent('#ov-over-text'), 'The Mac ended the session.');
    assert.equal(await page.isVisible('#composer'), false, 'read-only');
    assert.deepEqual(await incoming(page), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7'], 'the log stays');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-over.png') });

    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  } catch (e) {
    for (const n of nodes) console.error(`---- ${n.id} log (last lines) ----\n${tail(n.logs, 60)}`);
    console.error(`---- page console ----\n${tail(consoleLines, 60)}`);
    if (pageErrors.length) console.error(`---- page errors ----\n${pageErrors.join('\n')}`);
    throw e;
  } finally {
    await mac?.close();
    await browser?.close();
    await proxy?.close();
    for (const n of nodes) await n.sigkill();
    await kill(redis?.child);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('after a reload the page resumes; a capped page gives up, offers Retry, and shows why the session ended', { timeout: 90_000 }, async () => {
  let browser;
  let mac;
  let pageErrors = [];
  // One node, sessions in memory: a restart forgets them.
  const node = new Node('single', '');
  try {
    await node.start();
    mac = await new Mac(`ws://127.0.0.1:${node.port}/mac`).opened();
    mac.send({ type: 'register' });
    const { code } = await mac.expect('registered');

    browser = await openBrowser('page-reload');
    const { page } = browser;
    pageErrors = browser.errors;
    // ?retries=1: give up after one failed attempt.
    await page.goto(`http://127.0.0.1:${node.port}/?retries=1`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-join.png') });
    await page.getByLabel('Code shown on the Mac').fill(code.toLowerCase());
    await page.getByRole('button', { name: 'Connect' }).click();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
    mac.data('m1');
    await waitIncoming(page, ['m1'], 'the page to show m1');

    // A reload takes the session back (sessionStorage) without replaying m1.
    await page.reload();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to resume after the reload');
    await mac.expect('peer_resumed');
    mac.data('m2');
    await waitIncoming(page, ['m2'], 'the page to show m2');
    await sendFromPage(page, 'b1');
    await waitFor(() => mac.payloads().includes('b1'), 'the Mac to get b1');
    // The conversation so far is kept across the reload, and nothing is replayed twice.
    assert.deepEqual(await incoming(page), ['m1', 'm2'], 'kept, nothing replayed twice');

    // The node dies; after one failed attempt the page gives up and offers Retry.
    await node.sigkill();
    await waitFor(() => page.isVisible('#ov-gaveup'), 'the "Could not reconnect" overlay', RECONNECT_WAIT);
    assert.equal(await state(page), 'disconnected');
    assert.equal(await bannerShown(page), false);
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-gaveup.png') });
    // The card sits above the conversation, never over it, also 390 px wide.
    for (const width of [900, 390]) {
      await page.setViewportSize({ width, height: 760 });
      const card = await page.locator('#ov-gaveup').boundingBox();
      const conv = await page.locator('.conversation').boundingBox();
      assert.ok(card.y + card.height <= conv.y + 0.5, `at ${width} px the card covers the conversation`);
    }
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-gaveup-390.png'), fullPage: true });
    await page.setViewportSize({ width: 900, height: 760 });

    // The node is back but has forgotten the session: Retry leads to "Session over" with the reason.
    await node.restart();
    await page.getByRole('button', { name: 'Retry' }).click();
    await waitFor(() => page.isVisible('#ov-over'), 'the "Session over" overlay');
    assert.match(await page.textContent('#ov-over-text'), /^The relay no longer knows this session: it was restarted/);
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  } catch (e) {
    console.error(`---- ${node.id} log (last lines) ----\n${tail(node.logs, 60)}`);
    throw e;
  } finally {
    await mac?.close();
    await browser?.close();
    await node.sigkill();
  }
});
