// What the browser tests share: real relay processes (and a Redis), a TCP
// proxy in front of a node whose behaviour a test switches (pass, hold,
// refuse), a Mac-side WebSocket client, Debian's headless Chromium, and
// screenshots of the page checked with axe-core. Every process started here
// is killed when the test process exits, also on failure; every wait is
// bounded.

import { after, before } from 'node:test';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import assert from 'node:assert/strict';

import { chromium } from 'playwright-core';
import { WebSocket } from 'ws';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const RELAY_BIN = path.resolve(ROOT, process.env.RELAY_BIN ?? 'target/debug/relay');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const ARTIFACTS = path.join(ROOT, 'target', 'test-artifacts');
/** Longest any single wait may take. */
export const WAIT = 15_000;
/** Longest the page may take to come back after node 1 is up again (backoff up to 8 s × 1.25). */
export const RECONNECT_WAIT = 30_000;

/** axe-core, the accessibility checker, injected into the page for each state. */
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
export const DESKTOP = { width: 900, height: 760 };
export const NARROW = { width: 390, height: 844 };

// ---- small helpers -------------------------------------------------------

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(check, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Ports Chromium refuses to open (net::ERR_UNSAFE_PORT) among those this
 * machine's kernel hands out for port 0 (ip_local_port_range starts at
 * 1024 here): a page on one of them fails to load, whatever the relay does.
 */
const CHROMIUM_UNSAFE = new Set([1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000,
  6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080]);

/** Whether Chromium loads pages from `port`. */
export const chromiumSafe = (port) => !CHROMIUM_UNSAFE.has(port);

export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.on('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const { port: p } = s.address();
        s.close(() => resolve(p));
      });
    });
    if (chromiumSafe(port)) return port;
  }
}

/** Every child process started by this file, killed at the end whatever happens. */
export const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // Gone already.
    }
  }
});

export function track(child) {
  children.add(child);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.exited.then(() => children.delete(child));
  return child;
}

/** `promise`, or an error after `ms` (the timer does not outlive it). */
export async function within(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export async function kill(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await within(child.exited, WAIT, `pid ${child.pid} to exit`);
}

export function tail(lines, n = 40) {
  return lines.slice(-n).join('\n');
}

/** GET http://addr/path → status (or the error's message). */
export function httpStatus(port, p) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve(e.message));
  });
}

// ---- Redis -----------------------------------------------------------------

export function redisPings(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('*1\r\n$4\r\nPING\r\n'));
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

export async function startRedis(dir) {
  let last = '';
  for (let i = 0; i < 5; i++) {
    const port = await freePort();
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--dir', dir, '--logfile', path.join(dir, 'redis.log')];
    const child = track(spawn('redis-server', args, { stdio: 'ignore' }));
    const spawnError = new Promise((resolve) => child.once('error', (e) => resolve(e)));
    const ok = await Promise.race([
      waitFor(() => redisPings(port), `redis on ${port}`, WAIT).then(() => true, () => false),
      child.exited.then(() => false),
      spawnError.then((e) => { last = `cannot run redis-server (is it installed? make deps): ${e.message}`; return false; }),
    ]);
    if (ok) return { child, port, url: `redis://127.0.0.1:${port}` };
    await kill(child);
    last ||= `redis-server on ${port} did not answer`;
  }
  throw new Error(last);
}

// ---- relay nodes -------------------------------------------------------------

export class Node {
  /** `env`: extra RELAY_* settings (e.g. a short RELAY_GRACE). */
  constructor(id, redisUrl, env = {}) {
    this.id = id;
    this.redisUrl = redisUrl;
    this.extraEnv = env;
    this.logs = [];
    this.child = null;
    this.port = null;
  }

