#!/usr/bin/env bash
# `make bench`: builds release binaries, measures the relay and its three
# references (ws-forwarder: WebSocket framing alone; node-relay.js: a minimal
# relay on Node's `ws`; redis-benchmark PUBLISH: the pub/sub ceiling) on
# 127.0.0.1 in one run, and writes a report with
# ratios and plots to target/bench/. Every process it starts is stopped on
# exit; every run is bounded (relay-load --timeout).
#
# With a baseline (BENCH_BASELINE=<git rev>, or BENCH_BASELINE_BIN=<path> to
# an already-built relay), the same run also measures that older relay beside
# the new one, so a change to the core is judged by new/baseline ratios taken
# minutes apart on the same machine, not against numbers from another day.
set -euo pipefail
# A relative BENCH_BASELINE_BIN means from where the script was started.
BASE_BIN=${BENCH_BASELINE_BIN:+$(realpath -m -- "$BENCH_BASELINE_BIN")}  # an already-built relay, or
BASE_REV=${BENCH_BASELINE:-}      # a git rev whose relay to build and measure beside this one
cd "$(dirname "$0")/../.."
OUT=${BENCH_OUT:-target/bench}
QUICK=${BENCH_QUICK:-}            # set to 1 for a smoke run (seconds, not minutes)
if [ -n "$BASE_REV" ] && [ -n "$BASE_BIN" ]; then
  echo "set BENCH_BASELINE or BENCH_BASELINE_BIN, not both" >&2; exit 1
fi
rm -rf "$OUT" && mkdir -p "$OUT/json" "$OUT/logs"

. tests/bench/lib.sh
raise_limits

say "building release binaries"
cargo build --release --locked -p relay --bins
# Where cargo put them: target/ unless CARGO_TARGET_DIR says otherwise, and
# then target/release would hold stale binaries, or none.
BIN=${CARGO_TARGET_DIR:-target}/release

say "installing the Node reference's ws (tests/bench/package-lock.json)"
(cd tests/bench && npm ci --no-audit --no-fund --prefer-offline)

# The baseline's source comes from `git archive`, not a worktree: nothing is
# registered in the shared repository, so a killed run leaves nothing to
# prune, and the main checkout is never touched. Its builds share one target
# directory, so only the workspace's own crates rebuild for another commit;
# each commit's binary is kept, so the next run with it starts at once.
build_baseline() { # rev: sets BASE_BIN to that commit's release relay
  local commit dir=$PWD/target/bench-baseline
  commit=$(git rev-parse --verify --quiet "$1^{commit}") \
    || { echo "BENCH_BASELINE=$1 is not a commit in this repository" >&2; exit 1; }
  BASE_BIN=$dir/bin/$commit/relay
  if [ -x "$BASE_BIN" ]; then say "baseline $1: reusing $BASE_BIN"; return; fi
  say "baseline $1: building $commit in $dir"
  rm -rf "$dir/src" && mkdir -p "$dir/src" "$dir/bin/$commit"
  # -m: stamp the files now; with the commit's own (older) times, cargo could
  # take the previous commit's build as fresh and hand back the wrong binary.
  git archive "$commit" | tar -x -m -C "$dir/src"
  (cd "$dir/src" && CARGO_TARGET_DIR=$dir/target cargo build --release --locked -p relay --bin relay)
  # Copied under another name, then renamed, so a run killed mid-copy never
  # leaves a binary the next run would trust.
  cp "$dir/target/release/relay" "$BASE_BIN.part" && mv "$BASE_BIN.part" "$BASE_BIN"
  rm -rf "$dir/src"
}
BASE_LABEL=""
if [ -n "$BASE_REV" ]; then
  build_baseline "$BASE_REV"
  short=$(git rev-parse --short "$BASE_REV^{commit}")
  BASE_LABEL=$BASE_REV
  if [ "$BASE_REV" != "$short" ]; then BASE_LABEL="$BASE_REV ($short)"; fi
elif [ -n "$BASE_BIN" ]; then
  [ -x "$BASE_BIN" ] || { echo "BENCH_BASELINE_BIN=$BASE_BIN is not an executable" >&2; exit 1; }
  BASE_LABEL=$BASE_BIN
fi
if [ -n "$BASE_BIN" ]; then
  # report.py adds its "Against the baseline" section when this file exists,
  # and says when the run was a smoke run, whose ratios are not to be read.
  python3 -c 'import json, sys; json.dump({"label": sys.argv[1], "bin": sys.argv[2], "quick": sys.argv[3] != ""}, open(sys.argv[4], "w"))' \
    "$BASE_LABEL" "$BASE_BIN" "$QUICK" "$OUT/baseline.json"
