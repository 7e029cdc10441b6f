// The page pairs with `relay host` (Rust) end to end encrypted, in headless
// Chromium against a real relay: by opening the link the host prints (the
// code in the fragment, which the page takes off the address bar) and by
// typing the whole code; lines go both ways sealed and the relay logs none
// of them; a mistyped secret part stops both sides with the sentence.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import {
  ARTIFACTS, Node, WAIT, kill, openBrowser, sendFromPage, startHost, state, waitFor, waitIncoming, within,
} from './harness.js';

const started = [];
after(async () => {
  for (const c of started) await kill(c);
});


test('the page opened from the host link pairs encrypted with relay host, both ways', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let b;
  try {
    await node.start();
    const h = await startHost(node.port, [], started);
    assert.equal(h.link, `http://127.0.0.1:${node.port}/#${h.code}`);
    b = await openBrowser('e2e-link');
    const { page } = b;
    await page.goto(h.link);
    await waitFor(() => page.isVisible('#e2e'), 'the page to say it is end-to-end encrypted');
    // The secret is gone from the address bar (and so from the history).
    assert.equal(new URL(page.url()).hash, '');
    await waitFor(() => h.out.err.includes('end-to-end encrypted: the browser'), 'the host to say it is encrypted');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-e2e.png') });

    h.child.stdin.write('sealed from rust é\n');
    await waitIncoming(page, ['sealed from rust é'], 'the page to show the host line');
    await sendFromPage(page, 'sealed from chromium');
    await waitFor(() => h.out.out.includes('sealed from chromium\n'), 'the host to print the page line');
    assert.equal(await state(page), 'connected');
    for (const line of node.logs) {
      assert.ok(!line.includes('sealed from'), `the relay logged a plaintext: ${line}`);
    }
    assert.deepEqual(b.errors, []);

    // The host ends: the page hears its sealed end frame, so nothing was cut.
    h.child.stdin.end();
    await within(h.exited, WAIT, 'the host to exit');
    await waitFor(() => page.isVisible('#ov-over'), 'the page to show the session is over');
    const log = await page.$$eval('#log li', (els) => els.map((e) => e.textContent));
    assert.ok(!log.some((l) => l.includes('may have been cut')), JSON.stringify(log));
  } finally {
    await b?.close();
    await node.sigkill();
  }
});

test('a mistyped secret part stops the page and relay host with the sentence', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let b;
  try {
    await node.start();
    const h = await startHost(node.port, [], started);
    const wrong = `${h.code.slice(0, 7)}${h.code.endsWith('33333') ? '44444' : '33333'}`;
    b = await openBrowser('e2e-wrong');
    const { page } = b;
    await page.goto(`http://127.0.0.1:${node.port}/`);
    await page.getByLabel('Code shown on the Mac').fill(wrong.toLowerCase());
    await page.getByRole('button', { name: 'Connect' }).click();
    await waitFor(() => page.isVisible('#ov-over'), 'the page to stop');
    const said = await page.textContent('#ov-over');
    assert.match(said, /mistyped or someone else tried it/);
    assert.equal(await within(h.exited, WAIT, 'the host to exit'), 6);
    assert.match(h.out.err, /the code was mistyped or someone else tried it/);
  } finally {
    await b?.close();
    await node.sigkill();
  }
});

// A host written in the browser with /e2e.js (Chromium), speaking /mac.
// Returns the full code once registered; the page's window gets `host`.
async function browserHost(page, port) {
  await page.goto(`http://127.0.0.1:${port}/?host`);
  return page.evaluate(async () => {
    const e2e = await import('/e2e.js');
    const h = { got: [], encrypted: false, failed: null };
    window.host = h;
    const ws = new WebSocket(`ws://${location.host}/mac`);
    ws.binaryType = 'arraybuffer';
    const data = (payload) => ws.send(JSON.stringify({ type: 'data', payload }));
    let run = null;
    let channel = null;
    let chain = Promise.resolve();
    const code = new Promise((resolve) => {
      ws.onmessage = (ev) => {
        chain = chain.then(async () => {
          if (typeof ev.data !== 'string') {
            const plain = await channel.open(ev.data);
            if (plain.text !== undefined) h.got.push(plain.text);
            return;
          }
          const m = JSON.parse(ev.data);
          if (m.type === 'registered') {
            const secret = e2e.newSecret();
            run = new e2e.Host(m.code, secret);
            resolve(`${m.code}-${secret}`);
          } else if (m.type === 'peer_joined') {
            data(run.start());
          } else if (m.type === 'data') {
            const p = e2e.parsePayload(m.payload);
            if (p.step === 'joinerHello') await run.onShare(p.share);
            else if (p.step === 'confirm') {
              const ok = await run.confirm(p.tag);
              if (!ok) {
                data(e2e.message.abort('mismatch'));
                h.failed = 'mismatch';
                return;
              }
              channel = ok.channel;
              data(ok.payload);
              h.encrypted = true;
            }
          }
        }).catch((e) => { h.failed = String(e); });
      };
    });
    ws.onopen = () => ws.send(JSON.stringify({ type: 'register' }));
    h.send = async (text) => ws.send(await channel.seal(text, channel.take()));
    return code;
  });
}

test('two Chromiums pair encrypted: a host written with /e2e.js and the page', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let a;
  let b;
  try {
    await node.start();
    a = await openBrowser('e2e-host');
    const full = await browserHost(a.page, node.port);
    assert.match(full, /^[0-9A-Z]{6}-[0-9A-Z]{5}$/);
    b = await openBrowser('e2e-page');
    await b.page.goto(`http://127.0.0.1:${node.port}/#${full}`);
    await waitFor(() => b.page.isVisible('#e2e'), 'the page to say it is end-to-end encrypted');
    await waitFor(() => a.page.evaluate(() => window.host.encrypted), 'the browser host to confirm');
    await a.page.evaluate(() => window.host.send('sealed from a chromium host'));
    await waitIncoming(b.page, ['sealed from a chromium host'], 'the page to show the host line');
    await sendFromPage(b.page, 'sealed from the chromium page');
    await waitFor(
      () => a.page.evaluate(() => window.host.got.includes('sealed from the chromium page')),
      'the browser host to open the page line',
    );
    assert.equal(await a.page.evaluate(() => window.host.failed), null);
    for (const line of node.logs) assert.ok(!line.includes('sealed from'), `the relay logged a plaintext: ${line}`);
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await a?.close();
    await b?.close();
    await node.sigkill();
  }
});

test('the page given a whole code refuses a Mac that does not encrypt, sending it nothing', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let b;
  try {
    await node.start();
    const { child, out, code } = await startHost(node.port, ['--no-e2e'], started);
    b = await openBrowser('e2e-plain-mac');
    await b.page.goto(`http://127.0.0.1:${node.port}/#${code}-K7P3X`);
    await waitFor(() => out.err.includes('browser joined'), 'the plain host to see the page');
    child.stdin.write('in clear\n');
    await waitFor(() => b.page.isVisible('#ov-over'), 'the page to stop');
    assert.match(await b.page.textContent('#ov-over'), /does not use end-to-end encryption/);
    assert.equal(await b.page.isVisible('#e2e'), false);
    // Only the page's abort reached the host: no line of the person's.
    assert.ok(out.out.split('\n').filter(Boolean).every((l) => l.includes('"abort"')), out.out);
  } finally {
    await b?.close();
    await node.sigkill();
  }
});