  /** Starts the relay on `listen` and waits until /readyz answers 200. */
  async start(listen = '127.0.0.1:0') {
    const env = {
      RELAY_LISTEN: listen,
      RELAY_LOG_FORMAT: 'json',
      RELAY_LOG: 'relay=debug,info',
      RELAY_NODE_ID: this.id,
      RELAY_REDIS_URL: this.redisUrl,
      RELAY_JOIN_RATE: '0',
      RELAY_WORKERS: '2',
      ...this.extraEnv,
    };
    const child = track(spawn(RELAY_BIN, [], { env, stdio: ['ignore', 'ignore', 'pipe'] }));
    this.child = child;
    this.logs.push(`---- ${this.id} started on ${listen} ----`);
    let pending = '';
    const listening = new Promise((resolve, reject) => {
      child.once('error', (e) => reject(new Error(`cannot run ${RELAY_BIN} (build it: cargo build --bin relay): ${e.message}`)));
      child.exited.then(({ code, signal }) => reject(new Error(`${this.id} exited (${code ?? signal}) before listening:\n${tail(this.logs)}`)));
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        pending += chunk;
        const lines = pending.split('\n');
        pending = lines.pop();
        for (const line of lines) {
          this.logs.push(line);
          if (this.logs.length > 3000) this.logs.shift();
          try {
            const v = JSON.parse(line);
            if (v.fields?.message === 'relay listening') resolve(v.fields.addr);
          } catch {
            // Not JSON: keep it for the log tail only.
          }
        }
      });
    });
    const addr = await within(listening, WAIT, `${this.id} to log "relay listening"`).catch((e) => {
      throw new Error(`${e.message}\n${tail(this.logs)}`);
    });
    this.port = Number(addr.split(':').pop());
    if (listen.endsWith(':0') && !chromiumSafe(this.port)) {
      // The kernel's pick is one Chromium will not open: pick again.
      await kill(this.child);
      this.logs.push(`---- ${this.id} got port ${this.port}, which Chromium refuses; starting again ----`);
      return this.start(listen);
    }
    await waitFor(async () => (await httpStatus(this.port, '/readyz')) === 200, `${this.id} /readyz 200`);
    return this;
  }

  /** SIGSTOP: the node freezes (its sockets stay open, nothing is answered). */
  sigstop() {
    this.child?.kill('SIGSTOP');
  }

  /** SIGCONT: a frozen node carries on. */
  sigcont() {
    this.child?.kill('SIGCONT');
  }

  /** SIGKILL: the node dies without a word. */
  async sigkill() {
    await kill(this.child);
  }

  /** Starts it again on the same port if it can, else on a new one. */
  async restart() {
    for (let i = 0; i < 10; i++) {
      try {
        return await this.start(`127.0.0.1:${this.port}`);
      } catch (e) {
        await kill(this.child);
        this.logs.push(`---- restart on ${this.port} failed: ${e.message.split('\n')[0]} ----`);
        await sleep(200);
      }
    }
    return this.start('127.0.0.1:0');
  }
}

// ---- a TCP proxy in front of node 1 ------------------------------------------

/**
 * A TCP proxy to `target.port`. Its `mode` decides what a new connection
 * gets: 'pass' (forwarded), 'hold' (accepted, never answered: an attempt
 * that hangs) or 'refuse' (closed at once: the relay cannot be reached).
 * `cut()` drops every open connection.
 */
export async function startProxy(target) {
  const sockets = new Set();
  const held = new Set();
  const proxy = { mode: 'pass' };
  const server = net.createServer((client) => {
    if (proxy.mode === 'refuse') {
      client.destroy();
      return;
    }
    if (proxy.mode === 'hold') {
      held.add(client);
      client.on('error', () => {});
      client.on('close', () => held.delete(client));
      return;
    }
    const upstream = net.connect(target.port, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const cut = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on('error', cut);
      s.on('close', cut);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await freePort();
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(port, '127.0.0.1', () => {
      Object.assign(proxy, {
        port: server.address().port,
        cut() {
          for (const s of [...sockets, ...held]) s.destroy();
        },
        close() {
          proxy.cut();
          return new Promise((r) => server.close(() => r()));
        },
      });
      resolve(proxy);
    });
  });
}

// ---- the Mac side: a plain WebSocket client ----------------------------------

export class Mac {
  constructor(url) {
    this.got = [];
    this.ws = new WebSocket(url);
    this.ws.on('message', (data, isBinary) => {
      this.got.push(isBinary ? { binary: Buffer.from(data) } : JSON.parse(data.toString()));
    });
    this.ws.on('error', () => {});
  }

  async opened() {
    await waitFor(() => this.ws.readyState === WebSocket.OPEN, 'the Mac connection');
    return this;
  }

  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }

  data(payload) {
    this.send({ type: 'data', payload });
  }

  binary(text) {
    this.ws.send(Buffer.from(text), { binary: true });
  }

  /** Waits for a control message of `type`; returns it. */
  expect(type) {
    return waitFor(() => this.got.find((m) => m.type === type), `the Mac to receive ${type}`);
  }

  /** The data payloads received, in order. */
  payloads() {
    return this.got.filter((m) => m.type === 'data').map((m) => m.payload);
  }

  /** Data frames received (text and binary). */
  dataCount() {
    return this.got.filter((m) => m.type === 'data' || m.binary).length;
  }

  async close() {
    this.ws.terminate();
  }
}

