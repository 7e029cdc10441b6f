#!/usr/bin/env python3
"""How many connections and how much memory a relay node needs: the numbers of
docs/operations.md ("Sizing") come from this script.

It starts a Redis and two relay nodes (release build) on free 127.0.0.1
ports, opens PAIRS idle pairs in steps (each mac on node A; each browser on
node A for local pairs, on node B for --cross), sends one frame each way per
pair, and reads node A's resident memory from its /metrics after each step.
Then --busy pairs send frames at --rate per second each way for --seconds,
and it reads node A's CPU time (from /proc) and memory again. Everything it
started is stopped at the end.

    make build ops-tools
    target/ops-venv/bin/python deploy/check/sizing.py --pairs 10000 --steps 4

Each connection takes two file descriptors on its node (the socket and a
duplicate kept to cut a stuck client) and one in this script, so the open-files
limit bounds the run: it raises its soft limit (inherited by the nodes) to the
hard limit. It needs `redis-server` and the `websockets` package (in the ops
venv).
"""

import argparse
import asyncio
import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import websockets

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(admin):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def redis_memory(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def cpu_seconds(pid):
    """CPU time of a process from /proc (the process_cpu_seconds_total metric
    counts whole seconds only)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(admin, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(f"http://{admin}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready in time")


async def open_pair(mac_url, browser_url):
    mac = await websockets.connect(mac_url, ping_interval=None, max_size=None, open_timeout=30)
    await mac.send('{"type":"register"}')
    code = json.loads(await mac.recv())["code"]
    browser = await websockets.connect(browser_url, ping_interval=None, max_size=None, open_timeout=30)
    await browser.send(json.dumps({"type": "join", "code": code}))
    joined = json.loads(await browser.recv())
    assert joined["type"] == "joined", joined
    assert json.loads(await mac.recv())["type"] == "peer_joined"
    await mac.send(b"\0" * 64)
    assert await browser.recv() == b"\0" * 64
    await browser.send('{"type":"data","payload":"hello"}')
    await mac.recv()
    return mac, browser


async def pump(pair, rate, seconds, size):
    """Frames both ways at `rate` a second per direction; each is read."""
    mac, browser = pair
    frame = b"\1" * size
    n = int(rate * seconds)

    async def send(ws):
        for _ in range(n):
            await ws.send(frame)
            await asyncio.sleep(1 / rate)

    async def read(ws):
        for _ in range(n):
            await ws.recv()

    await asyncio.gather(send(mac), send(browser), read(mac), read(browser))


async def run(args, a_url, b_url, a_admin, a_pid, redis_port):
    pairs = []
    base = metrics(a_admin)
    base_redis = redis_memory(redis_port)
    rows = [("pairs", "connections", "open fds", "RSS MiB", "RSS KiB/conn", "Redis KiB/session")]
    rss0 = base["process_resident_memory_bytes"]
    rows.append((0, 0, int(base["process_open_fds"]), f"{rss0 / 2**20:.1f}", "", ""))
    for step in range(1, args.steps + 1):
        target = args.pairs * step // args.steps
        while len(pairs) < target:
            batch = min(200, target - len(pairs))
            pairs += await asyncio.gather(*[
                open_pair(f"{a_url}/mac", f"{b_url if args.cross else a_url}/browser") for _ in range(batch)])
            print(f"  {len(pairs)} pairs open", end="\r", flush=True)
        await asyncio.sleep(3)
        m = metrics(a_admin)
        conns = m['relay_connections_open{role="mac"}'] + m['relay_connections_open{role="browser"}']
        rss = m["process_resident_memory_bytes"]
        redis = (redis_memory(redis_port) - base_redis) / len(pairs) / 1024
        rows.append((len(pairs), int(conns), int(m["process_open_fds"]), f"{rss / 2**20:.1f}",
                     f"{(rss - rss0) / conns / 1024:.1f}", f"{redis:.2f}"))
    for r in rows:
        print("  ".join(f"{c!s:>12}" for c in r))

    busy = pairs[: args.busy]
    before = metrics(a_admin)
    cpu0 = cpu_seconds(a_pid)
    t0 = time.time()
    await asyncio.gather(*[pump(p, args.rate, args.seconds, args.size) for p in busy])
    elapsed = time.time() - t0
    after = metrics(a_admin)
    frames = sum(after[k] - before.get(k, 0) for k in after if k.startswith("relay_frames_relayed_total"))
    cpu = cpu_seconds(a_pid) - cpu0
    print(f"load: {len(busy)} pairs, {args.rate} frames/s each way of {args.size} B, {elapsed:.1f} s: "
          f"node A relayed {frames / elapsed:.0f} frames/s with {cpu / elapsed:.2f} CPU cores "
          f"({cpu / max(frames, 1) * 1e6:.1f} us of CPU a frame); RSS "
          f"{after['process_resident_memory_bytes'] / 2**20:.1f} MiB, buffered "
          f"{after['relay_buffered_bytes'] / 2**20:.1f} MiB")
    # The connections end when the nodes are killed (closing thousands of
    # them politely would take minutes).


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", default=str(ROOT / "target" / "release" / "relay"))
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cross", action="store_true", help="browsers on node B (frames through Redis)")
    ap.add_argument("--busy", type=int, default=500, help="pairs that send during the load phase")
    ap.add_argument("--rate", type=float, default=10, help="frames a second per direction per busy pair")
    ap.add_argument("--size", type=int, default=256, help="bytes a frame")
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    node_fds = 2 * args.pairs * (1 if args.cross else 2)
    if max(node_fds, 2 * args.pairs) + 512 > hard:
        raise SystemExit(f"{args.pairs} pairs need about {max(node_fds, 2 * args.pairs) + 512} open files "
                         f"a process; the hard limit here is {hard}")
    tmp = tempfile.mkdtemp(prefix="relay-sizing-")
    procs = []
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")]))
        time.sleep(0.5)
        nodes = []
        for name in ["node-a", "node-b"]:
            port, admin = free_port(), free_port()
            env = dict(os.environ, RELAY_LISTEN=f"127.0.0.1:{port}", RELAY_ADMIN_LISTEN=f"127.0.0.1:{admin}",
                       RELAY_NODE_ID=name, RELAY_REDIS_URL=f"redis://127.0.0.1:{redis_port}",
                       # Every connection comes from 127.0.0.1: the per-address
                       # limits would refuse all but the first few hundred.
                       RELAY_JOIN_RATE="0", RELAY_MAX_CONNECTIONS_PER_ADDR="0",
                       RELAY_FAILED_JOIN_LIMIT="0", RELAY_LOG="warn")
            p = subprocess.Popen([args.relay], env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(tmp, f"{name}.log"), "w"))
            procs.append(p)
            wait_ready(f"127.0.0.1:{admin}", p, name)
            nodes.append((f"ws://127.0.0.1:{port}", f"127.0.0.1:{admin}"))
        (a_url, a_admin), (b_url, _) = nodes
        a_pid = procs[1].pid
        print(f"relay {args.relay}, {'cross-node' if args.cross else 'local'} pairs; node A = macs' node")
        asyncio.run(run(args, a_url, b_url, a_admin, a_pid, redis_port))
    except BaseException:
        for name in ["node-a", "node-b"]:
            log = pathlib.Path(tmp, f"{name}.log")
            if log.exists():
                print(f"---- {name} log (last lines) ----")
                print("\n".join(log.read_text().splitlines()[-20:]))
        raise
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
