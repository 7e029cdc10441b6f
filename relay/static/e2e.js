// End-to-end encryption of the browser side (`relay-e2e/1`, the "End-to-end
// encryption" section of PROTOCOL.md): full codes, the CPace key exchange
// as the joiner, key confirmation, and AES-256-GCM frames numbered as the
// relay counts them. The group and SHA-512 are noble's (./noble.js, audited,
// vendored with their licences); HKDF, HMAC and AES-GCM are WebCrypto's.
// Nothing here touches a socket: client.js drives it with the frames it
// receives. The Rust twin is shared/src/e2e/; the draft's test vectors pin
// both (tests/browser/e2e.test.js).

import { ristretto255, ristretto255_hasher, bytesToNumberLE, sha512 } from './noble.js';

export const VERSION = 'relay-e2e/1';
/** Characters of the secret part: 28^5 ≈ 2^24. */
export const SECRET_LEN = 5;
const CODE_LEN = 6;
/** A relay code issued while the relay is under a guessing attack. */
const LONG_CODE_LEN = 8;
const ALPHABET = '346789ABCDEFGHJKLMNPQRTUVWXY';
/** First byte of a sealed frame, and its associated data. */
const SEALED = 1;
const KIND = { text: 1, binary: 2, end: 3 };
/** The handshake frames each side sends: its first sealed frame is number 3. */
const HANDSHAKE_FRAMES = 2;
/** What both people are told when the key confirmation fails. */
export const MISMATCH = 'the code was mistyped or someone else tried it';

const DSI = utf8('CPaceRistretto255');
const DSI_ISK = utf8('CPaceRistretto255_ISK');
const S_IN_BYTES = 128;
const AD_HOST = utf8('host');
const AD_JOINER = utf8('joiner');
const { Point } = ristretto255;