fi

wait_port() { # host:port, name
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not start on $1; see $OUT/logs" >&2; exit 1
}

run_relay() { # binary, name, port, extra env...
  local bin=$1 name=$2 port=$3; shift 3
  env RELAY_LISTEN="127.0.0.1:$port" RELAY_JOIN_RATE=0 RELAY_MAX_CONNECTIONS_PER_ADDR=0 RELAY_LOG=warn RELAY_NODE_ID="$name" "$@" \
    "$bin" >"$OUT/logs/$name.log" 2>&1 &
  PIDS+=($!); eval "PID_${name//-/_}=$!"
  wait_port "127.0.0.1:$port" "$name"
  wait_ready "$port" "$name"
}
start_relay() { run_relay "$BIN/relay" "$@"; }   # name, port, extra env...
start_baseline() { run_relay "$BASE_BIN" "$@"; } # the same, the baseline's binary

start_redis() { # name, port
  redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no >"$OUT/logs/$1.log" 2>&1 &
  PIDS+=($!); eval "PID_${1//-/_}=$!"
  wait_port "127.0.0.1:$2" "$1"
}

REDIS_PORT=$(free_port); start_redis redis "$REDIS_PORT"

FWD_PORT=$(free_port); "$BIN/ws-forwarder" "127.0.0.1:$FWD_PORT" 2>"$OUT/logs/forwarder.log" &
PIDS+=($!); wait_port "127.0.0.1:$FWD_PORT" ws-forwarder
start_node() { # the Node reference on a fresh port, in a fresh process
  NODE_PORT=$(free_port)
  node tests/bench/node-relay.js "127.0.0.1:$NODE_PORT" 2>"$OUT/logs/node-relay.log" &
  PIDS+=($!); PID_node=$!
  wait_port "127.0.0.1:$NODE_PORT" node-relay
  NODE=ws://127.0.0.1:$NODE_PORT
}
start_node
ONE_PORT=$(free_port); start_relay single "$ONE_PORT"
A_PORT=$(free_port); start_relay node-a "$A_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
B_PORT=$(free_port); start_relay node-b "$B_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
FWD=ws://127.0.0.1:$FWD_PORT ONE=ws://127.0.0.1:$ONE_PORT
A=ws://127.0.0.1:$A_PORT B=ws://127.0.0.1:$B_PORT
if [ -n "$BASE_BIN" ]; then
  # Its own redis-server: two clusters on one Redis would share code and
  # session keys, and each would see the other's nodes.
  BASE_REDIS_PORT=$(free_port); start_redis base-redis "$BASE_REDIS_PORT"
  BASE_ONE_PORT=$(free_port); start_baseline base-single "$BASE_ONE_PORT"
  BASE_A_PORT=$(free_port); start_baseline base-a "$BASE_A_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$BASE_REDIS_PORT"
  BASE_B_PORT=$(free_port); start_baseline base-b "$BASE_B_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$BASE_REDIS_PORT"
  BASE_ONE=ws://127.0.0.1:$BASE_ONE_PORT
  BASE_A=ws://127.0.0.1:$BASE_A_PORT BASE_B=ws://127.0.0.1:$BASE_B_PORT
fi

if [ -n "$QUICK" ]; then DUR=1s LAT=2s SETUP=200 IDLE=200 STORM=20 N=20000 ROUNDS=1; \
else DUR=5s LAT=10s SETUP=3000 IDLE=8000 STORM=300 N=200000 ROUNDS=3; fi
# A relay from before the edge rework took two descriptors a connection and
# cannot hold 16,000 under the 20,000 file limit: the baseline holds fewer.
BASE_IDLE=$(( IDLE < 4000 ? IDLE : 4000 ))

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

# The load tool shares the cores, so the rate it reaches is its own limit as
# much as the relay's; the relay's CPU per set-up gives what a node could do.
setup_with_cpu() { # json-name, url, relay pid, label
  local cpu0 cpu1
  cpu0=$(cpu_seconds "$3")
  load "$1" --scenario setup --url "$2" --pairs "$SETUP" --label "$4"
  cpu1=$(cpu_seconds "$3")
  python3 -c "import json,sys; json.dump({'scenario':'setup_cpu','label':'$4','results':{'pairs':$SETUP,'relay_cpu_seconds':$cpu1-$cpu0}}, open('$OUT/json/$1-cpu.json','w'))"
}

