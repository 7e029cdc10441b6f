#!/usr/bin/env bash
# A local relay cluster for trying things by hand (`make cluster`): one Redis,
# three relay nodes sharing it, and haproxy in front of them, all on 127.0.0.1.
# Clients use one URL: ws://127.0.0.1:8080/mac and ws://127.0.0.1:8080/browser.
# Ctrl-C stops everything it started; the relays get SIGTERM first, so they
# drain their clients as in production.
#
# Settings: RELAY_CLUSTER_REDIS_PORT (default 6390), RELAY_BIN (default
# target/release/relay), and any RELAY_* setting of the relay itself (README),
# which every node inherits, e.g. `RELAY_CODE_TTL=30s make cluster`.
set -euo pipefail

cd "$(dirname "$0")/../.."
# haproxy is in /usr/sbin, which a normal user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

RELAY_BIN=${RELAY_BIN:-target/release/relay}
REDIS_PORT=${RELAY_CLUSTER_REDIS_PORT:-6390}
LB_PORT=8080
NODE_PORTS=(8081 8082 8083)
HAPROXY_CFG=deploy/local/haproxy.cfg
LOGS=target/cluster

relay_pids=()
redis_pid=""
haproxy_pid=""
stopping=""

say() { echo "cluster: $*"; }
fail() {
    echo "cluster: $*" >&2
    exit 1
}

# Whether something accepts connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to 10 s for `check` to succeed while process $pid lives; on
# failure shows the end of $log and exits (the trap stops the rest).
wait_up() {
    local what=$1 pid=$2 log=$3
    shift 3
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            fail "$what exited at start (log: $log)"
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2 || true
    fail "$what did not come up in 10 s (log: $log)"
}

# A second Ctrl-C while draining stops everything at once.
stop_now() {
    say "stopping at once"
    kill -KILL "${relay_pids[@]}" $redis_pid $haproxy_pid 2>/dev/null || true
}

stop_all() {
    [[ -n $stopping ]] && return
    stopping=1
    trap stop_now INT TERM
    if ((${#relay_pids[@]})); then
        say "draining the relays (SIGTERM; up to RELAY_DRAIN_TIMEOUT, Ctrl-C again to stop at once)"
        kill -TERM "${relay_pids[@]}" 2>/dev/null || true
        for pid in "${relay_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    fi
    for pid in $haproxy_pid $redis_pid; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    say "stopped; logs are in $LOGS/"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

[[ -x $RELAY_BIN ]] || fail "$RELAY_BIN not found: run \`make cluster\` (it builds it first)"
for cmd in redis-server redis-cli haproxy setsid; do
    command -v "$cmd" >/dev/null || fail "$cmd not found: run \`make deps\`"
done
for port in "$REDIS_PORT" "$LB_PORT" "${NODE_PORTS[@]}"; do
    port_open "$port" && fail "port $port is in use; stop what uses it first"
done
haproxy -c -q -f "$HAPROXY_CFG" || fail "$HAPROXY_CFG is not a valid haproxy config"
mkdir -p "$LOGS"

# Every process gets its own session (setsid), so a Ctrl-C in this terminal
# reaches only this script, which then stops them in order.
redis_ping() { [[ $(redis-cli -p "$REDIS_PORT" ping) == PONG ]]; }
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$LOGS" --logfile "$PWD/$LOGS/redis.log" &
redis_pid=$!
wait_up "redis-server" "$redis_pid" "$LOGS/redis.log" redis_ping

for i in "${!NODE_PORTS[@]}"; do
    n=$((i + 1))
    port=${NODE_PORTS[$i]}
    RELAY_LISTEN=127.0.0.1:$port RELAY_NODE_ID=node-$n \
        RELAY_REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
        setsid "$RELAY_BIN" >"$LOGS/node-$n.log" 2>&1 &
    relay_pids+=($!)
done
for i in "${!NODE_PORTS[@]}"; do
    n=$((i + 1))
    wait_up "relay node-$n" "${relay_pids[$i]}" "$LOGS/node-$n.log" port_open "${NODE_PORTS[$i]}"
done

setsid haproxy -db -f "$HAPROXY_CFG" >"$LOGS/haproxy.log" 2>&1 &
haproxy_pid=$!
wait_up "haproxy" "$haproxy_pid" "$LOGS/haproxy.log" port_open "$LB_PORT"

cat <<EOF

relay cluster is up. Clients connect to the load balancer:

    ws://127.0.0.1:$LB_PORT/mac
    ws://127.0.0.1:$LB_PORT/browser

nodes:  http://127.0.0.1:${NODE_PORTS[0]} (node-1, pid ${relay_pids[0]}), :${NODE_PORTS[1]} (node-2, pid ${relay_pids[1]}), :${NODE_PORTS[2]} (node-3, pid ${relay_pids[2]}); /readyz, /metrics
redis:  redis://127.0.0.1:$REDIS_PORT
logs:   $LOGS/node-1.log .. node-3.log, redis.log, haproxy.log

Ctrl-C stops everything (the relays drain first).
EOF

# Runs until Ctrl-C, or until one of the processes dies on its own.
set +e
wait -n "${relay_pids[@]}" "$redis_pid" "$haproxy_pid"
status=$?
set -e
say "a process exited on its own (status $status); stopping the rest"
exit 1
