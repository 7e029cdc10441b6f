// The page behind a proxy that refuses WebSocket (a real haproxy answering
// the upgrade 403, as corporate proxies do), in headless Chromium: it falls
// back to HTTP by itself, says so, and pairs end to end encrypted with
// `relay host` (Rust, on WebSocket straight to the relay), lines both ways.
// Behind a proxy that holds answers until they are whole, it also leaves
// the receive stream for long polls; and once a proxy lets WebSocket
// through again, /client.js moves back onto it mid-stream, losing nothing.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';

import {
  ARTIFACTS, Mac, Node, freePort, haproxyConfig, kill, openBrowser, screenshot, sendFromPage, startHost, state, tail, track,
  waitFor, waitIncoming,
} from './harness.js';

const started = [];
const dirs = [];
after(async () => {
  for (const c of started) await kill(c);
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tmpdir(name) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `relay-${name}-`));
  dirs.push(d);
  return d;
}

const HAPROXY = fs.existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : 'haproxy';

/** haproxy in front of `port`, refusing every WebSocket upgrade with 403; its port and log. */
async function refusingProxy(port) {
  const dir = tmpdir('haproxy');
  const listen = await freePort();
  const cfg = path.join(dir, 'haproxy.cfg');
  // The deployment's settings, refusing every upgrade at the frontend.
  const refuse = 'http-request deny deny_status 403 if { hdr(upgrade) -i websocket }';
  fs.writeFileSync(cfg, haproxyConfig(listen, [port], [refuse]));
  const logs = [];
  const child = track(spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] }));
  started.push(child);
  for (const s of [child.stdout, child.stderr]) {
    s.setEncoding('utf8');
    s.on('data', (c) => logs.push(...c.split('\n').filter(Boolean)));
  }
  await waitFor(
    () => new Promise((resolve) => {
      const s = net.connect(listen, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    }),
    'haproxy to listen',
  ).catch((e) => {
    throw new Error(`${e.message}\n${tail(logs)}`);
  });
  return { port: listen, logs };
}

/**
 * A proxy in front of `port` that holds every answer until it is whole (as
 * some antivirus products do) and passes no WebSocket upgrade; it records
 * the receive modes it forwarded.
 */