say "pair set-up rate"
load setup-forwarder --scenario setup --url "$FWD" --pairs "$SETUP" --label forwarder
load setup-node --scenario setup --url "$NODE" --pairs "$SETUP" --label "node ws"
setup_with_cpu setup-relay "$ONE" "$PID_single" relay
if [ -n "$BASE_BIN" ]; then setup_with_cpu setup-base "$BASE_ONE" "$PID_base_single" baseline; fi

say "throughput: 64 B, 1 KiB, 64 KiB; forwarder, node ws, relay same-node, relay cross-node; rooms of 16 guests on one node at 64 B and 1 KiB; $ROUNDS interleaved rounds"
# Rounds interleave the targets so a noisy minute hits all of them; the
# report takes each target's median. The baseline runs right beside the new
# binary's run of the same target, first in every other round, so a drift
# within a round favours neither.
tp() { load "tp-$size-$1-r$round" --scenario throughput --size "$size" --duration "$DUR" --pairs 16 "${@:2}"; }
tp_relay() { tp relay --url "$ONE" --label "relay one node"; }
tp_base() { tp base --url "$BASE_ONE" --label "baseline one node"; }
tp_cross() { tp cross --url "$A" --url "$B" --label "relay cluster, cross node"; }
tp_base_cross() { tp base-cross --url "$BASE_A" --url "$BASE_B" --label "baseline cluster, cross node"; }
# Rooms (issue 13) on the same one-node relay, right after its pairing run of
# the same size, which is the "one guest" they are compared with: as many
# rooms as throughput has pairs, each a host and 16 guests. fanout: each host
# to all its guests, frames counted at every guest; fanin: every guest to its
# host. Either fails the run if a frame is lost, repeated or out of order.
ROOM_SIZES=" 64 1KiB "
rooms_tp() {
  case "$ROOM_SIZES" in *" $size "*) ;; *) return 0 ;; esac
  load "tp-$size-fanout-r$round" --scenario fanout --size "$size" --duration "$DUR" --rooms 16 --guests 16 \
    --url "$ONE" --label "relay one node, room of 16"
  load "tp-$size-fanin-r$round" --scenario fanin --size "$size" --duration "$DUR" --rooms 16 --guests 16 \
    --url "$ONE" --label "relay one node, room of 16"
}
beside_baseline() { # new run, baseline run
  if [ -z "$BASE_BIN" ]; then "$1"
  elif (( round % 2 )); then "$1"; "$2"
  else "$2"; "$1"; fi
}
if [ -n "$BASE_BIN" ]; then say "with the baseline: its one node and its cross node beside the new ones"; fi
for round in $(seq 1 "$ROUNDS"); do
  for size in 64 1KiB 64KiB; do
    tp forwarder --url "$FWD" --label forwarder
    tp node --url "$NODE" --label "node ws"
    beside_baseline tp_relay tp_base
    rooms_tp
    tp same --url "$A" --url "$B" --cross-share 0 --label "relay cluster, same node"
    beside_baseline tp_cross tp_base_cross
  done
done

# Issue 13's cross-node fan-out: one host (node A) and 16 guests spread over
# three nodes (A, B and a third, C), frames delivered a second against one
# guest across nodes in the same run (a pairing, A to B), and Redis PUBLISH
# calls per broadcast frame (INFO commandstats before and after the run,
# divided by the host's frames). A PUBLISH carries a batch of envelopes
# (bus/publish.rs), and the publisher merges one host frame queued for
# several guests of a node into one RoomFrame (bus/publish/tests.rs), so
# what crosses Redis per broadcast frame is at most one envelope per node
# holding guests; the ratio below is calls, which batching keeps under that.
publishes() { redis-cli -p "$REDIS_PORT" INFO commandstats | awk -F'[=,:]' '/^cmdstat_publish:/ { print $3 }'; }
fanout_cross_node() {
  say "fan-out across nodes: one host to 16 guests over three nodes, against one guest across nodes"
  C_PORT=$(free_port); start_relay node-c "$C_PORT" RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  C=ws://127.0.0.1:$C_PORT
  local before after
  for size in 64 1KiB; do
    load "tp-$size-onecross-r1" --scenario throughput --size "$size" --duration "$DUR" --pairs 1 \
      --url "$A" --url "$B" --label "relay cluster, one pair across nodes"
    before=$(publishes)
    load "tp-$size-fanout-cross-r1" --scenario fanout --size "$size" --duration "$DUR" --rooms 1 --guests 16 \
      --url "$A" --url "$B" --url "$C" --label "relay cluster, room of 16 over three nodes"
    after=$(publishes)
    python3 - "$OUT/json/tp-$size-fanout-cross-r1.json" "$OUT/json/fanout-cross-$size-publish.json" \
      "${before:-0}" "${after:-0}" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["results"]
calls = int(sys.argv[4]) - int(sys.argv[3])
frames = run.get("host_frames") or 0
json.dump({"scenario": "fanout_publishes", "label": "redis PUBLISH calls per broadcast frame",
           "results": {"publishes": calls, "host_frames": frames,
                       "publishes_per_host_frame": (calls / frames) if frames else None}},
          open(sys.argv[2], "w"))
PY
  done
  kill -9 "$PID_node_c" 2>/dev/null || true
}
fanout_cross_node