function utf8(s) {
  return new TextEncoder().encode(s);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** `prepend_len`: the length as LEB128, then the bytes. */
export function prependLen(data) {
  const len = [];
  let n = data.length;
  do {
    const low = n & 0x7f;
    n >>>= 7;
    len.push(n === 0 ? low : low | 0x80);
  } while (n !== 0);
  return concat(Uint8Array.from(len), data);
}

/** `lv_cat`: each part with its length in front. */
export function lvCat(...parts) {
  return concat(...parts.map(prependLen));
}

/** `generator_string(DSI, PRS, CI, sid, 128)`. */
export function generatorString(prs, ci, sid) {
  const zpad = Math.max(0, S_IN_BYTES - 1 - prependLen(prs).length - prependLen(DSI).length);
  return lvCat(DSI, prs, new Uint8Array(zpad), ci, sid);
}

/** `calculate_generator`: SHA-512, then ristretto255 element derivation. */
export function generator(prs, ci, sid) {
  return ristretto255_hasher.deriveToCurve(sha512(generatorString(prs, ci, sid)));
}

/** A scalar from 64 random bytes, reduced mod the group order. */
export function scalar(wide) {
  return Point.Fn.create(bytesToNumberLE(wide));
}

function randomScalar() {
  for (;;) {
    const y = scalar(crypto.getRandomValues(new Uint8Array(64)));
    if (y !== 0n) return y;
  }
}

/** `Y = encode(y·g)`. */
export function share(y, g) {
  return g.multiply(y).toBytes();
}

/** `scalar_mult_vfy`: null for a share that does not decode, or the identity. */
export function secretPoint(y, peer) {
  let p;
  try {
    p = Point.fromBytes(peer);
  } catch {
    return null;
  }
  const k = p.multiply(y);
  return k.is0() ? null : k.toBytes();
}

/** `transcript_ir(Ya, ADa, Yb, ADb)`. */
export function transcript(ya, ada, yb, adb) {
  return concat(lvCat(ya, ada), lvCat(yb, adb));
}

/** `ISK = SHA-512(lv_cat(DSI_ISK, sid, K) || transcript)`. */
export function isk(sid, k, t) {
  return sha512(concat(lvCat(DSI_ISK, sid, k), t));
}

// ---- codes ------------------------------------------------------------

/**
 * Reads a code as typed, or a link with one in its fragment: `{relay,
 * secret}` (secret null for a plain code of 6, or 8 while the relay is under
 * attack), or null when it is not 6, 8, 11 or 13 characters of the alphabet
 * (the lengths tell the parts apart: 11 and 13 are 6 and 8 with a secret).
 */
export function parseFullCode(typed) {
  let s = String(typed ?? '');
  const hash = s.lastIndexOf('#');
  if (hash >= 0) s = s.slice(hash + 1);
  const chars = s.replace(/[\s-]/g, '').toUpperCase();
  if (![...chars].every((c) => ALPHABET.includes(c))) return null;
  if (chars.length === CODE_LEN || chars.length === LONG_CODE_LEN) return { relay: chars, secret: null };
  if (chars.length === CODE_LEN + SECRET_LEN || chars.length === LONG_CODE_LEN + SECRET_LEN) {
    const cut = chars.length - SECRET_LEN;
    return { relay: chars.slice(0, cut), secret: chars.slice(cut) };
  }
  return null;
}

// ---- handshake messages ------------------------------------------------

export function b64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function unb64url(s, n, field) {
  if (typeof s !== 'string' || !/^[A-Za-z0-9_-]*$/.test(s)) throw new Error(`${field} is not unpadded base64url`);
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
  if (bin.length !== n) throw new Error(`${field} has ${bin.length} bytes, not ${n}`);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/**
 * Reads a `data` payload: {kind: 'other'} for application text,
 * {kind: 'invalid', why} for a broken `relay-e2e/1` message, or
 * {kind: 'handshake', step, ...fields as bytes}.
 */
export function parsePayload(text) {
  if (typeof text !== 'string' || !text.trimStart().startsWith('{')) return { kind: 'other' };
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    return { kind: 'other' };
  }
  if (m === null || typeof m !== 'object' || Array.isArray(m) || !('e2e' in m)) return { kind: 'other' };
  try {
    if (m.e2e !== VERSION) throw new Error(`version ${JSON.stringify(m.e2e)} is not ${VERSION}`);
    switch (m.step) {
      case 'hello':
        if (m.sid !== undefined) {
          return { kind: 'handshake', step: 'hostHello', sid: unb64url(m.sid, 16, 'sid'), share: unb64url(m.share, 32, 'share') };
        }
        return { kind: 'handshake', step: 'joinerHello', share: unb64url(m.share, 32, 'share') };
      case 'confirm':
        return { kind: 'handshake', step: 'confirm', tag: unb64url(m.tag, 64, 'tag') };
      case 'abort':
        if (!['mismatch', 'no_secret', 'invalid', 'timeout'].includes(m.reason)) throw new Error('unknown abort reason');
        return { kind: 'handshake', step: 'abort', reason: m.reason };
      default:
        throw new Error(`unknown step ${JSON.stringify(m.step)}`);
    }
  } catch (e) {
    return { kind: 'invalid', why: String(e.message ?? e) };
  }
}

/** The payloads of the joiner's messages. */
export const message = {
  hello: (share) => JSON.stringify({ e2e: VERSION, step: 'hello', share: b64url(share) }),
  confirm: (tag) => JSON.stringify({ e2e: VERSION, step: 'confirm', tag: b64url(tag) }),
  abort: (reason) => JSON.stringify({ e2e: VERSION, step: 'abort', reason }),
};

// ---- keys --------------------------------------------------------------

const subtle = () => globalThis.crypto.subtle;

async function hkdf(ikm, salt, info) {
  const key = await subtle().importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  const bits = await subtle().deriveBits({ name: 'HKDF', hash: 'SHA-512', salt, info: utf8(`${VERSION} ${info}`) }, key, 256);
  return new Uint8Array(bits);
}

async function hmacKey(raw) {
  return subtle().importKey('raw', raw, { name: 'HMAC', hash: 'SHA-512' }, false, ['sign', 'verify']);
}

async function aesKey(raw) {
  return subtle().importKey('raw', raw, 'AES-GCM', false, ['encrypt', 'decrypt']);
}

function nonce(n) {
  const iv = new Uint8Array(12);
  new DataView(iv.buffer).setBigUint64(4, BigInt(n));
  return iv;
}

/** Why a sealed frame was refused: the session must stop. */
export class Tampered extends Error {}

/** The joiner's run of the exchange. */
export class Joiner {
  /** `relay`: the 6 relay characters; `secret`: the 5 secret ones. */
  constructor(relay, secret, guestId = null) {
    this.prs = utf8(secret);
    this.ci = guestId === null ? lvCat(utf8(VERSION), utf8(relay)) : lvCat(utf8(VERSION), utf8(relay), utf8(String(guestId)));
    this.keys = null;
  }

  /**
   * Answers the host's hello: the payloads of the joiner's hello and confirm,
   * to send in that order. Throws Tampered for a share that is not usable.
   */
  async answer(sid, ya) {
    const g = generator(this.prs, this.ci, sid);
    const y = randomScalar();
    const yb = share(y, g);
    const k = secretPoint(y, ya);
    if (!k) throw new Tampered('the other side sent an invalid key exchange message');
    const t = transcript(ya, AD_HOST, yb, AD_JOINER);
    const ikm = isk(sid, k, t);
    this.transcript = t;
    this.hostConfirm = await hmacKey(await hkdf(ikm, sid, 'confirm host'));
    const joinerTag = new Uint8Array(await subtle().sign('HMAC', await hmacKey(await hkdf(ikm, sid, 'confirm joiner')), t));
    this.send = await aesKey(await hkdf(ikm, sid, 'joiner to host'));
    this.receive = await aesKey(await hkdf(ikm, sid, 'host to joiner'));
    return [message.hello(yb), message.confirm(joinerTag)];
  }

  /** Checks the host's tag (constant time, WebCrypto's verify): the channel, or null on a mismatch. */
  async confirm(tag) {
    const ok = await subtle().verify('HMAC', this.hostConfirm, tag, this.transcript);
    return ok ? new Channel(this.send, this.receive) : null;
  }
}

/** What an older client shows of the host's hello (PROTOCOL.md's `note`). */
export const HELLO_NOTE = 'This session is end-to-end encrypted: join with a client that supports it, using the whole code (with the part after the dash).';

/** A fresh secret part: SECRET_LEN characters of the alphabet, uniformly (rejection sampling). */
export function newSecret() {
  let s = '';
  while (s.length < SECRET_LEN) {
    for (const b of crypto.getRandomValues(new Uint8Array(16))) {
      // 252 = 9 × 28: bytes above it would favour the first letters.
      if (b < 252 && s.length < SECRET_LEN) s += ALPHABET[b % ALPHABET.length];
    }
  }
  return s;
}

/**
 * The host's run of the exchange (the page itself only joins; this is for
 * an application that hosts from a browser, and for the tests).
 */
export class Host {
  constructor(relay, secret, guestId = null) {
    this.prs = utf8(secret);
    this.ci = guestId === null ? lvCat(utf8(VERSION), utf8(relay)) : lvCat(utf8(VERSION), utf8(relay), utf8(String(guestId)));
  }

  /** Starts the run: the payload of the host's hello. */
  start() {
    this.sid = crypto.getRandomValues(new Uint8Array(16));
    this.y = randomScalar();
    this.ya = share(this.y, generator(this.prs, this.ci, this.sid));
    return JSON.stringify({ e2e: VERSION, step: 'hello', sid: b64url(this.sid), share: b64url(this.ya), note: HELLO_NOTE });
  }

  /** Takes the joiner's share; throws Tampered for one that is not usable. */
  async onShare(yb) {
    const k = secretPoint(this.y, yb);
    if (!k) throw new Tampered('the other side sent an invalid key exchange message');
    const t = transcript(this.ya, AD_HOST, yb, AD_JOINER);
    const ikm = isk(this.sid, k, t);
    this.transcript = t;
    this.joinerConfirm = await hmacKey(await hkdf(ikm, this.sid, 'confirm joiner'));
    this.tag = new Uint8Array(await subtle().sign('HMAC', await hmacKey(await hkdf(ikm, this.sid, 'confirm host')), t));
    this.send = await aesKey(await hkdf(ikm, this.sid, 'host to joiner'));
    this.receive = await aesKey(await hkdf(ikm, this.sid, 'joiner to host'));
  }

  /**
   * Checks the joiner's tag: {channel, payload} (the host's confirm to
   * send), or null on a mismatch (send `abort` `mismatch`, never the tag).
   */
  async confirm(tag) {
    const ok = await subtle().verify('HMAC', this.joinerConfirm, tag, this.transcript);
    if (!ok) return null;
    return { channel: new Channel(this.send, this.receive), payload: message.confirm(this.tag) };
  }
}

/** Both directions of a confirmed exchange. */
export class Channel {
  constructor(send, receive) {
    this.sendKey = send;
    this.receiveKey = receive;
    /** The number of the next frame this side sends. */
    this.nextOut = HANDSHAKE_FRAMES + 1;
    /** The number the next frame from the other side must have. */
    this.nextIn = HANDSHAKE_FRAMES + 1;
    /** The other side sent its end frame. */
    this.ended = false;
  }

  /**
   * Seals `data` (a string, bytes, or null for the end frame) as frame
   * number `n` (the caller numbers frames in the order it sends them).
   */
  async seal(data, n) {
    const body = data === null ? new Uint8Array(0) : typeof data === 'string' ? utf8(data) : new Uint8Array(data);
    const kind = data === null ? KIND.end : typeof data === 'string' ? KIND.text : KIND.binary;
    const ct = await subtle().encrypt(
      { name: 'AES-GCM', iv: nonce(n), additionalData: Uint8Array.of(SEALED), tagLength: 128 },
      this.sendKey,
      concat(Uint8Array.of(kind), body),
    );
    return concat(Uint8Array.of(SEALED), new Uint8Array(ct));
  }

  /** Takes the next number for a frame this side sends. */
  take() {
    const n = this.nextOut;
    this.nextOut += 1;
    return n;
  }

  /**
   * Opens the next frame from the other side: {text}, {bytes} or {end}.
   * Throws Tampered when it is not the next frame the other side sealed.
   */
  async open(frame) {
    const n = this.nextIn;
    const bytes = new Uint8Array(frame);
    if (this.ended) throw new Tampered(`frame ${n} from the other side came after its end of session`);
    if (bytes.length === 0 || bytes[0] !== SEALED) throw new Tampered(`frame ${n} from the other side is not a sealed frame`);
    let plain;
    try {
      plain = new Uint8Array(
        await subtle().decrypt(
          { name: 'AES-GCM', iv: nonce(n), additionalData: Uint8Array.of(SEALED), tagLength: 128 },
          this.receiveKey,
          bytes.subarray(1),
        ),
      );
    } catch {
      throw new Tampered(`frame ${n} from the other side does not open: altered, dropped, replayed or reordered on the way`);
    }
    this.nextIn += 1;
    const body = plain.subarray(1);
    switch (plain[0]) {
      case KIND.text:
        try {
          return { text: new TextDecoder('utf-8', { fatal: true }).decode(body) };
        } catch {
          throw new Tampered(`frame ${n}: text that is not UTF-8`);
        }
      case KIND.binary:
        return { bytes: body };
      case KIND.end:
        if (body.length) throw new Tampered(`frame ${n}: an end frame with a body`);
        this.ended = true;
        return { end: true };
      default:
        throw new Tampered(`frame ${n}: unknown kind ${plain[0]}`);
    }
  }
}

// ---- the client's encrypted session ------------------------------------

/** Longest the joiner waits for the host's next handshake message. */
export const HANDSHAKE_TIMEOUT = 30_000;
const NOT_E2E_MAC = 'The Mac does not use end-to-end encryption, so nothing was sent to it. Check the code on the Mac.';

/**
 * The encrypted side of a RelayClient (client.js) joined with a full code:
 * it takes every data frame the client receives (after the client counted
 * it, so resume is unchanged), runs the exchange, opens sealed frames in
 * order and seals what the page sends. Frames are sealed and opened one at
 * a time, in order, because WebCrypto is asynchronous and a frame's number
 * is its place in its direction.
 */
export class SecureLink {
  constructor(client, { relay, secret }) {
    this.client = client;
    this.code = { relay, secret };
    this.joiner = new Joiner(relay, secret);
    /** 'hello' | 'confirm' | 'open' */
    this.phase = 'hello';
    this.channel = null;
    this.inbox = Promise.resolve();
    this.sealing = Promise.resolve();
    /** What the page sent, waiting to be sealed (before the exchange, until it is confirmed). */
    this.outbox = [];
    this.timer = null;
    this.stopped = false;
    this.leavingNow = false;
  }

  get open() {
    return this.phase === 'open' && !this.stopped;
  }

  /**
   * The relay took the join: the host's hello is due. A guest of a room
   * (`guestId` from `joined`) runs its own exchange with the host, its id in
   * CPace's CI, so its keys are its own (PROTOCOL.md, "Rooms").
   */
  joined(guestId = null) {
    if (guestId !== null) this.joiner = new Joiner(this.code.relay, this.code.secret, guestId);
    this.arm();
  }

  arm() {
    this.disarm();
    this.timer = this.client.setTimeout(() => {
      this.timer = null;
      this.fail('NOT_ENCRYPTED', this.phase === 'hello' ? NOT_E2E_MAC : 'The Mac did not finish the key exchange.', 'timeout');
    }, HANDSHAKE_TIMEOUT);
  }

  disarm() {
    if (this.timer !== null) this.client.clearTimeout(this.timer);
    this.timer = null;
  }

  /** Takes a frame from the relay if it is data (returns whether it did). */
  takes(data) {
    let item;
    if (typeof data !== 'string') {
      item = { bytes: new Uint8Array(data) };
    } else {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return false;
      }
      if (msg?.type !== 'data') return false;
      item = { text: String(msg.payload) };
    }
    this.client.received += 1;
    this.client.save();
    this.inbox = this.inbox
      .then(() => this.step(item))
      .catch((e) => this.fail(e instanceof Tampered ? 'TAMPERED' : 'NOT_ENCRYPTED', String(e.message ?? e), null));
    return true;
  }

  async step(item) {
    if (this.stopped) return;
    if (this.phase === 'open') {
      if (item.text !== undefined) {
        this.fail('TAMPERED', 'A message in clear arrived in this encrypted session: someone on the way tampered with it.', null);
        return;
      }
      const plain = await this.channel.open(item.bytes);
      if (plain.text !== undefined) this.client.emit('data', { text: plain.text });
      else if (plain.bytes) this.client.emit('data', { bytes: plain.bytes });
      return;
    }
    if (item.bytes) {
      this.fail('NOT_ENCRYPTED', NOT_E2E_MAC, 'invalid');
      return;
    }
    const p = parsePayload(item.text);
    if (p.kind === 'other') {
      this.fail('NOT_ENCRYPTED', NOT_E2E_MAC, 'invalid');
      return;
    }
    if (p.kind === 'invalid') {
      this.fail('TAMPERED', `An invalid key exchange message (${p.why}).`, 'invalid');
      return;
    }
    if (p.step === 'abort') {
      this.fail(p.reason === 'mismatch' ? 'CODE_MISMATCH' : 'NOT_ENCRYPTED', abortSentence(p.reason), null);
      return;
    }
    if (this.phase === 'hello' && p.step === 'hostHello') {
      const [hello, confirm] = await this.joiner.answer(p.sid, p.share);
      this.client.sendPlain(hello);
      this.client.sendPlain(confirm);
      this.phase = 'confirm';
      this.arm();
      return;
    }
    if (this.phase === 'confirm' && p.step === 'confirm') {
      const channel = await this.joiner.confirm(p.tag);
      if (!channel) {
        this.fail('CODE_MISMATCH', sentence(MISMATCH), 'mismatch');
        return;
      }
      this.channel = channel;
      this.phase = 'open';
      this.disarm();
      this.client.emit('encrypted', {});
      this.pump();
      return;
    }
    this.fail('TAMPERED', 'A key exchange message out of its place.', 'invalid');
  }

  /** Queues `data` (a string or bytes) to be sealed and sent, in order. */
  send(data) {
    if (this.outbox.length >= this.client.options.queueFrames) {
      throw new Error('QUEUE_FULL');
    }
    this.outbox.push(typeof data === 'string' ? data : new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)));
    if (this.open) this.pump();
  }

  pump() {
    this.sealing = this.sealing
      .then(async () => {
        while (this.open && this.outbox.length > 0) {
          const d = this.outbox.shift();
          const sealed = await this.channel.seal(d, this.channel.take());
          this.client.sendPlain(sealed);
        }
      })
      .catch((e) => this.fail('TAMPERED', `A message could not be sent sealed: ${e.message ?? e}`, null));
  }

  /**
   * The page leaves: the end frame goes after everything sealed before it,
   * then the client leaves (returns whether it took the leaving over).
   */
  leaving() {
    if (!this.open || this.leavingNow) return false;
    this.leavingNow = true;
    this.sealing = this.sealing
      .then(async () => {
        const end = await this.channel.seal(null, this.channel.take());
        this.client.sendPlain(end);
      })
      .catch(() => {})
      .finally(() => this.client.leave());
    return true;
  }

  /** Whether the Mac went without its end frame (its last messages may have been cut). */
  unfinished() {
    return this.phase === 'open' && this.channel !== null && !this.channel.ended;
  }

  /** Ends the session from here: tells the Mac (`abort`), leaves, and says why. */
  fail(code, message, abort) {
    if (this.stopped) return;
    this.stopped = true;
    this.disarm();
    const c = this.client;
    if (c.ended) return;
    try {
      if (abort) c.sendPlain(JSON.stringify({ e2e: VERSION, step: 'abort', reason: abort }));
      if (c.ws && c.ws.readyState === 1) c.raw({ type: 'leave' });
    } catch {
      // The connection is gone: ending is all that is left.
    }
    c.end(code, message);
  }

  stop() {
    this.stopped = true;
    this.disarm();
  }
}

function sentence(s) {
  return `${s[0].toUpperCase()}${s.slice(1)}.`;
}

function abortSentence(reason) {
  switch (reason) {
    case 'mismatch':
      return sentence(MISMATCH);
    case 'no_secret':
      return 'The Mac expected the whole code, with the part after the dash.';
    case 'timeout':
      return 'The Mac gave up waiting for the key exchange.';
    default:
      return 'The Mac could not read the key exchange.';
  }
}
