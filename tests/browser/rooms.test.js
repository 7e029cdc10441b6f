// Rooms in the browser (issue 13): pages as guests of one host, in real
// headless Chromium against a real relay. The host is a plain WebSocket
// client driven from Node (the `Mac` of harness.js registering a room); it
// admits, denies and removes guests and addresses its frames to one guest or
// to all. Each new state of the page is saved as a screenshot in
// target/test-artifacts/ (rooms-*.png, desktop and 390 px wide) and checked
// with axe-core.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  DESKTOP,
  Mac,
  Node,
  incoming,
  screenshot,
  sendFromPage,
  state,
  tail,
  waitFor,
  waitIncoming,
  chromiumForFile,
  text,
  tone,
} from './harness.js';

const openPage = chromiumForFile('rooms');

// ---- helpers -------------------------------------------------------------------

const shot = (page, name, options) => screenshot(page, `rooms-${name}`, options);

/** A room host: the Mac side registering a room, with what it heard tagged by guest. */
class Host extends Mac {
  /** Waits for `guest_joined` with `name`; returns its guestId. */
  async joined(name) {
    const m = await waitFor(() => this.got.find((g) => g.type === 'guest_joined' && g.name === name),
      `the host to hear ${name} join`);
    return m.guestId;
  }

  /** Waits for the event `type` about guest `guestId`; returns it. */
  event(type, guestId) {
    return waitFor(() => this.got.find((g) => g.type === type && g.guestId === guestId),
      `the host to hear ${type} for guest ${guestId}`);
  }

  /** The data frames received, as [guestId, payload], each tagged by the last `from` before it. */
  tagged() {
    let from = null;
    const out = [];
    for (const m of this.got) {
      if (m.type === 'from') from = m.guestId;
      else if (m.type === 'data') out.push([from, m.payload]);
      else if (m.binary) out.push([from, m.binary.toString()]);
    }
    return out;
  }

  /** Sends `payload` as a data frame to guest `guestId` only, then to everyone again. */
  dataTo(guestId, payload) {
    this.send({ type: 'to', guestId });
    this.data(payload);
    this.send({ type: 'to' });
  }

  async heard(guestId, payload) {
    await waitFor(() => this.tagged().some(([g, p]) => g === guestId && p === payload),
      `the host to get "${payload}" from guest ${guestId}`).catch((e) => {
      throw new Error(`${e.message}; it got ${JSON.stringify(this.tagged())}`);
    });
  }
}

async function startNode(t) {
  const node = new Node('single', '');
  t.after(() => node.sigkill());
  await node.start();
  return node;
}

async function roomHost(t, port, room) {
  const host = await new Host(`ws://127.0.0.1:${port}/mac`).opened();
  t.after(() => host.close());
  host.send({ type: 'register', ...room });
  const reg = await host.expect('registered');
  assert.equal(reg.maxGuests, room.maxGuests);
  host.code = reg.code;
  return host;
}

async function newPage(t, port) {
  const page = await openPage();
  await page.setViewportSize(DESKTOP);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  t.after(async () => {
    await page.close().catch(() => {});
    assert.deepEqual(errors, [], 'no uncaught errors in the page');
  });
  await page.goto(`http://127.0.0.1:${port}/`);
  return page;
}

async function joinAs(page, code, name) {
  await page.getByLabel('Code shown on the Mac').fill(code);
  await page.getByLabel('Your name (optional)').fill(name);
  await page.getByRole('button', { name: 'Connect' }).click();
}

const waitState = (page, want, what) => waitFor(async () => (await state(page)) === want, what);

async function withLogs(node, body) {
  try {
    await body();
  } catch (e) {
    console.error(`---- ${node.id} log (last lines) ----\n${tail(node.logs, 60)}`);
    throw e;
  }
}

// ---- the tests -------------------------------------------------------------------