// ---- the page ----------------------------------------------------------------

export const incoming = (page) => page.$$eval('#log li.msg.in .body', (els) => els.map((e) => e.textContent));
export const state = (page) => page.$eval('#status', (e) => e.dataset.state);
export const bannerShown = (page) => page.$eval('#banner', (e) => e.dataset.shown === 'true');

/**
 * `relay host --url ws://127.0.0.1:PORT --qr never` plus `extra` flags,
 * added to `started` (the caller kills those when its file ends) once it
 * printed its code: `{child, out, code, link, exited}`; `out.err` and
 * `out.out` grow with its stderr and stdout, `code` is the full code
 * (plain with `--no-e2e`), `link` the one it prints beside it (null with
 * `--no-e2e`), `exited` resolves to its exit status.
 */
export async function startHost(port, extra, started) {
  const args = ['host', '--url', `ws://127.0.0.1:${port}`, '--qr', 'never', ...extra];
  const child = track(spawn(RELAY_BIN, args, { stdio: ['pipe', 'pipe', 'pipe'] }));
  started.push(child);
  const out = { err: '', out: '' };
  child.stderr.setEncoding('utf8');
  child.stdout.setEncoding('utf8');
  child.stderr.on('data', (c) => (out.err += c));
  child.stdout.on('data', (c) => (out.out += c));
  const exited = new Promise((res) => child.once('exit', (c) => res(c)));
  if (extra.includes('--no-e2e')) {
    // A plain code, and no link.
    const code = await waitFor(() => out.err.match(/code ([0-9A-Z]{6}):/)?.[1], 'the plain code');
    return { child, out, code, link: null, exited };
  }
  const code = await waitFor(() => out.err.match(/code ([0-9A-Z]{6}-[0-9A-Z]{5}):/)?.[1], 'the full code');
  const link = await waitFor(() => out.err.match(/ or open (\S+) \(/)?.[1], 'the link');
  return { child, out, code, link, exited };
}

/**
 * deploy/local/haproxy.cfg (what `make cluster` runs, and what the Rust
 * tests' balancer fixture, tests/support/cluster.rs `Lb`, reads too) with
 * its `bind` line on 127.0.0.1:`listen`, its `server` lines for `ports`,
 * and `frontend` lines added after the bind (e.g. a rule refusing the
 * WebSocket upgrade).
 */
export function haproxyConfig(listen, ports, frontend = []) {
  const shared = fs.readFileSync(path.join(ROOT, 'deploy/local/haproxy.cfg'), 'utf8');
  const out = [];
  let servers = false;
  for (const line of shared.split('\n')) {
    const t = line.trimStart();
    if (t.startsWith('bind ')) {
      out.push(`    bind 127.0.0.1:${listen}`, ...frontend.map((l) => `    ${l}`));
    } else if (t.startsWith('server ')) {
      if (!servers) ports.forEach((p, i) => out.push(`    server node-${i + 1} 127.0.0.1:${p}`));
      servers = true;
    } else {
      out.push(line);
    }
  }
  assert.ok(servers, 'deploy/local/haproxy.cfg has no server lines');
  return out.join('\n');
}

/** Fails the test at once, saying what to do, when the relay binary or Chromium is missing. */
export function needBinaries() {
  for (const [what, p] of [['relay binary', RELAY_BIN], ['chromium', CHROMIUM]]) {
    assert.ok(fs.existsSync(p), `${what} missing at ${p} (make deps; cargo build --bin relay)`);
  }
}

/**
 * A headless Chromium with a fresh profile in a temporary directory of its
 * own (`name` in its name), after checking the relay binary and Chromium
 * are there: `{context, page, errors, close}`, `page` its first page,
 * `errors` that page's uncaught errors. `close()` ends Chromium and removes
 * the directory; call it in a `finally`.
 */
export async function openBrowser(name) {
  needBinaries();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `relay-${name}-chromium-`));
  const profile = path.join(tmp, 'chromium-profile');
  fs.mkdirSync(profile);
  const removeTmp = () => fs.rmSync(tmp, { recursive: true, force: true });
  let context;
  try {
    context = await launchChromium(profile);
  } catch (e) {
    removeTmp();
    throw e;
  }
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const close = async () => {
    await context.close().catch(() => {});
    removeTmp();
  };
  return { context, page, errors, close };
}

