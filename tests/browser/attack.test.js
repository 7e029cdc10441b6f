// The page joins with an 8-character code (issue 16): a relay node under a
// guessing attack (one wrong code past RELAY_FAILED_JOIN_LIMIT=1) hands the
// Mac an 8-character code, and a person types it into the page in headless
// Chromium, in lower case with a dash, and pairs. A 7-character code is
// caught by the page before anything is sent.
//
// Needs: the debug relay binary, redis-server and /usr/bin/chromium, as
// page.test.js. Every process started here is killed at the end.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Mac, Node, kill, startRedis, state, tail, waitFor, chromiumForFile } from './harness.js';

const newPage = chromiumForFile('attack');

/** The value of a metric sample on `node`, or undefined. */
async function metric(node, sample) {
  const body = await (await fetch(`http://127.0.0.1:${node.port}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${sample} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

test('under a guessing attack the Mac gets an 8-character code and the page joins with it', { timeout: 90_000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-attack-test-'));
  let redis;
  let node;
  let mac;
  let guesser;
  try {
    redis = await startRedis(tmp);
    node = await new Node('node-1', redis.url, {
      RELAY_FAILED_JOIN_LIMIT: '1',
      RELAY_UNDER_ATTACK_FOR: '10m',
    }).start();
    const page = await newPage();
    await page.goto(`http://127.0.0.1:${node.port}/`);

    // One wrong code is past the limit of 1: the cluster is under attack.
    guesser = await new Mac(`ws://127.0.0.1:${node.port}/browser`).opened();
    guesser.send({ type: 'join', code: 'YYYYYY' });
    const e = await guesser.expect('error');
    assert.equal(e.code, 'INVALID_CODE');
    await waitFor(async () => (await metric(node, 'relay_under_attack')) === 1, 'the node to see the attack');

    mac = await new Mac(`ws://127.0.0.1:${node.port}/mac`).opened();
    mac.send({ type: 'register' });
    const { code } = await mac.expect('registered');
    assert.match(code, /^[346789ABCDEFGHJKLMNPQRTUVWXY]{8}$/);

    // A code one character short is caught by the page.
    const input = page.getByLabel('Code shown on the Mac');
    await input.fill(code.slice(0, 7));
    await page.getByRole('button', { name: 'Connect' }).click();
    await waitFor(async () => (await page.textContent('#code-error')).includes('7'), 'the page to refuse 7 characters');

    await input.fill(`${code.slice(0, 4)}-${code.slice(4)}`.toLowerCase());
    await page.getByRole('button', { name: 'Connect' }).click();
    await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
    await mac.expect('peer_joined');
  } catch (err) {
    if (node) console.error(`---- relay log (last lines) ----\n${tail(node.logs, 60)}`);
    throw err;
  } finally {
    await mac?.close();
    await guesser?.close();
    await node?.sigkill();
    await kill(redis?.child);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