# Latency and memory are measured on a fresh node: sessions left in their
# grace period by the runs above, and a heap already grown by them, would
# skew both.
fresh_single() {
  kill -9 "$PID_single" 2>/dev/null || true
  ONE_PORT=$(free_port); start_relay single "$ONE_PORT"; ONE=ws://127.0.0.1:$ONE_PORT
}
fresh_base_single() {
  kill -9 "$PID_base_single" 2>/dev/null || true
  BASE_ONE_PORT=$(free_port); start_baseline base-single "$BASE_ONE_PORT"; BASE_ONE=ws://127.0.0.1:$BASE_ONE_PORT
}

say "latency at half of the relay's measured 1 KiB peak"
fresh_single
if [ -n "$BASE_BIN" ]; then fresh_base_single; fi
PEAK=$(python3 -c "
import glob, json, statistics
print(int(statistics.median(json.load(open(f))['results']['frames_per_second'] for f in glob.glob('$OUT/json/tp-1KiB-relay-r*.json'))))")
HALF=$((PEAK / 2))
# The baseline is offered the same rates, derived from the new binary's
# peak, so both are compared at the same load, not each at its own half.
lat() { load "$1" --scenario latency --size 1KiB --duration "$LAT" --pairs 16 "${@:2}"; }
lat lat-relay --url "$ONE" --rate "$HALF" --label relay
if [ -n "$BASE_BIN" ]; then lat lat-base --url "$BASE_ONE" --rate "$HALF" --label baseline; fi
lat lat-forwarder --url "$FWD" --rate "$HALF" --label forwarder
lat lat-cross --url "$A" --url "$B" --rate "$((HALF / 2))" --label "relay cross node (quarter peak)"
if [ -n "$BASE_BIN" ]; then
  lat lat-base-cross --url "$BASE_A" --url "$BASE_B" --rate "$((HALF / 2))" --label "baseline cross node (quarter peak)"
fi

say "memory per idle paired connection"
fresh_single
load idle-relay --scenario idle --url "$ONE" --pairs "$IDLE" --concurrency 128 --label relay
# The same measurement on a fresh Node reference: its /metrics gives its RSS.
kill -9 "$PID_node" 2>/dev/null || true
start_node
load idle-node --scenario idle --url "$NODE" --pairs "$IDLE" --concurrency 128 --label "node ws"
kill -9 "$PID_node" 2>/dev/null || true
if [ -n "$BASE_BIN" ]; then
  fresh_base_single
  load idle-base --scenario idle --url "$BASE_ONE" --pairs "$BASE_IDLE" --concurrency 128 --label baseline
  # The storm kills a node, so it has no baseline; the baseline's processes
  # stop first so the storm runs as it does without one.
  for p in "$PID_base_single" "$PID_base_a" "$PID_base_b" "$PID_base_redis"; do kill -9 "$p" 2>/dev/null || true; done
fi

say "reconnect storm: node A killed under its macs"
load storm --scenario storm --url "$A" --url "$B" --fallback "$B" --pairs "$STORM" --duration 9s \
  --kill "kill -9 $PID_node_a" --label "node A killed"

# Joins under attack (issue 16): a 3-node cluster of its own (own Redis, so
# no attack flag or failed-join count leaks into the runs above) with the
# default abuse limits; 50 guessing addresses (127.0.0.2-51) on every node
# as fast as RELAY_JOIN_RATE allows, and a person pairing once a second from
# 127.0.0.1 beside them.
say "guessing attack: 50 addresses on 3 nodes, a person pairing beside them"
# The join rate lets an address 10 guesses at once, then one every 6 s: the
# run is long enough for a few past that burst, which make the steady rate.
if [ -n "$QUICK" ]; then GUESS_FOR=13s; else GUESS_FOR=20s; fi
GUESS_REDIS_PORT=$(free_port); start_redis guess-redis "$GUESS_REDIS_PORT"
GUESS_URLS=()
for n in 1 2 3; do
  port=$(free_port)
  start_relay "guess-$n" "$port" RELAY_REDIS_URL="redis://127.0.0.1:$GUESS_REDIS_PORT" \
    RELAY_JOIN_RATE=10 RELAY_MAX_CONNECTIONS_PER_ADDR=256 RELAY_FAILED_JOIN_LIMIT=300
  GUESS_URLS+=(--url "ws://127.0.0.1:$port")
done
GUESSERS=$(python3 -c 'print(",".join(f"127.0.0.{i}" for i in range(2, 52)))')
load guess --scenario guess "${GUESS_URLS[@]}" --source "$GUESSERS" --duration "$GUESS_FOR" \
  --label "50 addresses, 3 nodes"

# The HTTP transport (issue 14) against WebSocket on one fresh node: one
# pair's throughput each way (the mac always on a WebSocket, the browser on a
# WebSocket, an HTTP stream or HTTP long polls), round trips one frame at a
# time, and memory per waiting HTTP client (a registered mac with a long poll
# or a stream open) beside an idle registered WebSocket (tests/bench/http-bench.mjs).
say "HTTP transport: streaming and long polling against WebSocket"
if [ -n "$QUICK" ]; then HTTP_ARGS=(2000 1024 200); else HTTP_ARGS=(20000 1024 2000); fi
http_bench() { # name, phase (empty: throughput and round trips): one fresh node, $OUT/http-<name>.json
  local name=$1 port; port=$(free_port); start_relay "http-$name" "$port"
  local pid_var="PID_http_${name//-/_}"
  PHASE=$2 timeout 5m node tests/bench/http-bench.mjs "127.0.0.1:$port" "${!pid_var}" "${HTTP_ARGS[@]}" \
    >"$OUT/http-$name.json"
}
http_bench load ""
http_bench idle-websocket idle-websocket
http_bench idle-http idle-http
http_bench idle-http-stream idle-http-stream
# The no-sticky hop: two nodes, every HTTP request after the open to the other.
HOP_REDIS_PORT=$(free_port); start_redis hop-redis "$HOP_REDIS_PORT"
HOP_A=$(free_port); start_relay hop-a "$HOP_A" RELAY_REDIS_URL="redis://127.0.0.1:$HOP_REDIS_PORT"
HOP_B=$(free_port); start_relay hop-b "$HOP_B" RELAY_REDIS_URL="redis://127.0.0.1:$HOP_REDIS_PORT"
timeout 5m node tests/bench/http-bench.mjs "127.0.0.1:$HOP_A" "$PID_hop_a" "${HTTP_ARGS[@]}" "127.0.0.1:$HOP_B" \
  >"$OUT/http-hop.json"

python3 tests/bench/report.py "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/http-load.json"))
hop = json.load(open(f"{out}/http-hop.json"))
idle_ws = json.load(open(f"{out}/http-idle-websocket.json"))
idle_http = json.load(open(f"{out}/http-idle-http.json"))
idle_stream = json.load(open(f"{out}/http-idle-http-stream.json"))
rows = ["", "## HTTP transport against WebSocket (one pair)", "",
        f"{r['frames']} frames of {r['size']} B; the mac on a WebSocket, the browser on each transport.",
        "\"hop\": two nodes, every HTTP request landing on the node that is not the connection's.", "",
        "| measure | WebSocket | HTTP stream | HTTP long poll | HTTP stream, hop | HTTP long poll, hop |",
        "| --- | --- | --- | --- | --- | --- |"]
