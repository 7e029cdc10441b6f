// The bench's Node reference: a minimal pairing relay on the `ws` library,
// what a relay written in Node costs. Like ws-forwarder it speaks only what
// relay-load needs (`register` on /mac -> `registered` with a code; `join` on
// /browser -> `joined`, and `peer_joined` to the mac), then copies every frame
// to the peer verbatim, text as text and binary as binary. No resume, no acks,
// no heartbeats. It pauses reading a side while the other side has more than
// 1 MiB unwritten, as the relay and ws-forwarder also hold a fast sender back.
// GET /metrics gives process_resident_memory_bytes, read the same way as the
// relay's, for relay-load's idle scenario.
//
// Usage: node node-relay.js [HOST:PORT] (default 127.0.0.1:9000)
import http from 'node:http';
import { WebSocketServer } from 'ws';

const [host, port] = (process.argv[2] ?? '127.0.0.1:9000').split(':');
const HIGH = 1 << 20;
const waiting = new Map(); // code -> the mac's socket
let next = 0;

const server = http.createServer((req, res) => {
  if (req.url === '/metrics') {
    res.end(`process_resident_memory_bytes ${process.memoryUsage.rss()}\n`);
  } else {
    res.writeHead(404).end();
  }
});
// The relay's own frame ceiling; no compression, as the relay never offers it.
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 1 << 20, clientTracking: false });

wss.on('connection', (ws, req) => {
  ws.on('error', () => ws.terminate());
  ws.once('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return ws.close(1008, 'not JSON');
    }
    if (req.url === '/mac' && msg.type === 'register') {
      const code = String(++next).padStart(6, '0');
      waiting.set(code, ws);
      ws.on('close', () => waiting.get(code) === ws && waiting.delete(code));
      ws.send(JSON.stringify({ type: 'registered', code, expiresAt: 0, sessionId: `s${next}`, resumeToken: 't' }));
    } else if (req.url === '/browser' && msg.type === 'join') {
      const code = String(msg.code ?? '').toUpperCase();
      const mac = waiting.get(code);
      if (!mac) {
        ws.send(JSON.stringify({ type: 'error', code: 'INVALID_CODE', message: 'no such code' }));
        return ws.close(1008, 'no such code');
      }
      waiting.delete(code);
      ws.send(JSON.stringify({ type: 'joined', sessionId: 's', resumeToken: 't' }));
      mac.send(JSON.stringify({ type: 'peer_joined' }));
      copy(mac, ws);
      copy(ws, mac);
    } else {
      ws.close(1008, 'register on /mac or join on /browser');
    }
  });
});

/** Sends every frame `from` receives to `to`, holding `from` back while `to` lags. */
function copy(from, to) {
  const drained = () => {
    if (from.isPaused && to.bufferedAmount < HIGH / 2) from.resume();
  };
  from.on('message', (data, isBinary) => {
    if (to.readyState !== to.OPEN) return;
    to.send(data, { binary: isBinary }, drained);
    if (to.bufferedAmount > HIGH) from.pause();
  });
  from.on('close', () => to.close());
}

server.listen(Number(port), host, () => console.error(`node-relay listening on ${host}:${port}`));