test('two named guests wait; the host admits one (frames both ways, to one and to all), denies the other, then removes a third mid-session', { timeout: 120_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs(node, async () => {
    const host = await roomHost(t, node.port, { maxGuests: 3, admit: 'ask' });
    const ana = await newPage(t, node.port);
    await shot(ana, 'join-form', { narrow: true });
    await joinAs(ana, host.code, 'Ana');
    await waitState(ana, 'waiting', 'Ana to wait for the host');
    assert.equal(await text(ana, '#status'), 'Waiting for the host to let you in…');
    assert.equal(await tone(ana), 'connecting');
    assert.equal(await text(ana, '#ov-waiting-title'), 'Waiting for the host to let you in');
    assert.match(await text(ana, '#ov-waiting-text'), /Ana is asking to join/);
    assert.equal(await ana.isDisabled('#message'), true, 'nothing to send to before the host lets Ana in');
    assert.equal(await ana.isEnabled('#leave'), true, 'but she can give up');
    await shot(ana, 'waiting', { narrow: true });

    const bo = await newPage(t, node.port);
    await joinAs(bo, host.code, 'Bo');
    await waitState(bo, 'waiting', 'Bo to wait for the host');

    // The host sees both names, each with its own id.
    const anaId = await host.joined('Ana');
    const boId = await host.joined('Bo');
    assert.notEqual(anaId, boId);
    assert.equal(await ana.evaluate(() => window.relayClient.guestId), anaId);

    host.send({ type: 'admit', guestId: anaId });
    await waitState(ana, 'connected', 'Ana to be let in');
    await host.event('guest_admitted', anaId);
    assert.equal(await tone(ana), 'connected');
    assert.equal(await ana.isEnabled('#message'), true);
    assert.equal(await text(ana, '#session-title'), 'Messages with the host');
    assert.ok((await ana.textContent('#log')).includes('The host let you in.'));
    assert.equal(await state(bo), 'waiting', 'Bo still waits');

    // Both ways: the host to all, then to Ana only; Ana's frame reaches it tagged with her id.
    host.data('to everyone 1');
    host.dataTo(anaId, 'just for Ana');
    await waitIncoming(ana, ['to everyone 1', 'just for Ana'], 'Ana to get the host\'s frames');
    await sendFromPage(ana, 'hi from Ana');
    await host.heard(anaId, 'hi from Ana');
    assert.deepEqual(await ana.$$eval('#log li.msg.in .who', (w) => w.map((e) => e.textContent)), ['Host', 'Host']);
    await shot(ana, 'guest-connected', { narrow: true });

    // Bo is denied: a card that says so, and nothing of the session ever reached him.
    host.send({ type: 'deny', guestId: boId });
    await waitFor(() => bo.isVisible('#ov-over'), 'Bo\'s "not let in" card');
    assert.equal(await text(bo, '#ov-over-title'), 'The host did not let you in');
    assert.equal(await text(bo, '#status'), 'Not let in.');
    assert.equal(await tone(bo), 'disconnected');
    assert.equal(await bo.isVisible('#ov-waiting'), false);
    assert.equal(await bo.isVisible('#rejoin'), false, 'no automatic way back in');
    assert.equal(await bo.isVisible('#conversation'), false, 'no conversation to show or keep');
    assert.equal(await bo.isVisible('#ov-over-kept'), false);
    assert.deepEqual(await incoming(bo), []);
    assert.equal((await host.event('guest_left', boId)).reason, 'denied');
    await shot(bo, 'denied', { narrow: true });

    // A third guest is admitted, hears what goes to all but not what goes to Ana only.
    const cy = await newPage(t, node.port);
    await joinAs(cy, host.code, 'Cy');
    const cyId = await host.joined('Cy');
    host.send({ type: 'admit', guestId: cyId });
    await waitState(cy, 'connected', 'Cy to be let in');
    host.dataTo(anaId, 'secret for Ana');
    host.data('to everyone 2');
    host.dataTo(cyId, 'just for Cy');
    await waitIncoming(cy, ['to everyone 2', 'just for Cy'], 'Cy to get the frames to all and to him');
    await waitIncoming(ana, ['secret for Ana', 'to everyone 2'], 'Ana to get hers');
    assert.deepEqual(await incoming(cy), ['to everyone 2', 'just for Cy']);
    await sendFromPage(cy, 'hi from Cy');
    await host.heard(cyId, 'hi from Cy');

    // Cy is removed mid-session: he sees why, keeps what he read, and can send nothing more.
    host.send({ type: 'remove', guestId: cyId });
    await waitFor(() => cy.isVisible('#ov-over'), 'Cy\'s "removed" card');
    assert.equal(await text(cy, '#ov-over-title'), 'The host removed you from this session');
    assert.equal(await text(cy, '#status'), 'Removed by the host.');
    assert.equal(await cy.isVisible('#composer'), false, 'read-only');
    assert.equal(await cy.isVisible('#ov-over-kept'), true);
    assert.equal((await host.event('guest_left', cyId)).reason, 'removed');
    assert.equal(await cy.evaluate(() => sessionStorage.getItem('relay.session')), null, 'its token is forgotten');
    await shot(cy, 'removed', { narrow: true, card: '#ov-over' });

    // Ana carries on, both ways, and has every frame meant for her, in order.
    host.data('after the removal');
    await waitIncoming(ana, ['after the removal'], 'Ana to get the frame after the removal');
    await sendFromPage(ana, 'still here');
    await host.heard(anaId, 'still here');
    assert.deepEqual(await incoming(ana),
      ['to everyone 1', 'just for Ana', 'secret for Ana', 'to everyone 2', 'after the removal']);
    assert.deepEqual(await incoming(cy), ['to everyone 2', 'just for Cy']);
    assert.deepEqual(host.tagged(), [[anaId, 'hi from Ana'], [cyId, 'hi from Cy'], [anaId, 'still here']]);
  });
});