async function bufferingProxy(port) {
  const modes = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    if (req.url === '/http/receive') modes.push(JSON.parse(body.toString() || '{}').mode);
    const headers = { ...req.headers };
    for (const h of ['host', 'connection', 'content-length', 'transfer-encoding']) delete headers[h];
    try {
      const r = await fetch(`http://127.0.0.1:${port}${req.url}`, {
        method: req.method,
        headers,
        body: ['GET', 'HEAD'].includes(req.method) ? undefined : body,
      });
      const whole = Buffer.from(await r.arrayBuffer());
      const out = {};
      r.headers.forEach((v, k) => {
        if (!['content-length', 'transfer-encoding', 'connection', 'content-encoding'].includes(k)) out[k] = v;
      });
      res.writeHead(r.status, out);
      res.end(whole);
    } catch {
      res.writeHead(502);
      res.end();
    }
  });
  server.on('upgrade', (req, socket) => socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n'));
  const listen = await freePort();
  await new Promise((resolve) => server.listen(listen, '127.0.0.1', resolve));
  return {
    port: listen,
    modes,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/**
 * A plain proxy in front of `port` that streams answers as they come and
 * refuses the WebSocket upgrade (403) while `refuse` is set; when it is not,
 * upgrades are tunnelled to the relay.
 */
async function switchableProxy(port) {
  const state = { refuse: true, sockets: new Set() };
  const server = http.createServer((req, res) => {
    const up = http.request(
      { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers, agent: false },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('upgrade', (req, socket, head) => {
    if (state.refuse) {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    const up = net.connect(port, '127.0.0.1', () => {
      let head0 = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head0 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${head0}\r\n`);
      up.write(head);
      socket.pipe(up);
      up.pipe(socket);
    });
    for (const s of [up, socket]) {
      state.sockets.add(s);
      s.on('error', () => {
        up.destroy();
        socket.destroy();
      });
      s.on('close', () => state.sockets.delete(s));
    }
  });
  const listen = await freePort();
  await new Promise((resolve) => server.listen(listen, '127.0.0.1', resolve));
  return Object.assign(state, {
    port: listen,
    close: () => {
      for (const s of state.sockets) s.destroy();
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  });
}


test('behind a proxy that refuses WebSocket the page falls back to HTTP, says so, and pairs with relay host', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let browser;
  try {
    await node.start();
    const proxy = await refusingProxy(node.port);
    const h = await startHost(node.port, [], started);
    browser = await openBrowser('http-fallback');
    const { page, errors } = browser;

    // The page and its scripts come through the proxy (plain GETs pass).
    await page.goto(`http://127.0.0.1:${proxy.port}/#${h.code}`);
    await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
    await waitFor(() => page.$eval('#transport', (e) => e.dataset.transport === 'http'), 'the page to show the HTTP fallback');
    assert.match(await page.textContent('#transport'), /HTTP fallback/);
    assert.ok(
      proxy.logs.some((l) => l.includes('403') && l.includes('/browser')),
      `haproxy refused the page's WebSocket:\n${tail(proxy.logs)}`,
    );
    await waitFor(() => page.isVisible('#e2e'), 'the page to say it is end-to-end encrypted');
    await waitFor(() => h.out.err.includes('a browser joined'), 'the host to see the browser');

    h.child.stdin.write('over websocket, then http é\n');
    await waitIncoming(page, ['over websocket, then http é'], 'the page to show the host line');
    await sendFromPage(page, 'from chromium over http');
    await waitFor(() => h.out.out.includes('from chromium over http\n'), 'the host to print the page line');
    // haproxy logs a request when it ends: the page's sends (a receive stream is still open).
    assert.ok(proxy.logs.some((l) => l.includes('POST /http/send')), 'the page sent over HTTP');
    await screenshot(page, 'browser-http-fallback', { narrow: true });
    assert.deepEqual(errors, []);

    h.child.stdin.end();
    await waitFor(async () => (await state(page)) === 'disconnected', 'the page to see the session end');
  } catch (e) {
    throw new Error(`${e.message}\n${tail(node.logs)}`);
  } finally {
    await browser?.close();
    await kill(node.child);
  }
});

test('behind a proxy that holds answers until whole the page receives by long polls', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let browser;
  let proxy;
  try {
    await node.start();
    proxy = await bufferingProxy(node.port);
    const h = await startHost(node.port, [], started);
    browser = await openBrowser('http-fallback');
    const { page, errors } = browser;

    // ?ws-retry sets how often the page tries WebSocket again (2 minutes).
    await page.goto(`http://127.0.0.1:${proxy.port}/?ws-retry=2m#${h.code}`);
    await waitFor(async () => (await state(page)) === 'connected', 'the page to connect');
    await waitFor(() => page.$eval('#transport', (e) => e.dataset.transport === 'http'), 'the page to show the HTTP fallback');
    assert.equal(await page.evaluate('window.relayClient.transports.websocketRetry'), 120_000);
    await waitFor(() => h.out.err.includes('a browser joined'), 'the host to see the browser');
    h.child.stdin.write('held by the proxy, then polled\n');
    await waitIncoming(page, ['held by the proxy, then polled'], 'the page to show the host line');
    await sendFromPage(page, 'from chromium by poll');
    await waitFor(() => h.out.out.includes('from chromium by poll\n'), 'the host to print the page line');
    // The stream did not open in time, so the page polls from then on.
    assert.equal(proxy.modes[0], 'stream');
    assert.ok(proxy.modes.includes('poll'), `receive modes: ${proxy.modes.join(', ')}`);
    assert.ok(proxy.modes.lastIndexOf('stream') < proxy.modes.indexOf('poll'), `receive modes: ${proxy.modes.join(', ')}`);
    assert.deepEqual(errors, []);
  } catch (e) {
    throw new Error(`${e.message}\n${tail(node.logs)}`);
  } finally {
    await browser?.close();
    await proxy?.close();
    await kill(node.child);
  }
});

test('/client.js moves from the HTTP fallback back to WebSocket mid-stream once the proxy lets WebSocket through, losing nothing', { timeout: 90_000 }, async () => {
  const node = new Node('single', '');
  let browser;
  let proxy;
  let mac;
  try {
    await node.start();
    proxy = await switchableProxy(node.port);
    mac = await new Mac(`ws://127.0.0.1:${node.port}/mac`).opened();
    mac.send({ type: 'register' });
    const { code } = await mac.expect('registered');
    browser = await openBrowser('http-fallback');
    const { page, errors } = browser;
    await page.goto(`http://127.0.0.1:${proxy.port}/`);
    // A client of its own, probing for the WebSocket every half second.
    await page.evaluate(async (joinCode) => {
      const { RelayClient } = await import('/client.js');
      const client = new RelayClient({ storageKey: '', fallbackAfter: 1000, websocketRetry: 500 });
      window.probe = { client, got: [], transports: [] };
      client.on('data', (d) => window.probe.got.push(d.text));
      client.on('transport', (t) => {
        window.probe.transports.push(t.transport);
        window.probe.switchedAt = window.probe.got.length;
      });
      client.join(joinCode);
    }, code);
    const probe = (expr) => page.evaluate(expr);
    await waitFor(() => probe('window.probe.client.state === "connected"'), 'the client to join over HTTP');
    assert.deepEqual(await probe('window.probe.transports'), ['http']);
    await mac.expect('peer_joined');

    // Numbered frames both ways, while the proxy starts letting WebSocket through.
    const N = 300;
    let sent = 0;
    const pageSends = probe(`(async () => {
      for (let i = 1; i <= ${N}; i += 1) {
        window.probe.client.send('page ' + i);
        await new Promise((r) => setTimeout(r, 5));
      }
    })()`);
    for (let i = 1; i <= N; i += 1) {
      mac.data(`mac ${i}`);
      sent = i;
      if (sent === 100) proxy.refuse = false;
      // The last third goes once the page is back on WebSocket, so the move
      // happens in the middle of the stream.
      if (sent === 200) {
        await waitFor(async () => (await probe('window.probe.transports.length')) === 2, 'the move back to WebSocket');
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    await pageSends;
    await waitFor(async () => (await probe('window.probe.got.length')) >= N, 'every frame on the page');
    const want = (who) => Array.from({ length: N }, (_, i) => `${who} ${i + 1}`);
    assert.deepEqual(await probe('window.probe.got'), want('mac'), 'the page lost, doubled or reordered nothing');
    await waitFor(() => mac.payloads().length >= N, 'every frame at the Mac');
    assert.deepEqual(mac.payloads(), want('page'), 'the Mac lost, doubled or reordered nothing');
    assert.deepEqual(await probe('window.probe.transports'), ['http', 'websocket']);
    assert.ok((await probe('window.probe.switchedAt')) < N, 'the move came before the last frames');
    assert.deepEqual(errors, []);
  } catch (e) {
    throw new Error(`${e.message}\n${tail(node.logs)}`);
  } finally {
    await mac?.close();
    await browser?.close();
    await proxy?.close();
    await kill(node.child);
  }
});