d, t, hd, ht = r["down"], r["rtt"], hop["down"], hop["rtt"]
rows.append(f"| mac to browser, frames/s | {d['websocket']['frames_per_s']} | {d['stream']['frames_per_s']} | {d['poll']['frames_per_s']} | {hd['stream']['frames_per_s']} | {hd['poll']['frames_per_s']} |")
rows.append(f"| browser to mac (batches of 32), frames/s | {r['up']['websocket']['frames_per_s']} | {r['up']['http']['frames_per_s']} | | {hop['up']['http']['frames_per_s']} | |")
rows.append(f"| round trip one at a time, p50 / p99 ms | {t['websocket']['p50_ms']} / {t['websocket']['p99_ms']} | {t['stream']['p50_ms']} / {t['stream']['p99_ms']} | {t['poll']['p50_ms']} / {t['poll']['p99_ms']} | {ht['stream']['p50_ms']} / {ht['stream']['p99_ms']} | {ht['poll']['p50_ms']} / {ht['poll']['p99_ms']} |")
rows.append(f"| memory per waiting client ({idle_ws['clients']}), bytes | {idle_ws['bytes_each']} | {idle_stream['bytes_each']} | {idle_http['bytes_each']} | | |")
open(f"{out}/report.md", "a").write("\n".join(rows) + "\n")
PY
say "report: $OUT/report.md"