/**
 * One headless Chromium for a whole test file ([`openBrowser`] in the
 * file's before/after hooks); returns a function that opens a new page.
 */
export function chromiumForFile(name) {
  let browser;
  before(async () => {
    browser = await openBrowser(name);
  });
  after(async () => {
    await browser?.close();
  });
  return () => browser.context.newPage();
}

/** The trimmed text of `sel` on `page`. */
export const text = (page, sel) => page.textContent(sel).then((t) => t.trim());

/** The status indicator's tone (green, yellow, red, gray). */
export const tone = (page) => page.$eval('#status', (e) => e.dataset.tone);

/** Debian's headless Chromium with a fresh profile in `profile`, every wait bounded. */
export async function launchChromium(profile) {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-sync'],
    viewport: { width: 900, height: 760 },
    timeout: WAIT,
  });
  context.setDefaultTimeout(WAIT);
  return context;
}

export async function sendFromPage(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByRole('button', { name: 'Send', exact: true }).click();
}

export async function waitIncoming(page, want, what) {
  await waitFor(async () => {
    const got = await incoming(page);
    return want.every((w) => got.includes(w));
  }, what, RECONNECT_WAIT).catch(async (e) => {
    throw new Error(`${e.message}; the page shows ${JSON.stringify(await incoming(page))}`);
  });
}

// ---- screenshots and accessibility -------------------------------------------

/** No axe-core violations (WCAG 2 A and AA rules) in the page as it is now. */
export async function assertAccessible(page, name) {
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa'] } });
    return r.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
  });
  assert.deepEqual(violations, [], `accessibility of ${name}`);
}

/**
 * Screenshot at desktop width; with `narrow`, also at 390 px, checking nothing
 * spills sideways. Each state is also checked for accessibility.
 */
export async function screenshot(page, name, { narrow = false, card = null } = {}) {
  await assertAccessible(page, name);
  if (card) await assertBeside(page, card);
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
  if (!narrow) return;
  await page.setViewportSize(NARROW);
  try {
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= NARROW.width, `at 390 px the page is ${wide} px wide`);
    if (card) await assertBeside(page, card);
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}-390.png`), fullPage: true });
  } finally {
    await page.setViewportSize(DESKTOP);
  }
}

/** The card `sel` is shown and does not cover the conversation (above or below it, never over it). */
export async function assertBeside(page, sel) {
  const card = await page.locator(sel).boundingBox();
  const conv = await page.locator('.conversation').boundingBox();
  assert.ok(card && conv, `${sel} and the conversation are shown`);
  const apart = card.y + card.height <= conv.y + 0.5 || card.y >= conv.y + conv.height - 0.5;
  assert.ok(apart, `${sel} (${JSON.stringify(card)}) covers the conversation (${JSON.stringify(conv)})`);
}
