#!/usr/bin/env bash
# `make bench`: builds release binaries, measures the relay and its two
# references (ws-forwarder: WebSocket framing alone; redis-benchmark PUBLISH:
# the pub/sub ceiling) on 127.0.0.1 in one run, and writes a report with
# ratios and plots to target/bench/. Every process it starts is stopped on
# exit; every run is bounded (relay-load --timeout).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${BENCH_OUT:-target/bench}
QUICK=${BENCH_QUICK:-}            # set to 1 for a smoke run (seconds, not minutes)
rm -rf "$OUT" && mkdir -p "$OUT/json" "$OUT/logs"

say() { printf '\n== %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Many connections need many descriptors: a relay connection takes two (the
# socket and the duplicate kept to cut a stuck peer), a client one.
ulimit -n "$(ulimit -Hn)" || true
for kv in net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
          "net.ipv4.ip_local_port_range=1024 65000" net.ipv4.tcp_tw_reuse=1; do
  sysctl -qw "$kv" 2>/dev/null || echo "could not set $kv (not root, or not in this namespace)" >&2
done

say "building release binaries"
cargo build --release --locked -p relay --bins
# Where cargo put them: target/ unless CARGO_TARGET_DIR says otherwise, and
# then target/release would hold stale binaries, or none.
BIN=${CARGO_TARGET_DIR:-target}/release

wait_port() { # host:port, name
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not start on $1; see $OUT/logs" >&2; exit 1
}

wait_ready() { # port, name: a cluster node answers /readyz 200 once it holds its lease
  python3 - "$1" "$2" <<'PY' || { echo "$2 never became ready; see $OUT/logs" >&2; exit 1; }
import sys, time, urllib.request
for _ in range(300):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(1)
PY
}

start_relay() { # name, port, extra env...
  local name=$1 port=$2; shift 2
  env RELAY_LISTEN="127.0.0.1:$port" RELAY_JOIN_RATE=0 RELAY_MAX_CONNECTIONS_PER_ADDR=0 RELAY_LOG=warn RELAY_NODE_ID="$name" "$@" \
    "$BIN/relay" >"$OUT/logs/$name.log" 2>&1 &
  PIDS+=($!); eval "PID_${name//-/_}=$!"
  wait_port "127.0.0.1:$port" "$name"
  wait_ready "$port" "$name"
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no >"$OUT/logs/redis.log" 2>&1 &
PIDS+=($!)
wait_port "127.0.0.1:$REDIS_PORT" redis

FWD_PORT=$(free_port); "$BIN/ws-forwarder" "127.0.0.1:$FWD_PORT" 2>"$OUT/logs/forwarder.log" &
PIDS+=($!); wait_port "127.0.0.1:$FWD_PORT" ws-forwarder
ONE_PORT=$(free_port); start_relay single "$ONE_PORT"
A_PORT=$(free_port); start_relay node-a "$A_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
B_PORT=$(free_port); start_relay node-b "$B_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
FWD=ws://127.0.0.1:$FWD_PORT ONE=ws://127.0.0.1:$ONE_PORT
A=ws://127.0.0.1:$A_PORT B=ws://127.0.0.1:$B_PORT

if [ -n "$QUICK" ]; then DUR=1s LAT=2s SETUP=200 IDLE=200 STORM=20 N=20000 ROUNDS=1; \
else DUR=5s LAT=10s SETUP=3000 IDLE=4000 STORM=300 N=200000 ROUNDS=3; fi

load() { # json-name, args...
  local name=$1; shift
  "$BIN/relay-load" --quiet --timeout 3m --json "$OUT/json/$name.json" "$@" | tee -a "$OUT/tables.txt"
}

say "redis-benchmark PUBLISH (plain, then pipelined -P 16)"
# `-t publish` is silently ignored: the command itself has to be given.
MSG=$(head -c 64 /dev/zero | tr '\0' x)
for p in 1 16; do
  redis-benchmark -p "$REDIS_PORT" -c 50 -n $((N * p / 4 + N)) -P "$p" --csv PUBLISH bench "$MSG" \
    | tail -n 1 | python3 -c '
import csv, json, sys
row = next(csv.reader(sys.stdin))
json.dump({"scenario": "redis_publish", "label": "P'"$p"'", "results": {"requests_per_second": float(row[1])}}, sys.stdout)
' >"$OUT/json/redis-P$p.json"
  cat "$OUT/json/redis-P$p.json" >&2; echo >&2
done

cpu_seconds() { # pid: user + system CPU seconds (/proc; the metric counts whole seconds)
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

say "pair set-up rate"
load setup-forwarder --scenario setup --url "$FWD" --pairs "$SETUP" --label forwarder
CPU0=$(cpu_seconds "$PID_single")
load setup-relay --scenario setup --url "$ONE" --pairs "$SETUP" --label relay
CPU1=$(cpu_seconds "$PID_single")
# The load tool shares the cores, so the rate it reaches is its own limit as
# much as the relay's; the relay's CPU per set-up gives what a node could do.
python3 -c "import json,sys; json.dump({'scenario':'setup_cpu','label':'relay','results':{'pairs':$SETUP,'relay_cpu_seconds':$CPU1-$CPU0}}, open('$OUT/json/setup-relay-cpu.json','w'))"

say "throughput: 64 B, 1 KiB, 64 KiB; forwarder, relay same-node, relay cross-node; $ROUNDS interleaved rounds"
# Rounds interleave the targets so a noisy minute hits all of them; the
# report takes each target's median.
for round in $(seq 1 "$ROUNDS"); do
  for size in 64 1KiB 64KiB; do
    tp() { load "tp-$size-$1-r$round" --scenario throughput --size "$size" --duration "$DUR" --pairs 16 "${@:2}"; }
    tp forwarder --url "$FWD" --label forwarder
    tp relay --url "$ONE" --label "relay one node"
    tp same --url "$A" --url "$B" --cross-share 0 --label "relay cluster, same node"
    tp cross --url "$A" --url "$B" --label "relay cluster, cross node"
  done
done

# Latency and memory are measured on a fresh node: sessions left in their
# grace period by the runs above, and a heap already grown by them, would
# skew both.
fresh_single() {
  kill -9 "$PID_single" 2>/dev/null || true
  ONE_PORT=$(free_port); start_relay single "$ONE_PORT"; ONE=ws://127.0.0.1:$ONE_PORT
}

say "latency at half of the relay's measured 1 KiB peak"
fresh_single
PEAK=$(python3 -c "
import glob, json, statistics
print(int(statistics.median(json.load(open(f))['results']['frames_per_second'] for f in glob.glob('$OUT/json/tp-1KiB-relay-r*.json'))))")
HALF=$((PEAK / 2))
load lat-relay --scenario latency --url "$ONE" --size 1KiB --rate "$HALF" --duration "$LAT" --pairs 16 --label relay
load lat-forwarder --scenario latency --url "$FWD" --size 1KiB --rate "$HALF" --duration "$LAT" --pairs 16 --label forwarder
load lat-cross --scenario latency --url "$A" --url "$B" --size 1KiB --rate "$((HALF / 2))" --duration "$LAT" --pairs 16 --label "relay cross node (quarter peak)"

say "memory per idle paired connection"
fresh_single
load idle-relay --scenario idle --url "$ONE" --pairs "$IDLE" --concurrency 128 --label relay

say "reconnect storm: node A killed under its macs"
load storm --scenario storm --url "$A" --url "$B" --fallback "$B" --pairs "$STORM" --duration 9s \
  --kill "kill -9 $PID_node_a" --label "node A killed"

python3 tests/bench/report.py "$OUT"
say "report: $OUT/report.md"