test('a full room shows the full card; Try again joins once the host made room', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs(node, async () => {
    const host = await roomHost(t, node.port, { maxGuests: 1, admit: 'auto' });
    const dee = await newPage(t, node.port);
    await joinAs(dee, host.code, 'Dee');
    await waitState(dee, 'connected', 'Dee to be in (auto)');
    const deeId = await host.joined('Dee');
    assert.ok((await dee.textContent('#log')).includes('Connected to the host.'));

    const eve = await newPage(t, node.port);
    await joinAs(eve, host.code, 'Eve');
    await waitFor(() => eve.isVisible('#ov-over'), 'Eve\'s "full" card');
    assert.equal(await text(eve, '#ov-over-title'), 'This session is full');
    assert.equal(await text(eve, '#ov-over-text'), 'This session is full: ask the host to make room, then try again.');
    assert.equal(await text(eve, '#status'), 'The session is full.');
    assert.equal(await tone(eve), 'disconnected');
    assert.equal(await eve.isVisible('#rejoin'), true);
    assert.equal(await eve.evaluate(() => document.activeElement?.id), 'ov-over-title');
    await shot(eve, 'full', { narrow: true });

    // The page does not try again by itself.
    assert.equal(host.got.some((m) => m.type === 'guest_joined' && m.name === 'Eve'), false);

    host.send({ type: 'remove', guestId: deeId });
    await waitFor(() => dee.isVisible('#ov-over'), 'Dee\'s "removed" card');
    await eve.getByRole('button', { name: 'Try again' }).click();
    await waitState(eve, 'connected', 'Eve to be in after Try again');
    const eveId = await host.joined('Eve');
    host.data('welcome Eve');
    await waitIncoming(eve, ['welcome Eve'], 'Eve to get the host\'s frame');
    await sendFromPage(eve, 'thanks');
    await host.heard(eveId, 'thanks');
  });
});

test('a guest that reloads comes back as the same guest, with nothing lost or repeated either way', { timeout: 90_000 }, async (t) => {
  const node = await startNode(t);
  await withLogs(node, async () => {
    const host = await roomHost(t, node.port, { maxGuests: 2, admit: 'auto' });
    const ana = await newPage(t, node.port);
    await joinAs(ana, host.code, 'Ana');
    await waitState(ana, 'connected', 'Ana to be in (auto)');
    const anaId = await host.joined('Ana');
    host.data('m1');
    await waitIncoming(ana, ['m1'], 'Ana to get m1');
    await sendFromPage(ana, 'b1');
    await host.heard(anaId, 'b1');

    await ana.reload();
    await waitState(ana, 'connected', 'Ana to resume after the reload');
    await host.event('guest_back', anaId);
    assert.equal(await ana.evaluate(() => window.relayClient.guestId), anaId);
    assert.equal(await text(ana, '#session-title'), 'Messages with the host');
    host.data('m2');
    await waitIncoming(ana, ['m2'], 'Ana to get m2');
    await sendFromPage(ana, 'b2');
    await host.heard(anaId, 'b2');
    assert.deepEqual(await incoming(ana), ['m1', 'm2']);
    assert.deepEqual(host.tagged(), [[anaId, 'b1'], [anaId, 'b2']]);
  });
});
