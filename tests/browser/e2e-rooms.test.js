// Encrypted rooms in the browser: two pages in headless Chromium are guests
// of `relay host --guests 2` (Rust) against a real relay, each with its own
// key exchange (its guest id in CPace's CI, PROTOCOL.md "Rooms"). One opens
// the host's link, the other types the whole code; lines to all and to one
// guest arrive opened, the host reads each page's lines marked with its
// guest, and the relay logs none of them. A third page with a mistyped
// secret is stopped with the sentence and removed; the room goes on.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  Node, WAIT, chromiumForFile, incoming, kill, sendFromPage, startHost, state, waitFor, waitIncoming, within,
} from './harness.js';

const openPage = chromiumForFile('e2e-rooms');
const started = [];
after(async () => {
  for (const c of started) await kill(c);
});

/** `relay host --guests 2 --admit auto` against `port`, marking each guest's lines. */
const roomHost = (port) =>
  startHost(port, ['--guests', '2', '--admit', 'auto', '--peer-prefix', 'always'], started);

/** A page that typed `code` into the form. */
async function typed(port, code) {
  const page = await openPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.getByLabel('Code shown on the Mac').fill(code.toLowerCase());
  await page.getByRole('button', { name: 'Connect' }).click();
  return { page, errors };
}

test('two pages are encrypted guests of relay host --guests 2, each with its own key', { timeout: 120_000 }, async () => {
  const node = new Node('single', '');
  try {
    await node.start();
    const h = await roomHost(node.port);
    assert.equal(h.link, `http://127.0.0.1:${node.port}/#${h.code}`);

    // Guest 1 opens the link; guest 2 types the whole code.
    const one = await openPage();
    const oneErrors = [];
    one.on('pageerror', (e) => oneErrors.push(String(e)));
    await one.goto(h.link);
    await waitFor(() => one.isVisible('#e2e'), 'the first page to say it is end-to-end encrypted');
    await waitFor(() => h.out.err.includes('guest 1: end-to-end encrypted'), 'the host to confirm guest 1');
    const two = await typed(node.port, h.code);
    await waitFor(() => two.page.isVisible('#e2e'), 'the second page to say it is end-to-end encrypted');
    await waitFor(() => h.out.err.includes('guest 2: end-to-end encrypted'), 'the host to confirm guest 2');
    const said = await one.$$eval('#log li', (els) => els.map((e) => e.textContent));
    assert.ok(said.some((l) => l.includes('only you and the host')), JSON.stringify(said));

    // To all, to guest 2 only, to all again: each sealed for each guest.
    h.child.stdin.write('sealed for all é\n/to 2\nsealed for two\n/to all\nsealed again\n');
    await waitIncoming(two.page, ['sealed for all é', 'sealed for two', 'sealed again'], 'guest 2 to show its lines');
    await waitIncoming(one, ['sealed for all é', 'sealed again'], 'guest 1 to show the lines to all');
    assert.deepEqual(await incoming(one), ['sealed for all é', 'sealed again'], 'guest 1 got a line for guest 2');

    await sendFromPage(one, 'sealed from one');
    await sendFromPage(two.page, 'sealed from two');
    await waitFor(() => h.out.out.includes('guest 1> sealed from one\n'), 'the host to print guest 1 line');
    await waitFor(() => h.out.out.includes('guest 2> sealed from two\n'), 'the host to print guest 2 line');
    assert.equal(await state(one), 'connected');
    for (const line of node.logs) {
      assert.ok(!line.includes('sealed '), `the relay logged a plaintext: ${line}`);
    }
    assert.deepEqual([...oneErrors, ...two.errors], []);

    // The host ends: each page hears its own sealed end frame, so nothing was cut.
    h.child.stdin.end();
    assert.equal(await within(h.exited, WAIT, 'the host to exit'), 0);
    for (const page of [one, two.page]) {
      await waitFor(() => page.isVisible('#ov-over'), 'the page to show the session is over');
      const log = await page.$$eval('#log li', (els) => els.map((e) => e.textContent));
      assert.ok(!log.some((l) => l.includes('may have been cut')), JSON.stringify(log));
    }
  } finally {
    await node.sigkill();
  }
});

test('a page with a mistyped secret is stopped and removed; the room goes on', { timeout: 120_000 }, async () => {
  const node = new Node('single', '');
  try {
    await node.start();
    const h = await roomHost(node.port);
    const good = await typed(node.port, h.code);
    await waitFor(() => good.page.isVisible('#e2e'), 'the page to say it is end-to-end encrypted');

    const wrong = `${h.code.slice(0, 7)}${h.code.endsWith('33333') ? '44444' : '33333'}`;
    const bad = await typed(node.port, wrong);
    await waitFor(() => bad.page.isVisible('#ov-over'), 'the mistyped page to stop');
    assert.match(await bad.page.textContent('#ov-over'), /mistyped or someone else tried it/);
    await waitFor(() => /guest 2: the code was mistyped or someone else tried it; it was removed/.test(h.out.err),
      'the host to say it removed the guest');

    h.child.stdin.write('still on\n');
    await waitIncoming(good.page, ['still on'], 'the good page to keep getting lines');
    await sendFromPage(good.page, 'still here');
    await waitFor(() => h.out.out.includes('guest 1> still here\n'), 'the host to print the good page line');
    assert.deepEqual(await incoming(bad.page), []);
    h.child.stdin.end();
    assert.equal(await within(h.exited, WAIT, 'the host to exit'), 0);
  } finally {
    await node.sigkill();
  }
});
